"""Curve figures: training losses per model, and FID against the number of sampling steps.

Pure readers (:func:`read_loss_csv`, :func:`smooth`, :func:`collect_fid_vs_steps`) return
pandas/numpy objects that the tests check by hand; the two plotting functions only draw them.

- ``RUN/loss.csv`` (written by ``wdm-bench train``): columns ``step``, one or more losses (a GAN
  logs several), ``s_per_it``.
- ``results/{dataset}/{res}/{model}/steps/{sampler}_{steps}/metrics.json`` (``wdm-bench
  evaluate`` of the samples in the same folder, whose ``sample_profile.json`` gives s/volume):
  one point of the FID-against-steps sweep. Either file may carry ``"status": "oom"`` (the job ran
  out of memory); such a point has no FID and is drawn as a marked gap.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from wdm.io import InputError, atomic_path, read_csv, read_json

__all__ = [
    "FID_STEPS_COLUMNS",
    "read_loss_csv",
    "loss_columns",
    "smooth",
    "loss_figure",
    "collect_fid_vs_steps",
    "fid_vs_steps_figure",
]

log = logging.getLogger(__name__)

#: columns of ``results/{dataset}/{res}/fid_vs_steps.csv``
FID_STEPS_COLUMNS: tuple[str, ...] = (
    "dataset", "resolution", "model", "sampler", "steps", "status", "fid", "fid_ci_low",
    "fid_ci_high", "ms_ssim", "n_fake", "s_per_volume", "sample_peak_memory_gb", "feature_extractor",
)
_NOT_LOSSES = {"step", "s_per_it"}


def read_loss_csv(path: str | os.PathLike) -> pd.DataFrame:
    """``loss.csv`` as a DataFrame sorted by step, every column numeric (blank cells -> NaN).

    Raises :class:`InputError` if the file is missing, has no ``step`` column or no loss column.
    An empty log (header only) gives an empty DataFrame.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    df = read_csv(path, (), "loss log (loss.csv written by 'wdm-bench train')")
    if "step" not in df.columns:
        raise InputError(f"{path}: no 'step' column (columns: {list(df.columns)})")
    if not loss_columns(df):
        raise InputError(f"{path}: no loss column besides {sorted(_NOT_LOSSES)}")
    df = df.apply(pd.to_numeric, errors="coerce")
    return df.sort_values("step", kind="stable").reset_index(drop=True)


def loss_columns(df: pd.DataFrame) -> list[str]:
    """The loss columns of a loss log: every column but ``step`` and ``s_per_it``, in file order."""
    return [c for c in df.columns if c not in _NOT_LOSSES]


def smooth(values: Iterable[float], weight: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing).

    ``s_t = w s_{t-1} + (1 - w) x_t`` from ``s_0 = 0``, reported as ``s_t / (1 - w^t)`` so the
    first value equals the first sample. NaNs are skipped (their output is the running value, NaN
    before the first finite sample). ``weight`` 0 returns the input unchanged.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    x = np.asarray(list(values), dtype=float)
    out = np.full_like(x, np.nan)
    acc, n = 0.0, 0
    for i, v in enumerate(x):
        if math.isfinite(v):
            acc = weight * acc + (1.0 - weight) * v
            n += 1
        if n:
            out[i] = acc / (1.0 - weight**n)
    return out


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | os.PathLike) -> Path:  # noqa: ANN001
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    _plt().close(fig)
    return out


