"""Our table beside the paper's: ``results/table1.csv`` + ``results/paper_reference.csv``.

The reference (one row per dataset, resolution, model, metric) holds the values as the paper
prints them, with ``scale`` the factor the paper applied (WDM's Table 1 prints FID x 10^3, so
``scale`` 1000 and ``value`` 0.154 mean FID 0.000154), the ``source`` and whether the number was
checked against the paper (``verified``). A reference ``dataset`` of ``*`` matches any paper data
set (e.g. sampling memory, which depends on the network and resolution, not on the data).

:func:`compare_to_paper` writes, for every (dataset, resolution, model) row of our table and every
compared metric, our value, our value on the paper's scale, the paper's value, the difference
(ours - paper) and the ratio (ours / paper), both on the paper's scale. Our data sets map to the
paper's through ``paper_datasets`` (workflow config ``datasets.<name>.paper_dataset``); a data set
without a mapping (the embedded phantom) gets rows with empty paper values. Paper models we did not
run in a mapped cell appear with empty values of ours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from wdm.io import InputError, read_csv

__all__ = ["REFERENCE_COLUMNS", "TABLE_COLUMNS", "METRICS", "COMPARE_COLUMNS", "load_reference", "load_table",
           "compare_to_paper"]

REFERENCE_COLUMNS: tuple[str, ...] = (
    "dataset", "resolution", "model", "paper_model", "metric", "value", "scale", "unit", "source",
    "verified", "note",
)
#: reference metric -> table1.csv column it is compared with
METRICS: dict[str, str] = {
    "fid": "fid",
    "ms_ssim": "ms_ssim",
    "sample_memory_gb": "sample_peak_memory_gb",
}
COMPARE_COLUMNS: tuple[str, ...] = (
    "dataset", "resolution", "model", "metric", "ours", "ours_status", "paper_dataset", "paper_model",
    "scale", "ours_scaled", "paper", "delta", "ratio", "unit", "verified", "source", "caveat",
)


#: the columns of ``table1.csv`` that the comparison needs
TABLE_COLUMNS: tuple[str, ...] = ("dataset", "resolution", "model")


def load_reference(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check ``paper_reference.csv`` (every column of :data:`REFERENCE_COLUMNS`)."""
    path = Path(path)
    df = read_csv(path, REFERENCE_COLUMNS, "paper reference CSV",
                  dtype={"dataset": str, "model": str, "metric": str}, keep_default_na=False,
                  na_values={"value": [""], "scale": [""]})
    unknown = sorted(set(df["metric"]) - set(METRICS))
    if unknown:
        raise InputError(f"{path}: unknown metrics {unknown}; allowed: {sorted(METRICS)}")
    df["resolution"] = _numeric(path, df, "resolution", required=True).astype(int)
    df["value"] = _numeric(path, df, "value")
    df["scale"] = _numeric(path, df, "scale").fillna(1.0)
    df["verified"] = df["verified"].astype(str).str.lower().isin(["true", "1", "yes"])
    return df


def load_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read ``table1.csv`` (``wdm-bench table``) for :func:`compare_to_paper`, checking its columns."""
    path = Path(path)
    df = read_csv(path, TABLE_COLUMNS, "table1.csv written by 'wdm-bench table'",
                  dtype={"dataset": str, "model": str})
    df["resolution"] = _numeric(path, df, "resolution", required=True)
    return df


def _numeric(path: Path, df: pd.DataFrame, column: str, required: bool = False) -> pd.Series:
    """Column ``column`` as numbers; a cell that is not a number is an :class:`InputError`.

    ``required``: an empty cell is an error too (else it becomes NaN).
    """
    values = pd.to_numeric(df[column], errors="coerce")
    blank = df[column].isna() | (df[column].astype(str).str.strip() == "")
    bad = df[column][values.isna() & (~blank | required)]
    if len(bad):
        raise InputError(f"{path}: column {column!r} holds {bad.iloc[0]!r} (row {bad.index[0] + 2}), "
                         "expected a number")
    return values


def _ours(row: pd.Series, column: str) -> tuple[float, str]:
    """Our value of ``column`` (NaN when absent or not a number) and the row's status."""
    raw = row.get(column)
    status = str(row.get("status") or "").strip().lower() or "ok"
    if isinstance(raw, str) and raw.strip().upper() == "OOM":
        status = "oom"
    try:
        val = float(raw)
    except (TypeError, ValueError):
        val = math.nan
    return val, status


