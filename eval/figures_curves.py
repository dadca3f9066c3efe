"""Curve figures: training losses per model, and KID/FID against the number of sampling steps.

Pure readers (:func:`read_loss_csv`, :func:`smooth`, :func:`collect_fid_vs_steps`) return
pandas/numpy objects that the tests check by hand; the two plotting functions only draw them.

- ``RUN/loss.csv`` (written by ``wdm-bench train``): columns ``step``, one or more losses (a GAN
  logs several), ``s_per_it``.
- ``results/{dataset}/{res}/{model}/steps/{sampler}_{steps}/metrics.json`` (``wdm-bench
  evaluate`` of the samples in the same folder, whose ``sample_profile.json`` gives s/volume):
  one point of the sampler-steps sweep. Either file may carry ``"status": "oom"`` (the job ran
  out of memory); such a point has no FID/KID and is drawn as a marked gap.

The sweep is read through KID (Binkowski et al., ICLR 2018): its estimator is unbiased, whereas
FID at the ~20 samples of a sweep point is dominated by its upward small-N bias, so FID
differences between step counts mix quality with bias. FID is still drawn, flagged as such.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.plotting import pyplot, save_png
from wdm.io import InputError, read_csv, read_json

__all__ = [
    "FID_STEPS_COLUMNS",
    "read_loss_csv",
    "loss_columns",
    "smooth",
    "loss_figure",
    "collect_fid_vs_steps",
    "fid_vs_steps_figure",
    "draw_fid_vs_steps",
    "protocol_note",
]

log = logging.getLogger(__name__)

#: columns of ``results/{dataset}/{res}/fid_vs_steps.csv``
FID_STEPS_COLUMNS: tuple[str, ...] = (
    "dataset", "resolution", "model", "sampler", "steps", "status", "fid", "fid_ci_low",
    "fid_ci_high", "kid", "kid_ci_low", "kid_ci_high", "ms_ssim", "n_fake", "s_per_volume",
    "sample_peak_memory_gb", "feature_extractor",
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


def _save(fig: Any, out: str | os.PathLike) -> Path:
    return save_png(fig, out, dpi=100)


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
    plt = pyplot()
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
    from the sibling ``sample_profile.json``. ``status`` is ``oom`` if either file says so (FID and
    KID are then NaN), else ``ok``. A metrics file without ``kid``/``kid_ci_*`` (written before
    KID was reported) gives NaN in those columns. Rows are sorted by model, sampler, steps.
    Raises :class:`InputError` for a path of another shape, or a model that samples in one pass
    (no steps to sweep).
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
        if not oom and m.get("kid") is None:
            log.warning("%s: no KID (written before KID was reported?); its KID is NaN", path)
        res = parts[-5]
        rows.append({
            "dataset": parts[-6],
            "resolution": int(res) if res.isdigit() else res,
            "model": parts[-4],
            "sampler": sampler,
            "steps": int(steps),
            "status": "oom" if oom else "ok",
            **{k: math.nan if oom else _num(m.get(k))
               for k in ("fid", "fid_ci_low", "fid_ci_high", "kid", "kid_ci_low", "kid_ci_high",
                         "ms_ssim")},
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


def protocol_note(df: pd.DataFrame) -> str:
    """The evaluation protocol of a sweep: feature extractor label(s) and samples per point.

    Read from the ``feature_extractor`` and ``n_fake`` columns of the points that ran (``status``
    ``ok``; every point if none did), e.g. ``"features: untrained-resnet50 (NOT MedicalNet),
    N = 20 per point"``. A sweep mixing extractors lists them all and a mixed N gives its range.
    """
    ran = df[df["status"] != "oom"] if (df["status"] != "oom").any() else df
    extractors = sorted({str(e) for e in ran["feature_extractor"].dropna()})
    n = pd.to_numeric(ran["n_fake"], errors="coerce").dropna().astype(int)
    parts = []
    if extractors:
        parts.append("features: " + " / ".join(extractors))
    if len(n):
        span = str(n.iloc[0]) if n.nunique() == 1 else f"{n.min()}-{n.max()}"
        parts.append(f"N = {span} per point")
    return ", ".join(parts)


def _sweep_style(color: str, model: str, sampler: str) -> dict:
    """DDIM: dots joined by a line; DDPM (ancestral, normally T = 1000): a lone star."""
    ddpm = sampler == "ddpm"
    return dict(color=color, marker="*" if ddpm else "o", markersize=11 if ddpm else 5,
                linestyle="none" if ddpm else "-", label=f"{model} {sampler.upper()}")


def _errorbars(ax, ok: pd.DataFrame, col: str, style: dict, scale: float = 1.0) -> None:  # noqa: ANN001
    """``col`` (times ``scale``) against steps with ``col_ci_low``/``col_ci_high`` as error bars."""
    y = ok[col] * scale
    if not y.notna().any():
        return
    yerr = np.vstack([(y - ok[f"{col}_ci_low"] * scale).clip(lower=0).fillna(0),
                      (ok[f"{col}_ci_high"] * scale - y).clip(lower=0).fillna(0)])
    ax.errorbar(ok["steps"], y, yerr=yerr, capsize=3, **style)


def _mark_oom(axes: Iterable, steps: Iterable[int], color: str) -> None:
    """Write ``OOM`` at the bottom of each metric panel above the steps that ran out of memory."""
    for s in steps:
        for ax in axes:
            ax.annotate("OOM", (s, 0), xycoords=("data", "axes fraction"), color=color,
                        ha="center", va="bottom", fontsize=8, fontweight="bold")


def draw_fid_vs_steps(df: pd.DataFrame, *, title: str | None = None):  # noqa: ANN201
    """The sweep figure (a matplotlib ``Figure``, not saved) from :func:`collect_fid_vs_steps`.

    Panels, left to right: KID x 10^3 with its bootstrap interval (the metric to read: unbiased at
    the ~20 samples of a point), FID with its 95% CI (flagged as biased at small N), s/volume; all
    against sampling steps on a log axis. One line per (model, sampler): DDIM points joined, DDPM
    a star. Out-of-memory points are marked ``OOM`` under both metric panels. The suptitle states
    the protocol (:func:`protocol_note`).
    """
    plt = pyplot()
    if df.empty:
        raise InputError("no sweep points to plot")
    fig, (ax_k, ax_f, ax_t) = plt.subplots(1, 3, figsize=(14, 4.2))
    for k, (model, g) in enumerate(df.groupby("model", sort=True)):
        color = f"C{k}"
        for sampler, gs in g.groupby("sampler", sort=True):
            gs = gs.sort_values("steps")
            ok = gs[gs["status"] != "oom"]
            style = _sweep_style(color, str(model), str(sampler))
            _errorbars(ax_k, ok, "kid", style, scale=1e3)
            _errorbars(ax_f, ok, "fid", style)
            ax_t.plot(ok["steps"], ok["s_per_volume"], **style)
            _mark_oom((ax_k, ax_f), gs.loc[gs["status"] == "oom", "steps"], color)
    if df["kid"].notna().any():
        ax_k.axhline(0.0, color="0.4", linewidth=0.8, linestyle=":")  # unbiased: may dip below 0
        ax_k.legend(fontsize=7)
    else:
        ax_k.text(0.5, 0.5, "no KID in these metrics files\n(re-run 'wdm-bench evaluate')",
                  ha="center", va="center", transform=ax_k.transAxes, fontsize=9)
    ax_k.set_title("KID (unbiased): read this panel", fontsize=9, fontweight="bold")
    ax_k.set_ylabel(r"KID $\times 10^3$ (bootstrap 95% CI)")
    ax_f.set_title("FID: biased at small N, for reference only", fontsize=9)
    ax_f.set_ylabel("FID (95% CI)")
    ax_t.set_title("sampling cost", fontsize=9)
    ax_t.set_ylabel("s / volume")
    ax_t.set_yscale("log")
    for ax in (ax_k, ax_f, ax_t):
        ax.set_xscale("log")
        ax.margins(x=0.07)  # keep the DDPM star (largest step count) off the frame
        ax.set_xlabel("sampling steps")
        ax.grid(alpha=0.3, which="both")
    note = protocol_note(df)
    fig.suptitle(" - ".join(t for t in (title, note) if t), fontsize=10)
    fig.tight_layout()
    return fig


def fid_vs_steps_figure(df: pd.DataFrame, out: str | os.PathLike, *, title: str | None = None) -> Path:
    """Draw :func:`draw_fid_vs_steps` (KID, FID, s/volume against steps) and write it to ``out``.

    The PNG is written atomically (a reader never sees a half-written file); returns ``out``.
    """
    return _save(draw_fid_vs_steps(df, title=title), out)