def loss_figure(runs: Mapping[str, str | os.PathLike], out: str | os.PathLike, *,
                smoothing: float = 0.9, title: str | None = None) -> Path:
    """One panel per model (``name -> run folder`` holding ``loss.csv``): every loss, raw + smoothed.

    Raw values are drawn faint, the :func:`smooth` ed curve solid in the same colour; the y axis is
    logarithmic when every value is positive. A run folder without ``loss.csv`` or with an empty
    one (e.g. training ran out of memory) gets an empty panel saying so instead of failing the
    figure; a damaged ``loss.csv`` is an :class:`InputError`.
    """
    if not runs:
        raise InputError("no runs given for the loss figure")
    if not 0.0 <= smoothing < 1.0:
        raise InputError(f"smoothing weight must be in [0, 1), got {smoothing}")
    plt = _plt()
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    for ax, (name, run) in zip(axes[0], runs.items(), strict=True):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        log_file = Path(run) / "loss.csv"
        if log_file.exists():
            df = read_loss_csv(log_file)  # a damaged log is an error, not an empty panel
        else:
            log.warning("%s: %s: no training log (training ran out of memory?)", name, log_file)
            df = None
        if df is None or df.empty:
            ax.text(0.5, 0.5, "no training log\n(see train_profile.json)", ha="center",
                    va="center", transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        positive = True
        for k, col in enumerate(loss_columns(df)):
            y = df[col].to_numpy(float)
            color = f"C{k}"
            ax.plot(df["step"], y, color=color, alpha=0.25, linewidth=0.8)
            ax.plot(df["step"], smooth(y, smoothing), color=color, linewidth=1.6, label=col)
            positive &= bool(np.all(y[np.isfinite(y)] > 0))
        if positive:
            ax.set_yscale("log")
        ax.set_ylabel("loss")
        ax.legend(fontsize=7, loc="upper right")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def _read_json(path: Path, what: str, required: bool = True) -> dict:
    if not path.exists() and not required:
        return {}
    return read_json(path, what)


def _num(v: object) -> float:
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def collect_fid_vs_steps(metrics_files: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per sweep point from ``.../{dataset}/{res}/{model}/steps/{sampler}_{steps}/metrics.json``.

    Dataset, resolution, model, sampler and steps come from the path; s/volume and peak memory
    from the sibling ``sample_profile.json``. ``status`` is ``oom`` if either file says so (FID is
    then NaN), else ``ok``. Rows are sorted by model, sampler, steps. Raises :class:`InputError`
    for a path of another shape, or a model that samples in one pass (no steps to sweep).
    """
    rows = []
    for f in metrics_files:
        path = Path(f)
        parts = path.parts
        if len(parts) < 6 or parts[-3] != "steps" or "_" not in parts[-2]:
            raise InputError(f"{path}: expected .../DATASET/RES/MODEL/steps/SAMPLER_STEPS/metrics.json")
        sampler, _, steps = parts[-2].rpartition("_")
        if not steps.isdigit():
            raise InputError(f"{path}: folder {parts[-2]!r} is not SAMPLER_STEPS")
        m = _read_json(path, "metrics JSON written by 'wdm-bench evaluate'")
        sp = _read_json(path.parent / "sample_profile.json", "sample profile written by 'wdm-bench sample'",
                        required=False)
        if sp.get("sampler") == "one forward pass":
            raise InputError(f"{path}: model {parts[-4]!r} samples in one forward pass; "
                             "it has no sampling steps to sweep")
        oom = "oom" in (str(m.get("status", "ok")).lower(), str(sp.get("status", "ok")).lower())
        res = parts[-5]
        rows.append({
            "dataset": parts[-6],
            "resolution": int(res) if res.isdigit() else res,
            "model": parts[-4],
            "sampler": sampler,
            "steps": int(steps),
            "status": "oom" if oom else "ok",
            **{k: math.nan if oom else _num(m.get(k))
               for k in ("fid", "fid_ci_low", "fid_ci_high", "ms_ssim")},
            "n_fake": m.get("n_fake"),
            "s_per_volume": _num(sp.get("s_per_volume")),
            "sample_peak_memory_gb": _num(sp.get("peak_memory_gb")),
            "feature_extractor": m.get("feature_extractor"),
        })
    if not rows:
        raise InputError("no sweep metrics files given")
    df = pd.DataFrame(rows, columns=list(FID_STEPS_COLUMNS))
    return df.sort_values(["dataset", "resolution", "model", "sampler", "steps"],
                          kind="stable").reset_index(drop=True)


def fid_vs_steps_figure(df: pd.DataFrame, out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Left: FID (95% CI bars) against sampling steps, log x; right: s/volume against steps.

    DDIM points of a model are joined by a line; DDPM points (the ancestral sampler, normally at
    the full T = 1000) get a distinct star marker. Out-of-memory points are marked ``OOM`` at
    the bottom of the FID panel.
    """
    plt = _plt()
    if df.empty:
        raise InputError("no sweep points to plot")
    fig, (ax_f, ax_t) = plt.subplots(1, 2, figsize=(10, 3.8))
    for k, (model, g) in enumerate(df.groupby("model", sort=True)):
        color = f"C{k}"
        for sampler, gs in g.groupby("sampler", sort=True):
            gs = gs.sort_values("steps")
            ok = gs[gs["status"] != "oom"]
            ddpm = sampler == "ddpm"
            style = dict(color=color, marker="*" if ddpm else "o", markersize=11 if ddpm else 5,
                         linestyle="none" if ddpm else "-", label=f"{model} {sampler.upper()}")
            yerr = np.vstack([(ok["fid"] - ok["fid_ci_low"]).clip(lower=0).fillna(0),
                              (ok["fid_ci_high"] - ok["fid"]).clip(lower=0).fillna(0)])
            ax_f.errorbar(ok["steps"], ok["fid"], yerr=yerr, capsize=3, **style)
            ax_t.plot(ok["steps"], ok["s_per_volume"], **style)
            for s in gs.loc[gs["status"] == "oom", "steps"]:
                ax_f.annotate("OOM", (s, 0), xycoords=("data", "axes fraction"), color=color,
                              ha="center", va="bottom", fontsize=8, fontweight="bold")
    ax_f.set_ylabel("FID (95% CI)")
    ax_t.set_ylabel("s / volume")
    ax_t.set_yscale("log")
    for ax in (ax_f, ax_t):
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    n = df["n_fake"].dropna()
    note = f"n = {int(n.iloc[0])} samples per point" if len(n) and n.nunique() == 1 else ""
    fig.suptitle(" - ".join(t for t in (title, note) if t), fontsize=10)
    fig.tight_layout()
    return _save(fig, out)
