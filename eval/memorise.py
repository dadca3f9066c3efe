"""Memorisation check of one generated set: nearest training volumes, in feature and voxel space.

For every generated volume its nearest training volume by Euclidean distance of the extractor's
features and by 1 - normalised cross-correlation of the whole volume (Akbar et al. 2023); the same
for every held-out test volume, whose distances calibrate the threshold: a generated volume closer
than the ``quantile`` of the test-to-train distances is a suspected copy (Meehan et al. 2020; see
:mod:`eval.memorisation` for the pure functions). Training volumes are read in chunks, so the
voxel search never holds the whole training set.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.memorisation import memorisation_report, nearest_neighbours
from wdm.data.prepare import DATASET_RECORD
from wdm.io import InputError, write_text_atomic

__all__ = ["SPACES", "CSV_COLUMNS", "memorisation", "train_files_of", "write_memorisation_csv",
           "write_nearest_figure", "protocol_line", "split_note"]

logger = logging.getLogger(__name__)

#: space name -> the distance it is measured in (recorded in memorisation.csv).
SPACES: dict[str, str] = {"feature": "euclidean", "voxel": "1 - ncc"}


def split_note(real_dir: str | os.PathLike | None) -> str | None:
    """A note when the data set ``real_dir`` belongs to trains on its test cases, else None.

    Reads ``dataset.json`` beside ``real_dir`` (a data set's ``train/`` folder, written by
    ``wdm-bench prepare``): ``"test_in_train": true`` (``split: upstream``, as the LIDC pipeline of
    Friedrich et al. 2024 trains on every case) means the reference row compares training volumes
    with copies of training volumes and the memorisation threshold is calibrated on them.
    """
    if not real_dir:
        return None
    try:
        record = json.loads((Path(real_dir).parent / DATASET_RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not record.get("test_in_train"):
        return None
    return ("test set in training (split: upstream): the reference row and the memorisation "
            "check are not held out")


def train_files_of(meta: dict[str, Any], what: str) -> list[Path]:
    """The volume files a feature file's ``meta`` lists (``real_dir``/``source_dir`` + ``files``)."""
    folder = meta.get("real_dir") or meta.get("source_dir")
    files = meta.get("files")
    if not folder or not isinstance(files, list):
        raise InputError(f"{what}: its metadata names no folder and files, expected a feature file "
                         "written by this version of 'wdm-bench real-stats' / 'evaluate'")
    paths = [Path(folder) / f for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{what}: lists {missing[0]} (and {len(missing) - 1} more) which is missing; "
                         "the memorisation check needs the volumes themselves")
    return paths


def _voxel_nearest(queries: np.ndarray, train: Sequence[Path], load: Callable[[Path], np.ndarray],
                   chunk: int) -> dict[str, np.ndarray]:
    """Nearest training volume by 1 - NCC of each query (N, D, H, W), reading ``chunk`` at a time."""
    best_i = np.zeros(len(queries), np.int64)
    best_d = np.full(len(queries), np.inf)
    for start in range(0, len(train), chunk):
        block = np.stack([load(p) for p in train[start:start + chunk]])
        nn = nearest_neighbours(queries, block, metric="ncc")
        better = nn["distance"] < best_d  # strict: ties keep the lower (earlier) index
        best_i[better] = nn["index"][better] + start
        best_d[better] = nn["distance"][better]
    return {"index": best_i, "distance": best_d}


