"""Comparison table: one row per (dataset, resolution, model) from the files each step wrote.

For ``results/{dataset}/{res}/{model}/metrics.json`` the row also reads the sibling
``run/train_profile.json`` and ``samples/sample_profile.json``. The table's columns are fixed
(:data:`COLUMNS`) so downstream scripts can rely on them: FID with its 95% bootstrap interval
(``fid_ci_low``/``fid_ci_high``), MMD², mean pairwise MS-SSIM with its interval and, for a random
subset of pairs, its standard error, the protocol and the weights' SHA-256. The real-vs-real
reference row (model :data:`REFERENCE_MODEL`) comes first in each (dataset, resolution).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from wdm.io import InputError

__all__ = ["COLUMNS", "REFERENCE_MODEL", "table_row", "build_table"]

#: model name of the real-vs-real row (``results/{dataset}/{res}/reference/metrics.json``): FID of
#: the training split's features against the test split's, MS-SSIM among test volumes.
REFERENCE_MODEL = "reference"

COLUMNS: tuple[str, ...] = (
    "dataset",
    "resolution",
    "model",
    "fid",
    "fid_ci_low",
    "fid_ci_high",
    "mmd",
    "ms_ssim",
    "ms_ssim_ci_low",
    "ms_ssim_ci_high",
    "ms_ssim_se",
    "ms_ssim_pairs",
    "ms_ssim_scales",
    "n_real",
    "n_fake",
    "feature_extractor",
    "protocol",
    "weights_sha256",
    "train_s_per_iteration",
    "train_peak_memory_gb",
    "sample_s_per_volume",
    "sample_peak_memory_gb",
    "steps_trained",
    "sampler",
    "sampler_steps",
    "device",
    "code_version",
)


def _read_json(path: Path, required: bool = True) -> dict:
    if not path.is_file():
        if required:
            raise InputError(f"{path}: file not found")
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc


def table_row(metrics_file: str | os.PathLike) -> dict:
    """The table row for ``results/{dataset}/{res}/{model}/metrics.json``."""
    path = Path(metrics_file)
    parts = path.parts
    if len(parts) < 4:
        raise InputError(f"{path}: expected a path like results/DATASET/RES/MODEL/metrics.json")
    dataset, res, model = parts[-4], parts[-3], parts[-2]
    m = _read_json(path)
    tp = _read_json(path.parent / "run" / "train_profile.json", required=False)
    sp = _read_json(path.parent / "samples" / "sample_profile.json", required=False)
    row = {
        "dataset": dataset,
        "resolution": int(res) if res.isdigit() else res,
        "model": model,
        **{k: m.get(k) for k in ("fid", "fid_ci_low", "fid_ci_high", "mmd", "ms_ssim",
                                 "ms_ssim_ci_low", "ms_ssim_ci_high", "ms_ssim_se",
                                 "ms_ssim_pairs", "ms_ssim_scales")},
        "n_real": m.get("n_real"),
        "n_fake": m.get("n_fake"),
        "feature_extractor": m.get("feature_extractor"),
        "protocol": m.get("protocol"),
        "weights_sha256": m.get("weights_sha256"),
        "train_s_per_iteration": tp.get("s_per_iteration"),
        "train_peak_memory_gb": tp.get("peak_memory_gb"),
        "sample_s_per_volume": sp.get("s_per_volume"),
        "sample_peak_memory_gb": sp.get("peak_memory_gb"),
        "steps_trained": tp.get("steps_trained", sp.get("checkpoint_step")),
        "sampler": sp.get("sampler"),
        "sampler_steps": sp.get("sampler_steps"),
        "device": sp.get("device") or tp.get("device"),
        "code_version": m.get("code_version"),
    }
    return row


def build_table(metrics_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Rows for every metrics file, sorted by dataset, resolution, reference first, model."""
    rows = [table_row(f) for f in metrics_files]
    if not rows:
        raise InputError("no metrics files given")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    order = df["model"] != REFERENCE_MODEL  # the reference row first in each cell
    df = df.assign(_order=order).sort_values(["dataset", "resolution", "_order", "model"],
                                             kind="stable")
    return df.drop(columns="_order").reset_index(drop=True)
