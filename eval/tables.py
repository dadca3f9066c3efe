"""Comparison table: one row per (dataset, resolution, model) from the files each step wrote.

For ``results/{dataset}/{res}/{model}/metrics.json`` the row also reads the sibling
``run/train_profile.json`` and ``samples/sample_profile.json``. The table's columns are fixed
(:data:`COLUMNS`) so downstream scripts can rely on them: a ``rank`` by KID (models whose KID
intervals overlap share it), FID with its 95% bootstrap interval and FID∞, KID with its interval,
MMD², precision / recall / density / coverage, FRD (empty where its backend is not installed),
mean pairwise MS-SSIM with its interval, the memorisation fractions (feature and voxel space),
the sample sizes and ``protocol_note`` ("n below protocol" for fewer volumes than the protocol
names), the extractor, protocol and the weights' SHA-256. The real-vs-real reference row (model
:data:`REFERENCE_MODEL`) comes first in each (dataset, resolution).

A row never mixes provenances: samples made from another checkpoint than the run's final one,
or metrics computed on another sample set than the one in ``samples/``, are an error.

A model whose training or sampling ran out of memory (``"status": "oom"`` in its files, see
:mod:`wdm.oom`) keeps its row: ``status`` is ``oom``, the metric cells read :data:`OOM`, and so do
the profile cells of the stage that failed (``train_*`` or ``sample_*``); the cells of a stage that
never ran are empty. Read the CSV with ``pandas.read_csv(path, na_values=["OOM"])`` for numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from eval.significance import share_ranks
from wdm.io import InputError, atomic_path
from wdm.oom import STATUS_OK, STATUS_OOM, read_status

__all__ = ["COLUMNS", "REFERENCE_MODEL", "OOM", "table_row", "build_table", "add_ranks", "write_table"]

#: what the cells of a model that ran out of memory read, in place of numbers.
OOM = "OOM"

#: model name of the real-vs-real row (``results/{dataset}/{res}/reference/metrics.json``): FID of
#: the training split's features against the test split's, MS-SSIM among test volumes.
REFERENCE_MODEL = "reference"

COLUMNS: tuple[str, ...] = (
    "dataset",
    "resolution",
    "model",
    "status",
    "rank",
    "fid",
    "fid_ci_low",
    "fid_ci_high",
    "fid_inf",
    "kid",
    "kid_ci_low",
    "kid_ci_high",
    "mmd",
    "precision",
    "recall",
    "density",
    "coverage",
    "frd",
    "ms_ssim",
    "ms_ssim_ci_low",
    "ms_ssim_ci_high",
    "ms_ssim_se",
    "ms_ssim_pairs",
    "ms_ssim_scales",
    "memorisation_feature",
    "memorisation_voxel",
    "n_real",
    "n_fake",
    "protocol_note",
    "feature_extractor",
    "protocol",
    "weights_sha256",
    "train_s_per_iteration",
    "train_peak_memory_gb",
    "sample_s_per_volume",
    "sample_peak_memory_gb",
    "steps_trained",
    "train_flops",
    "flop_budget",
    "sampler",
    "sampler_steps",
    "device",
    "code_version",
)

#: cells that read OOM in the row of a model that ran out of memory at any stage.
METRIC_COLUMNS: tuple[str, ...] = ("fid", "fid_ci_low", "fid_ci_high", "fid_inf", "kid", "kid_ci_low",
                                   "kid_ci_high", "mmd", "precision", "recall", "density", "coverage",
                                   "frd", "ms_ssim", "ms_ssim_ci_low", "ms_ssim_ci_high", "ms_ssim_se",
                                   "ms_ssim_pairs", "ms_ssim_scales", "memorisation_feature",
                                   "memorisation_voxel")
#: stage -> its profile cells, which read OOM when that stage ran out of memory.
STAGE_COLUMNS: dict[str, tuple[str, ...]] = {
    "train": ("train_s_per_iteration", "train_peak_memory_gb"),
    "sample": ("sample_s_per_volume", "sample_peak_memory_gb"),
}


def table_row(metrics_file: str | os.PathLike) -> dict:
    """The table row for ``results/{dataset}/{res}/{model}/metrics.json``."""
    path = Path(metrics_file)
    parts = path.parts
    if len(parts) < 4:
        raise InputError(f"{path}: expected a path like results/DATASET/RES/MODEL/metrics.json")
    dataset, res, model = parts[-4], parts[-3], parts[-2]
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    m_status, m = read_status(path)
    tp_status, tp = read_status(path.parent / "run" / "train_profile.json")
    sp_status, sp = read_status(path.parent / "samples" / "sample_profile.json")
    _check_one_provenance(path, tp, sp, m)
    failed: set[str] = set()  # stages that ran out of memory
    if tp_status == STATUS_OOM:
        failed.add("train")
    for status, content in ((sp_status, sp), (m_status, m)):
        if status == STATUS_OOM:
            failed.add(content.get("failed_stage") or "sample")
    row = {
        "dataset": dataset,
        "resolution": int(res) if res.isdigit() else res,
        "model": model,
        "status": STATUS_OOM if failed else STATUS_OK,
        "rank": None,  # set across the models of a cell by add_ranks
        **{k: m.get(k) for k in METRIC_COLUMNS},
        "n_real": m.get("n_real"),
        "n_fake": m.get("n_fake"),
        "protocol_note": m.get("protocol_note"),
        "feature_extractor": m.get("feature_extractor"),
        "protocol": m.get("protocol"),
        "weights_sha256": m.get("weights_sha256"),
        "train_s_per_iteration": tp.get("s_per_iteration"),
        "train_peak_memory_gb": tp.get("peak_memory_gb"),
        "sample_s_per_volume": sp.get("s_per_volume"),
        "sample_peak_memory_gb": sp.get("peak_memory_gb"),
        "steps_trained": tp.get("steps_trained", sp.get("checkpoint_step")),
        **_train_compute(path.parent),
        "sampler": sp.get("sampler"),
        "sampler_steps": sp.get("sampler_steps"),
        "device": sp.get("device") or tp.get("device"),
        "code_version": m.get("code_version"),
    }
    if failed:
        row.update(dict.fromkeys(METRIC_COLUMNS, OOM))
        for stage in failed:
            row.update(dict.fromkeys(STAGE_COLUMNS.get(stage, ()), OOM))
    return row


def _train_compute(model_dir: Path) -> dict[str, float | None]:
    """``train_flops``: the counted training FLOPs summed over the stages of a model folder
    (``*/train_profile.json``, see :mod:`wdm.budget`); ``flop_budget``: the budget they were
    derived from. Both None for runs trained by steps."""
    recs = [read_status(p)[1].get("flop_budget") for p in sorted(model_dir.glob("*/train_profile.json"))]
    recs = [r for r in recs if r]
    if not recs:
        return {"train_flops": None, "flop_budget": None}
    return {"train_flops": float(sum(r["train_flops"] for r in recs)),
            "flop_budget": float(recs[0]["flop_budget"])}


def _check_one_provenance(path: Path, tp: dict, sp: dict, m: dict) -> None:
    """Refuse a row whose samples come from another checkpoint than the run's final one, or
    whose metrics were computed on another sample set than the one in ``samples/``."""
    final = (tp.get("checkpoint") or {}).get("sha256")
    used = sp.get("checkpoint_sha256")
    if final and used and final != used:
        raise InputError(f"{path.parent / 'samples' / 'sample_profile.json'}: the samples come from "
                         f"checkpoint {sp.get('checkpoint')} (SHA-256 {used[:12]}), not the run's final "
                         f"checkpoint (SHA-256 {final[:12]}); sample again before building the table")
    scored, present = m.get("samples_provenance_key"), sp.get("provenance_key")
    if scored and present and scored != present:
        raise InputError(f"{path}: computed on the sample set {scored}, but samples/ holds the set "
                         f"{present}; evaluate again before building the table")


def build_table(metrics_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Rows for every metrics file, sorted by dataset, resolution, reference first, model; ranked."""
    rows = [table_row(f) for f in metrics_files]
    if not rows:
        raise InputError("no metrics files given")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    order = df["model"] != REFERENCE_MODEL  # the reference row first in each cell
    df = df.assign(_order=order).sort_values(["dataset", "resolution", "_order", "model"],
                                             kind="stable")
    return add_ranks(df.drop(columns="_order").reset_index(drop=True))


