"""Figure of the metric sanity suite (:mod:`eval.sanity`): which metric sees which defect.

A grid read at a glance: one row per metric, one column per corruption, plus a last column with
the real-vs-real curve against the test-set size N (the small-N bias). Each cell shows the metric
against the corruption strength, one line per feature extractor (voxel-space metrics: one line
"voxel space"), the real-vs-real interval of each line shaded, and Spearman's ρ of each line
written in the cell. The cell's frame gives the verdict of its best line: green = monotone
(|ρ| >= 0.9) and leaves the interval in the direction of a worse model (it detects the defect);
orange = monotone or leaves the interval, not both (or the wrong way, as FID under memorisation,
Kynkäänniemi et al. 2023 / Jayasumana et al. 2024); red = neither; grey = not computed.
Matplotlib (Agg), written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval.plotting import pyplot, save_png
from eval.sanity import CURVE, RADIOMICS, VOXELS
from wdm.io import InputError

__all__ = ["sanity_figure", "verdict"]

log = logging.getLogger(__name__)

_DPI = 100
_COLOURS = ("tab:blue", "tab:purple", "tab:brown", "tab:olive", "tab:cyan", "tab:pink")
_FIXED = {VOXELS: "0.25", RADIOMICS: "tab:red"}
_RELATIVE = ("fid", "kid", "frd")
_VERDICT = {"detects": "#2ca02c", "partial": "#ff7f0e", "blind": "#d62728", "n/a": "0.7"}
_METRIC_NAMES = {"fid": "FID", "kid": "KID", "precision": "precision", "recall": "recall",
                 "density": "density", "coverage": "coverage", "ms_ssim": "MS-SSIM",
                 "memorisation": "memorisation\n(fraction flagged)", "frd": "FRD"}


def verdict(rows: Sequence[Mapping[str, Any]]) -> str:
    """The verdict of one line's rows (one summary, repeated per strength): detects / partial /
    blind / n/a (no finite value beyond the clean one)."""
    r = rows[0]
    finite = [x for x in rows if _num(x.get("value")) is not None]
    if len(finite) < 2:
        return "n/a"
    if r.get("detects") is True or r.get("detects") == "True":
        return "detects"
    flags = [r.get(k) in (True, "True") for k in ("monotone", "leaves_interval")]
    return "partial" if any(flags) else "blind"


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _group(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], list[Mapping[str, Any]]]:
    out: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["metric"], r["corruption"], r["extractor"]), []).append(r)
    for v in out.values():
        v.sort(key=lambda r: float(r["strength"]))
    return out


def _layout(groups: Mapping[tuple[str, str, str], list]) -> tuple[list[str], list[str], list[str]]:
    """Metrics with any finite value, corruptions (the curve last) and extractors, in row order."""
    metrics, corruptions, extractors = [], [], []
    for (m, c, e), rows in groups.items():
        if any(_num(r.get("value")) is not None for r in rows) and m not in metrics:
            metrics.append(m)
        if c not in corruptions and c != CURVE:
            corruptions.append(c)
        if e not in extractors and any(_num(r.get("value")) is not None for r in rows):
            extractors.append(e)
    order = list(_METRIC_NAMES)
    metrics.sort(key=lambda m: order.index(m) if m in order else len(order))
    return metrics, corruptions + ([CURVE] if any(k[1] == CURVE for k in groups) else []), extractors


def _colour(extractor: str, extractors: Sequence[str]) -> str:
    if extractor in _FIXED:
        return _FIXED[extractor]
    learned = [e for e in extractors if e not in _FIXED]
    return _COLOURS[learned.index(extractor) % len(_COLOURS)]


def _draw_line(ax: Any, rows: Sequence[Mapping[str, Any]], colour: str, curve: bool,
               relative: bool) -> None:
    """One line and its band; ``relative``: as (value - clean) / band width (lines of different
    extractors on one scale)."""
    x = np.array([float(r["strength"]) for r in rows])
    y = np.array([_num(r.get("value")) if _num(r.get("value")) is not None else np.nan for r in rows])
    sd = np.array([_num(r.get("value_sd")) or 0.0 for r in rows])
    lo, hi = _num(rows[0].get("real_low")), _num(rows[0].get("real_high"))
    clean = _num(rows[0].get("real_value"))
    if relative and None not in (lo, hi, clean) and hi > lo:
        width = hi - lo
        y, sd, lo, hi = (y - clean) / width, sd / width, (lo - clean) / width, (hi - clean) / width
    if lo is not None and hi is not None:
        ax.axhspan(lo, hi, color=colour, alpha=0.13, lw=0)
    ok = np.isfinite(y)
    ax.plot(x[ok], y[ok], "-o", color=colour, ms=2.5, lw=1.2)
    if curve:
        ax.fill_between(x[ok], (y - sd)[ok], (y + sd)[ok], color=colour, alpha=0.25, lw=0)


def _cell(ax: Any, lines: Mapping[str, Sequence[Mapping[str, Any]]], extractors: Sequence[str],
          curve: bool, relative: bool) -> None:
    """One (metric, corruption) cell: the lines, ρ of each, the frame coloured by the best verdict."""
    rank = list(_VERDICT)
    best = "n/a"
    texts = []
    for e, rows in lines.items():
        colour = _colour(e, extractors)
        _draw_line(ax, rows, colour, curve, relative)
        v = verdict(rows)
        best = min(best, v, key=rank.index)
        rho = _num(rows[0].get("spearman"))
        mark = {"detects": "✓", "partial": "~", "blind": "✗"}.get(v, "")
        texts.append((f"ρ={rho:+.2f} {mark}" if rho is not None else f"ρ=n/a {mark}", colour))
    for i, (t, colour) in enumerate(texts):
        ax.text(0.03, 0.96 - 0.13 * i, t, transform=ax.transAxes, fontsize=6.5, color=colour,
                va="top", ha="left", bbox={"fc": "white", "ec": "none", "alpha": 0.6, "pad": 0.5})
    for side in ax.spines.values():
        side.set_edgecolor(_VERDICT[best])
        side.set_linewidth(2.2 if best != "n/a" else 1.0)
    ax.tick_params(labelsize=6, length=2, pad=1)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3), useMathText=True)
    ax.yaxis.get_offset_text().set_fontsize(5.5)


def _legend(fig: Any, extractors: Sequence[str], labels: Mapping[str, str]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=_colour(e, extractors), marker="o", ms=3,
                      label=labels.get(e, e)) for e in extractors]
    handles += [Patch(fc="white", ec=c, lw=2, label={"detects": "detects (monotone, leaves band, "
                      "worse)", "partial": "partial / wrong way", "blind": "blind",
                      "n/a": "not computed"}[k]) for k, c in _VERDICT.items()]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 4), fontsize=7.5,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.62 / fig.get_figheight()))


def sanity_figure(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike, *, title: str,
                  labels: Mapping[str, str] | None = None, note: str | None = None) -> Path:
    """Draw the sanity grid of ``rows`` (:data:`eval.sanity.COLUMNS`, e.g. read back from
    sanity.csv) into the PNG ``out`` (atomic); ``labels``: extractor -> legend text; ``note``:
    a line under the title (e.g. why FRD is missing). Returns ``out``."""
    if not rows:
        raise InputError("sanity figure: no rows to draw")
    groups = _group(rows)
    metrics, corruptions, extractors = _layout(groups)
    if not metrics:
        raise InputError("sanity figure: no metric has a finite value")
    labels = {VOXELS: "voxel space", RADIOMICS: "radiomics (FRD)", **(labels or {})}
    plt = pyplot()
    w, h = 1.75 * len(corruptions) + 0.9, 1.35 * len(metrics) + 1.9
    fig, axes = plt.subplots(len(metrics), len(corruptions), figsize=(w, h), squeeze=False)
    for i, m in enumerate(metrics):
        # unbounded distances of several extractors differ in scale: drawn in band widths
        relative = m in _RELATIVE and len({k[2] for k in groups if k[0] == m} & set(extractors)) > 1
        for j, c in enumerate(corruptions):
            ax = axes[i][j]
            lines = {e: groups[(m, c, e)] for e in extractors if (m, c, e) in groups}
            _cell(ax, lines, extractors, c == CURVE, relative)
            if i == 0:
                unit = next(iter(lines.values()))[0].get("unit") if lines else ""
                ax.set_title(f"{c}\n({unit})" if c != CURVE else "real vs real\n(against N)",
                             fontsize=7.5, color="0.1" if c != CURVE else "tab:green")
            if j == 0:
                name = _METRIC_NAMES.get(m, m)
                ax.set_ylabel(f"{name}\n(Δ clean / band width)" if relative else name, fontsize=8)
    first = rows[0]
    sub = (f"{first.get('n_test')} test vs {first.get('n_train')} train volumes · seed "
           f"{first.get('seed')} · band = real-vs-real interval (bootstrap of the clean test set)")
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / h)
    fig.text(0.5, 1 - 0.45 / h, sub + (f" · {note}" if note else ""), ha="center", fontsize=7.5,
             color="0.3")
    _legend(fig, extractors, labels)
    fig.subplots_adjust(left=0.9 / w, right=1 - 0.1 / w, bottom=0.3 / h, top=1 - 1.6 / h,
                        wspace=0.35, hspace=0.3)
    out = save_png(fig, out, dpi=_DPI)
    log.info("wrote %s (%d metrics x %d columns)", out, len(metrics), len(corruptions))
    return out
