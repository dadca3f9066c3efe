"""Is one model's set closer to the real set than another's? Paired tests for every pair of models.

For each (data set, resolution) and its real feature set, every two evaluated sets (the models and
the real-vs-real ``reference``) are compared by :func:`eval.significance.paired_bootstrap`
(Efron & Tibshirani 1993): the real set and both fake sets are resampled together, so the real
set's own noise cancels. One row per (pair, metric) with the difference, its interval and a
two-sided p-value; ``results/pairwise.csv`` holds them for every cell. Feature files must all come
from one extractor (:func:`eval.feature_cache.check_same_extractor`).
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from eval.feature_cache import IDENTITY_KEYS, check_same_extractor, is_oom_marker, load_real_stats
from eval.significance import METRICS, paired_bootstrap
from wdm.config import EvaluationSettings
from wdm.io import InputError, atomic_path

__all__ = ["COLUMNS", "ALPHA", "pairwise_cell", "pairwise_table", "write_pairwise"]

logger = logging.getLogger(__name__)

#: significance level of the ``significant`` column (two-sided).
ALPHA = 0.05

COLUMNS: tuple[str, ...] = (
    "dataset", "resolution", "model_a", "model_b", "metric", "a", "b", "difference", "ci_low",
    "ci_high", "p_value", "significant", "closer", "n_real", "n_a", "n_b", "n_bootstrap",
    "ci_level", "seed", "feature_extractor", "protocol",
)


def pairwise_cell(real: Mapping[str, Any], sets: Mapping[str, Mapping[str, Any]],
                  settings: EvaluationSettings, *, progress: bool = False) -> list[dict[str, Any]]:
    """Rows for every pair of ``sets`` (name -> loaded feature file) against ``real`` (a loaded file).

    Each file: ``{"features" (N, F) float64, "meta"}`` as :func:`eval.feature_cache.load_real_stats`
    returns. Pairs in sorted name order (a < b); per metric of :data:`METRICS`:
    ``settings.pairwise_bootstrap`` replicates, ``bootstrap_kid_subsets`` KID subsets of
    ``kid_subset_size``, level ``ci_level``, seed ``seed``. ``difference`` = metric(a) -
    metric(b): negative means a is closer to the real set; ``closer`` names the closer model when
    p < :data:`ALPHA`, else ``"tie"``.
    """
    if len(sets) < 2:
        raise InputError(f"pairwise: need at least 2 evaluated sets, got {sorted(sets)}")
    want = {k: real["meta"].get(k) for k in IDENTITY_KEYS}
    pairs = list(itertools.combinations(sorted(sets), 2))
    rows = []
    for a, b in tqdm(pairs, desc="pairwise", unit="pair", disable=not progress):
        for metric in METRICS:
            r = paired_bootstrap(real["features"], sets[a]["features"], sets[b]["features"],
                                 metric=metric, n_bootstrap=settings.pairwise_bootstrap,
                                 seed=settings.seed, level=settings.ci_level,
                                 kid_subsets=settings.bootstrap_kid_subsets,
                                 kid_subset_size=settings.kid_subset_size)
            significant = r["p_value"] < ALPHA
            rows.append({
                "model_a": a, "model_b": b, "metric": metric, "a": r["a"], "b": r["b"],
                "difference": r["difference"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                "p_value": r["p_value"], "significant": significant,
                "closer": (a if r["difference"] < 0 else b) if significant else "tie",
                "n_real": len(real["features"]), "n_a": len(sets[a]["features"]),
                "n_b": len(sets[b]["features"]), "n_bootstrap": r["n_bootstrap"],
                "ci_level": settings.ci_level, "seed": settings.seed,
                "feature_extractor": want["feature_extractor"], "protocol": want["protocol"]})
    return rows


def _cell_of(name: str, what: str) -> tuple[str, str]:
    parts = name.split("/")
    if len(parts) < 2 or not all(parts):
        raise InputError(f"{what} {name!r}: expected DATASET/RES")
    return parts[0], parts[1]


def pairwise_table(real_files: Mapping[str, str | os.PathLike],
                   set_files: Mapping[str, str | os.PathLike], settings: EvaluationSettings, *,
                   progress: bool = False) -> pd.DataFrame:
    """:data:`COLUMNS` for every cell: ``real_files`` maps "DATASET/RES" to its real feature file,
    ``set_files`` "DATASET/RES/MODEL" to each evaluated set's feature file."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for name, path in set_files.items():
        dataset, res = _cell_of(name, "--set")
        model = name.split("/", 2)[2] if name.count("/") >= 2 else ""
        if not model:
            raise InputError(f"--set {name!r}: expected DATASET/RES/MODEL")
        cells.setdefault((dataset, res), {})[model] = path
    rows = []
    for (dataset, res), models in sorted(cells.items()):
        key = f"{dataset}/{res}"
        if key not in real_files:
            raise InputError(f"--set {key}/...: no --real {key}=FILE given")
        real = load_real_stats(real_files[key])
        want = {k: real["meta"].get(k) for k in IDENTITY_KEYS}
        sets = {}
        for model, path in models.items():
            if is_oom_marker(path):
                logger.warning("%s: %s ran out of memory, no features: left out of the pairs", key, model)
                continue
            sets[model] = load_real_stats(path)
            check_same_extractor(path, sets[model]["meta"], want, f"the real features {real_files[key]}")
        if len(sets) < 2:
            logger.warning("%s: %d set(s) with features, no pair to compare", key, len(sets))
            continue
        logger.info("%s: %d sets, %d pairs", key, len(sets), len(sets) * (len(sets) - 1) // 2)
        rows += [{"dataset": dataset, "resolution": int(res) if res.isdigit() else res, **r}
                 for r in pairwise_cell(real, sets, settings, progress=progress)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_pairwise(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write the table as CSV atomically, numbers as ``%.6g``."""
    out = Path(out)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    return out