def add_ranks(df: pd.DataFrame) -> pd.DataFrame:
    """``rank`` of the models of each (dataset, resolution) by KID, lower first.

    Models whose KID bootstrap intervals overlap share a rank (:func:`eval.significance.share_ranks`,
    chained, competition style: 1, 1, 3); without intervals (n_bootstrap 0) the point values rank.
    The reference row and rows without a KID (out of memory) get no rank.
    """
    df = df.copy()
    df["rank"] = pd.array([None] * len(df), dtype="Int64")
    kid = pd.to_numeric(df["kid"], errors="coerce")
    for _, idx in df.groupby(["dataset", "resolution"]).groups.items():
        ok = [i for i in idx if df.at[i, "model"] != REFERENCE_MODEL and pd.notna(kid[i])]
        if not ok:
            continue
        lo = pd.to_numeric(df.loc[ok, "kid_ci_low"], errors="coerce").fillna(kid[ok])
        hi = pd.to_numeric(df.loc[ok, "kid_ci_high"], errors="coerce").fillna(kid[ok])
        for i, r in zip(ok, share_ranks(list(zip(lo, hi, strict=True))), strict=True):
            df.at[i, "rank"] = r
    return df


def write_table(df: pd.DataFrame, out: str | os.PathLike) -> Path:
    """Write ``df`` as CSV atomically, every number as ``%.6g`` (also beside ``OOM`` cells)."""
    def fmt(v: object) -> object:
        return f"{v:.6g}" if isinstance(v, float) and v == v else v  # v == v: not NaN

    text = df.map(fmt)
    out = Path(out)
    with atomic_path(out) as tmp:
        text.to_csv(tmp, index=False)
    return out
