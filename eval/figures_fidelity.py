"""Figures of the fidelity / memorisation metrics: FID against 1/N (FID∞) and nearest training volumes.

- :func:`fid_vs_n_figure`: FID at several sample sizes N against 1/N with the fitted line
  ``FID_N = FID∞ + slope / N`` run out to 1/N = 0, where FID∞ is marked; the estimator of Chong &
  Forsyth, "Effectively Unbiased FID and Inception Score and where to find them", CVPR 2020
  (:func:`eval.fidelity.fid_infinity` gives the numbers). The gap between a model's last point and
  its star is the bias of its finite-N FID.
- :func:`nearest_figure`: each suspected copy (:func:`eval.memorisation.memorisation_report`)
  beside its nearest training volume, three central slices each: the visual check of the
  nearest-neighbour memorisation tests of generative-model papers (e.g. Akbar et al. 2023 for
  medical images; Meehan et al. 2020 for the held-out threshold).

Both write a PNG atomically and return its path; ``_build_*`` make the figure without saving it.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.figures import PLANES, mid_slices
from eval.plotting import pyplot, save_png
from wdm.io import InputError

__all__ = ["fid_vs_n_figure", "nearest_figure"]

log = logging.getLogger(__name__)

_DPI = 100
_REFERENCE = "reference"  # the real-vs-real curve: drawn grey and dashed
_WARN = "NOT MedicalNet"  # an untrained extractor: the protocol note is drawn in red


def _save(fig: Any, out: str | os.PathLike) -> Path:
    return save_png(fig, out, dpi=_DPI)


def _header(fig: Any, title: str, note: str) -> None:
    """Title, and the protocol note in small text under it (red for an untrained extractor)."""
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / fig.get_figheight())
    fig.text(0.5, 1 - 0.42 / fig.get_figheight(), note, ha="center", va="center", fontsize=8,
             color="firebrick" if _WARN in note else "0.3")


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"{where} must be a number, got {value!r}")
    return float(value)


def _check_curve(i: int, c: Mapping) -> dict[str, Any]:
    """One curve of :func:`fid_vs_n_figure` as {"model", "ns", "fids", "fid_inf", "slope"} (arrays)."""
    if not isinstance(c, Mapping):
        raise InputError(f"curves[{i}] must be a mapping, got {type(c).__name__}")
    missing = [k for k in ("model", "ns", "fids", "fid_inf", "slope") if k not in c]
    if missing:
        raise InputError(f"curves[{i}]: missing field(s) {missing}")
    model = c["model"]
    if not isinstance(model, str) or not model:
        raise InputError(f"curves[{i}]: field 'model' must be a non-empty string, got {model!r}")
    where = f"curves[{i}] ({model!r}): field"
    ns = np.asarray(c["ns"], dtype=float)
    fids = np.asarray(c["fids"], dtype=float)
    if ns.ndim != 1 or ns.size < 1 or not np.all(np.isfinite(ns)) or np.any(ns < 1) or np.any(ns % 1):
        raise InputError(f"{where} 'ns' must be a non-empty list of sample sizes N >= 1, got {c['ns']!r}")
    if fids.shape != ns.shape:
        raise InputError(f"{where} 'fids' has {fids.size} values but 'ns' has {ns.size}; "
                         "they must have the same length")
    fid_inf, slope = _number(c["fid_inf"], f"{where} 'fid_inf'"), _number(c["slope"], f"{where} 'slope'")
    if np.isnan(fids).any():
        log.warning("%s: skipping %d NaN FID point(s)", model, int(np.isnan(fids).sum()))
    return {"model": model, "ns": ns, "fids": fids, "fid_inf": fid_inf, "slope": slope}


def _n_ticks(ns: np.ndarray, xmax: float) -> tuple[list[float], list[str]]:
    """Top-axis ticks at 1/N (N = ∞ at 0 and a thinned set of the sizes used), labelled with N."""
    kept: list[float] = []
    for x in sorted({1.0 / n for n in ns}, reverse=True):  # smallest N first
        if x > 0.06 * xmax and all(k - x > 0.09 * xmax for k in kept):
            kept.append(x)
    pos = [0.0, *sorted(kept)]
    return pos, ["∞", *(f"{round(1 / x):d}" for x in pos[1:])]


def _legend_label(c: Mapping) -> str:
    ok = np.isfinite(c["fids"])
    label = f"{c['model']}: FID∞ = {c['fid_inf']:.3g}" if math.isfinite(c["fid_inf"]) else \
        f"{c['model']}: FID∞ = n/a"
    if ok.any():
        j = int(np.argmax(np.where(ok, c["ns"], -1)))
        label += f"  (FID at N = {int(c['ns'][j])}: {c['fids'][j]:.3g})"
    return label


def _draw_curve(ax: Any, c: Mapping, color: str, ref: bool, xmax: float) -> Any:
    """Points, fitted line and FID∞ star of one curve; returns the legend proxy handle."""
    from matplotlib.lines import Line2D

    ls, marker = ("--", "s") if ref else ("-", "o")
    ok = np.isfinite(c["fids"])
    ax.plot(1.0 / c["ns"][ok], c["fids"][ok], marker=marker, linestyle="none", color=color,
            markersize=5, alpha=0.85, gid=f"points:{c['model']}")
    if math.isfinite(c["fid_inf"]) and math.isfinite(c["slope"]):
        x = np.array([0.0, xmax])
        ax.plot(x, c["fid_inf"] + c["slope"] * x, linestyle=ls, color=color, linewidth=1.4,
                gid=f"fit:{c['model']}")
        ax.plot([0.0], [c["fid_inf"]], marker="*", markersize=15, color=color, markeredgecolor="k",
                markeredgewidth=0.8, linestyle="none", zorder=5, clip_on=False, gid=f"fid_inf:{c['model']}")
    return Line2D([], [], color=color, linestyle=ls, marker=marker, markersize=5)


def _build_fid_vs_n(curves: Sequence[Mapping], *, title: str, protocol_note: str) -> Any:
    """The FID-against-1/N figure (one axes); see :func:`fid_vs_n_figure`."""
    from matplotlib.ticker import MaxNLocator

    if not curves:
        raise InputError("no FID-against-N curves given (curves is empty); "
                         "each needs 'model', 'ns', 'fids', 'fid_inf', 'slope'")
    checked = [_check_curve(i, c) for i, c in enumerate(curves)]
    all_ns = np.concatenate([c["ns"] for c in checked])
    xmax = 1.08 / all_ns.min()
    fig, ax = pyplot().subplots(figsize=(10, 4.8), layout="constrained")
    handles, labels, k = [], [], 0
    for c in checked:
        ref = c["model"].strip().lower() == _REFERENCE
        color = "0.35" if ref else f"C{k % 10}"
        k += not ref
        handles.append(_draw_curve(ax, c, color, ref, xmax))
        labels.append(_legend_label(c))
    ax.axvline(0.0, color="0.6", linewidth=0.8, zorder=0)
    ax.set_xlim(-0.035 * xmax, xmax)
    ax.xaxis.set_major_locator(MaxNLocator(7))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4), useMathText=True)
    ax.set_xlabel("1 / N   (N = number of generated samples in the FID)")
    ax.set_ylabel("FID")
    ax.grid(alpha=0.3)
    top = ax.secondary_xaxis("top")
    top.set_xticks(*_n_ticks(all_ns, xmax))
    top.set_xlabel("N", fontsize=9, labelpad=2)
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
              title="★ at 1/N = 0: FID∞\n(Chong & Forsyth 2020)", title_fontsize=8, alignment="left")
    _header(fig, title, protocol_note)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    return fig


def fid_vs_n_figure(curves: Sequence[Mapping], out: str | os.PathLike, *, title: str,
                    protocol_note: str) -> Path:
    """FID against 1/N per model, with the line ``FID = FID∞ + slope / N`` and FID∞ starred at 1/N = 0.

    FID∞ of Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them",
    CVPR 2020. Each curve: ``{"model", "ns" (sample sizes N), "fids" (FID at each N), "fid_inf",
    "slope"}`` (as :func:`eval.fidelity.fid_infinity` returns, plus the model name). The top axis
    shows N. A ``"reference"`` curve (real vs real) is grey and dashed; NaN FIDs are skipped; a
    NaN ``fid_inf`` or ``slope`` draws the points only. ``protocol_note`` goes under the title.
    Raises :class:`InputError` for an empty ``curves`` or a curve with a missing or bad field.
    """
    return _save(_build_fid_vs_n(curves, title=title, protocol_note=protocol_note), out)


def _check_pair(i: int, p: Mapping) -> dict[str, Any]:
    """One pair of :func:`nearest_figure`, checked; volumes as float arrays."""
    if not isinstance(p, Mapping):
        raise InputError(f"pairs[{i}] must be a mapping, got {type(p).__name__}")
    missing = [k for k in ("fake_name", "train_name", "fake", "train", "distance", "space") if k not in p]
    if missing:
        raise InputError(f"pairs[{i}]: missing field(s) {missing}")
    out: dict[str, Any] = {}
    for key in ("fake_name", "train_name", "space"):
        if not isinstance(p[key], str) or not p[key]:
            raise InputError(f"pairs[{i}]: field {key!r} must be a non-empty string, got {p[key]!r}")
        out[key] = p[key]
    for key in ("fake", "train"):
        vol = np.asarray(p[key], dtype=float)
        if vol.ndim != 3 or min(vol.shape) < 1:
            raise InputError(f"pairs[{i}] ({p['fake_name']!r}): field {key!r} must be a 3D volume "
                             f"(D, H, W), got shape {vol.shape}")
        out[key] = vol
    out["distance"] = _number(p["distance"], f"pairs[{i}] ({p['fake_name']!r}): field 'distance'")
    return out


def _subtitle(note: str, n_pairs: int, n_generated: int | None, threshold: float | None) -> str:
    """``protocol_note · k of N generated volumes below the threshold · threshold d < t``."""
    parts = [note] if note else []
    if n_generated is not None:
        parts.append(f"{n_pairs} of {n_generated} generated volumes below the threshold")
    if threshold is not None:
        parts.append(f"threshold d < {threshold:.4g}")
    return "  ·  ".join(parts)


def _short(name: str, width: int = 38) -> str:
    """``name`` cut to its last ``width`` characters (a leading ``…``) so row labels fit the margin."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def _draw_pair_row(fig: Any, gs: Any, r: int, p: Mapping) -> None:
    """Generated (columns 0-2) and nearest training (4-6) central slices of one pair, row label."""
    cols = (0, 1, 2, 4, 5, 6)
    slices = mid_slices(p["fake"]) + mid_slices(p["train"])
    for k, (c, sl) in enumerate(zip(cols, slices, strict=True)):
        ax = fig.add_subplot(gs[r, c])
        ax.imshow(sl, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_anchor("N")  # images of a row top-aligned whatever their aspect
        if r == 0:
            ax.set_title(f"{'generated' if k < 3 else 'nearest training'}\n{PLANES[k % 3]}", fontsize=8)
        if k == 0:
            names = f"{_short(p['fake_name'])}\n→ {_short(p['train_name'])}"
            label = f"{names}\nd = {p['distance']:.4g}\n{p['space']}"
            ax.set_ylabel(label, fontsize=7.5, rotation=0, ha="right", va="center", labelpad=6)


def _build_nearest(pairs: Sequence[Mapping], *, title: str, protocol_note: str, max_rows: int = 8,
                   n_generated: int | None = None, threshold: float | None = None,
                   n_total: int | None = None) -> Any:
    """The nearest-training-volume figure; see :func:`nearest_figure`."""
    if not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    checked = [_check_pair(i, p) for i, p in enumerate(pairs)]
    if n_total is not None and n_total < len(checked):
        raise InputError(f"n_total must be >= the {len(checked)} pairs given, got {n_total}")
    total = len(checked) if n_total is None else n_total
    plt = pyplot()
    note = _subtitle(protocol_note, total, n_generated, threshold)
    if not checked:
        fig = plt.figure(figsize=(8, 2.6))
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        of = f"0 of {n_generated}" if n_generated is not None else "no"
        ax.text(0.5, 0.45, f"no suspected memorisation\n({of} generated volumes below the threshold)",
                ha="center", va="center", fontsize=12, color="darkgreen", transform=ax.transAxes)
        _header(fig, title, note)
        return fig
    shown = checked[:max_rows]
    n = len(shown)
    more = total - n
    fig = plt.figure(figsize=(11, 1.55 * n + 1.5 + 0.3 * (more > 0)))
    bottom = 0.3 / fig.get_figheight() if more else 0.0
    gs = fig.add_gridspec(n, 7, width_ratios=[1, 1, 1, 0.15, 1, 1, 1], left=0.2, right=0.99,
                          top=1 - 1.1 / fig.get_figheight(), bottom=bottom + 0.05 / fig.get_figheight(),
                          wspace=0.05, hspace=0.08)
    for r, p in enumerate(shown):
        _draw_pair_row(fig, gs, r, p)
    if more:
        fig.text(0.5, 0.12 / fig.get_figheight(), f"+{more} more, see memorisation.csv", ha="center",
                 va="bottom", fontsize=9, color="firebrick", gid="truncated")
    _header(fig, title, note)
    return fig


def nearest_figure(pairs: Sequence[Mapping], out: str | os.PathLike, *, title: str, protocol_note: str,
                   max_rows: int = 8, n_generated: int | None = None, threshold: float | None = None,
                   n_total: int | None = None) -> Path:
    """Suspected copies beside their nearest training volumes, as three central slices each.

    Each pair: ``{"fake_name", "train_name", "fake" (D, H, W) in [0, 1], "train" (D, H, W),
    "distance", "space"}`` (``"feature"`` or ``"voxel (1-NCC)"``), e.g. the suspects of
    :func:`eval.memorisation.memorisation_report` with their volumes: the visual check of the
    nearest-neighbour memorisation tests of generative-model papers (Akbar et al. 2023; Meehan et
    al. 2020 for the held-out threshold). One row per pair, at most ``max_rows`` (then the figure
    says how many more are in ``memorisation.csv``); one [0, 1] grey scale throughout. No pairs: a
    figure that says no memorisation was suspected. ``n_generated`` and ``threshold``, when given,
    go into the subtitle with ``protocol_note``. ``n_total``: how many suspects there are when
    only the first few ``pairs`` are given (the rest are counted, not drawn; None = len(pairs)).
    Raises :class:`InputError` for a bad pair field.
    """
    return _save(_build_nearest(pairs, title=title, protocol_note=protocol_note, max_rows=max_rows,
                                n_generated=n_generated, threshold=threshold, n_total=n_total), out)