def memorisation(fakes: np.ndarray, fake_names: Sequence[str], feats_fake: np.ndarray,
                 train: tuple[Sequence[Path], np.ndarray], test: tuple[Sequence[Path], np.ndarray],
                 load: Callable[[Path], np.ndarray], *, quantile: float,
                 chunk: int = 32) -> dict[str, Any]:
    """Memorisation scores and suspects of generated volumes ``fakes`` (G, D, H, W) in [0, 1].

    ``feats_fake`` (G, F): their features; ``train`` / ``test``: (files, features (N, F)) of the
    training and held-out sets, the files read by ``load`` (a checked reader returning (D, H, W)).
    Returns ``memorisation_<space>`` (fraction flagged) and ``memorisation_<space>_threshold`` per
    space of :data:`SPACES`, ``memorisation_quantile`` and ``memorisation_suspects``: one row per
    (space, suspect), nearest first: ``{"space", "distance_kind", "fake_file", "train_file",
    "distance", "threshold"}``; a volume copied from the training set has distance 0 in both.
    """
    (train_files, feats_train), (test_files, feats_test) = train, test
    if len(train_files) != len(feats_train) or len(test_files) != len(feats_test):
        raise InputError(f"memorisation: {len(train_files)} training files for {len(feats_train)} "
                         f"feature rows, {len(test_files)} test files for {len(feats_test)}")
    tests = np.stack([load(p) for p in test_files])
    nn = {
        "feature": (nearest_neighbours(feats_fake, feats_train, metric="euclidean"),
                    nearest_neighbours(feats_test, feats_train, metric="euclidean")),
        "voxel": (_voxel_nearest(fakes, train_files, load, chunk),
                  _voxel_nearest(tests, train_files, load, chunk)),
    }
    out: dict[str, Any] = {"memorisation_quantile": quantile, "memorisation_suspects": []}
    for space, (gen, held_out) in nn.items():
        rep = memorisation_report(gen, held_out, quantile=quantile)
        out[f"memorisation_{space}"] = rep["fraction"]
        out[f"memorisation_{space}_threshold"] = rep["threshold"]
        out["memorisation_suspects"] += [
            {"space": space, "distance_kind": SPACES[space], "fake_file": fake_names[s["index"]],
             "train_file": Path(train_files[s["train_index"]]).name, "distance": s["distance"],
             "threshold": rep["threshold"]} for s in rep["suspects"]]
        logger.info("memorisation (%s space): %d of %d generated volumes closer to a training volume "
                    "than %.3g (the %g quantile of test-to-train)", space, len(rep["suspects"]),
                    len(fakes), rep["threshold"], quantile)
    return out


#: columns of memorisation.csv, one row per (space, suspected copy).
CSV_COLUMNS: tuple[str, ...] = ("space", "distance_kind", "fake_file", "train_file", "distance",
                                "threshold")


def write_memorisation_csv(out: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """The suspects of an :func:`eval.evaluate.evaluate` result as CSV (a header alone: none), atomically."""
    rows = result.get("memorisation_suspects") or []
    text = ",".join(CSV_COLUMNS) + "\n" + "".join(
        ",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in CSV_COLUMNS) + "\n"
        for r in rows)
    write_text_atomic(out, text)
    return Path(out)


def protocol_line(result: Mapping[str, Any]) -> str:
    """'wdm protocol · <extractor> · 2048-d · N real vs M generated · seed S' of a result."""
    return (f"{result.get('protocol')} protocol · {result.get('feature_extractor')} · "
            f"{result.get('feature_dim')}-d · {result.get('n_real')} real vs {result.get('n_fake')} "
            f"generated · seed {result.get('seed')}")


def write_nearest_figure(out: str | os.PathLike, result: Mapping[str, Any], *, title: str,
                         load: Callable[[Path], np.ndarray]) -> Path:
    """Each suspect of ``result`` (voxel space first) beside its nearest training volume.

    Volumes are read with ``load`` from the result's ``fake_dir`` and ``real_dir`` (the training
    folder); with no suspect the figure says so, with the thresholds.
    """
    from eval.figures_fidelity import nearest_figure

    rows = sorted(result.get("memorisation_suspects") or [], key=lambda r: r["space"] != "voxel")
    pairs = [{"fake_name": r["fake_file"], "train_name": r["train_file"], "distance": r["distance"],
              "space": "voxel (1-NCC)" if r["space"] == "voxel" else "feature",
              "fake": load(Path(result["fake_dir"]) / r["fake_file"]),
              "train": load(Path(result["real_dir"]) / r["train_file"])} for r in rows[:8]]
    n = result.get("n_fake") or 0
    counts = "; ".join(
        f"{space}: {sum(r['space'] == space for r in rows)} of {n} below "
        f"{result.get(f'memorisation_{space}_threshold') or float('nan'):.3g}" for space in SPACES)
    title = f"{title} · {counts}"
    note = (f"{protocol_line(result)} · threshold: the {result.get('memorisation_quantile')} quantile "
            "of test-to-train distances")
    return nearest_figure(pairs, out, title=title, protocol_note=note,
                          n_generated=n if not rows else None, n_total=len(rows))