def _caveat(row: pd.Series, metric: str) -> str:
    notes = []
    if metric == "fid" and "NOT MedicalNet" in str(row.get("feature_extractor") or ""):
        notes.append("our FID uses an untrained feature extractor: not comparable to the paper's")
    if metric == "sample_memory_gb":
        notes.append(f"paper: GPU memory; ours on {row.get('device') or 'unknown device'} "
                     "(CUDA max allocated on GPU, process peak RSS on CPU)")
    return "; ".join(notes)


def compare_to_paper(table: pd.DataFrame, reference: pd.DataFrame,
                     paper_datasets: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """Rows of :data:`COMPARE_COLUMNS`: ours beside the paper's value, delta and ratio.

    Args:
        table: ``table1.csv`` as read by pandas (metric cells may be ``OOM``; a ``status`` column
            is used when present). The real-vs-real ``reference`` rows are skipped.
        reference: :func:`load_reference`'s frame.
        paper_datasets: our data set name -> the paper's (``brats``, ``lidc``) or None.
    """
    paper_datasets = dict(paper_datasets or {})
    out: list[dict] = []
    ours_cells: dict[tuple[str, int], set[str]] = {}
    for _, row in table.iterrows():
        model = str(row["model"])
        if model == "reference":
            continue
        dataset, res = str(row["dataset"]), int(row["resolution"])
        pds = paper_datasets.get(dataset)
        ours_cells.setdefault((dataset, res), set()).add(model)
        for metric, column in METRICS.items():
            val, status = _ours(row, column)
            ref = _match(reference, pds, res, model, metric)
            out.append(_row(dataset, res, model, metric, val, status, pds, ref, _caveat(row, metric)))
    # paper models we did not run, in the cells that map to a paper data set
    for (dataset, res), models in ours_cells.items():
        pds = paper_datasets.get(dataset)
        if not pds:
            continue
        sel = reference[(reference["dataset"].isin([pds, "*"])) & (reference["resolution"] == res)
                        & ~reference["model"].isin(models)]
        for (model, metric), _ in sel.groupby(["model", "metric"], sort=False):
            ref = _match(reference, pds, res, model, metric)
            out.append(_row(dataset, res, model, metric, math.nan, "not run", pds, ref, ""))
    df = pd.DataFrame(out, columns=list(COMPARE_COLUMNS))
    order = {m: i for i, m in enumerate(METRICS)}
    df = df.assign(_m=df["metric"].map(order), _p=df["ours_status"] == "not run")
    df = df.sort_values(["dataset", "resolution", "_p", "model", "_m"], kind="stable")
    return df.drop(columns=["_m", "_p"]).reset_index(drop=True)


def _match(reference: pd.DataFrame, paper_dataset: str | None, res: int, model: str,
           metric: str) -> pd.Series | None:
    """The reference row for one cell; an exact data set beats ``*``; None without a match."""
    if not paper_dataset:
        return None
    sel = reference[(reference["resolution"] == res) & (reference["model"] == model)
                    & (reference["metric"] == metric)]
    for ds in (paper_dataset, "*"):
        hit = sel[sel["dataset"] == ds]
        if len(hit):
            return hit.iloc[0]
    return None


def _row(dataset: str, res: int, model: str, metric: str, ours: float, status: str,
         paper_dataset: str | None, ref: pd.Series | None, caveat: str) -> dict:
    scale = float(ref["scale"]) if ref is not None else math.nan
    paper = float(ref["value"]) if ref is not None else math.nan
    scaled = ours * scale if ref is not None else math.nan
    return {
        "dataset": dataset,
        "resolution": res,
        "model": model,
        "metric": metric,
        "ours": ours,
        "ours_status": status,
        "paper_dataset": paper_dataset or "",
        "paper_model": ref["paper_model"] if ref is not None else "",
        "scale": scale,
        "ours_scaled": scaled,
        "paper": paper,
        "delta": scaled - paper,
        "ratio": scaled / paper if paper else math.nan,
        "unit": ref["unit"] if ref is not None else "",
        "verified": bool(ref["verified"]) if ref is not None else "",
        "source": ref["source"] if ref is not None else "",
        "caveat": "; ".join(c for c in (caveat, ref["note"] if ref is not None else "") if c),
    }
