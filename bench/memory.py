"""Peak resident memory of a block of code, for the benchmarks in ``bench/``.

``resource.getrusage(...).ru_maxrss`` is a process-wide peak that cannot be reset, so it cannot
attribute memory to one variant when several run in one process. :class:`PeakRSS` instead polls
the resident set size (``VmRSS`` in ``/proc/self/status``, Linux) from a background thread while
the block runs and reports the peak above the level at entry. Polling every 5 ms costs a few
microseconds per poll (the GIL is released inside torch kernels); a peak shorter than the period
can be missed, so the value is a lower bound. Where ``/proc`` is absent the values are NaN.

:func:`levels_figure` draws the rows of ``bench/bench_train_step.py --suite levels``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["rss_mb", "PeakRSS", "levels_figure", "GPU_LINES_GB"]

#: Horizontal reference lines of :func:`levels_figure`: the A100 40 GB the paper used, an 80 GB GPU.
GPU_LINES_GB = (40.0, 80.0)


def rss_mb() -> float:
    """Current resident set size of this process in MiB (NaN where ``/proc`` is unavailable)."""
    from wdm.profiling import current_rss_gb

    gb = current_rss_gb()
    return float("nan") if gb is None else gb * 1e9 / 2**20


class PeakRSS:
    """Context manager: ``with PeakRSS() as m: ...`` then ``m.peak_mb`` (absolute, MiB) and
    ``m.delta_mb`` (peak minus the RSS at entry, MiB)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.start_mb = float("nan")
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def delta_mb(self) -> float:
        """Peak RSS above the level at entry, MiB."""
        return self.peak_mb - self.start_mb


def _series(label: str) -> str:
    """The line a levels row belongs to: its label without the checkpointing mark."""
    return label.replace(" +ckpt", "")


def levels_figure(rows: Sequence[dict[str, Any]], out: str | os.PathLike,
                  memory_limit_gib: float | None = None) -> Path:
    """Peak memory (process peak RSS, GB) against resolution, one colour per model and level,
    training solid and sampling dashed; checkpointed points hollow, an OOM a red cross at its
    counted need (``count_gb``, else at the cap); the paper's sampling values as stars in the
    colour of their series, with the value; lines at 40 GB, 80 GB and the cap; the legend beside
    the axes so that it hides no point. Written atomically with the project's Agg backend."""
    from matplotlib.ticker import NullFormatter

    from eval.plotting import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    cap = memory_limit_gib * 2**30 / 1e9 if memory_limit_gib else None
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(_series(r["label"]) for r in rows))}
    for name, colour in colours.items():
        for mode, style in (("train", "-"), ("sample", "--")):
            pts = sorted((int(r["resolution"]), float(r["peak_memory_gb"]), bool(r["checkpointing"]))
                         for r in rows if _series(r["label"]) == name and r["mode"] == mode
                         and r["status"] == "ok" and r.get("peak_memory_gb"))
            if not pts:
                continue
            xs, ys, ck = zip(*pts, strict=True)
            ax.plot(xs, ys, style, color=colour, label=f"{name} {mode}")
            for x, y, c in pts:
                ax.plot(x, y, "o", color=colour, mfc="white" if c else colour)
    _levels_marks(ax, rows, cap, colours)
    for gb in GPU_LINES_GB:
        ax.axhline(gb, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"{gb:g} GB GPU", (0.01, gb), xycoords=("axes fraction", "data"), fontsize=7,
                    va="bottom", color="grey")
    if cap:
        ax.axhline(cap, color="k", linestyle="--", linewidth=1, label=f"cap {memory_limit_gib:g} GiB")
    res = sorted({int(r["resolution"]) for r in rows}) or [128]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(res, [f"{r}³" for r in res])
    ax.set_xlim(res[0] / 1.3, res[-1] * 1.3)
    ticks = (0.5, 1, 2, 4, 6, 10, 20, 40, 80)  # plain GB labels on the log axis
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("volume side R (R³ voxels)")
    ax.set_ylabel("peak memory (GB, process peak RSS on CPU)")
    ax.set_title("Training step (solid) and sampling step (dashed), batch 1; hollow: checkpointing",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return save_png(fig, out, dpi=120)


def _levels_marks(ax: Any, rows: Sequence[dict[str, Any]], cap: float | None,
                  colours: dict[str, str]) -> None:
    """OOM crosses (at the counted need, else the cap) and the paper's sampling values (stars in
    the series' colour, black edge, the value beside them)."""
    first_oom = first_paper = True
    stars: dict[int, int] = {}  # stars drawn so far at each resolution: labels alternate sides
    for r in rows:
        if r["status"] == "oom":
            y = r.get("count_gb") or cap or 1.0
            ax.plot(int(r["resolution"]), float(y), "x", color="red", markersize=10, mew=2.5,
                    label="OOM (at its counted need)" if first_oom else None)
            ax.annotate(f"{r['label']} {r['mode']}", (int(r["resolution"]), float(y)), fontsize=7,
                        color="red", xytext=(5, 3), textcoords="offset points")
            first_oom = False
        if r.get("paper_gb"):
            x, y = int(r["resolution"]), float(r["paper_gb"])
            ax.plot(x, y, "*", color=colours.get(_series(r["label"]), "k"), mec="k", markersize=11,
                    label="paper, sampling (cuda max allocated)" if first_paper else None)
            right = stars.get(x, 0) % 2
            stars[x] = stars.get(x, 0) + 1
            ax.annotate(f"{y:g}", (x, y), fontsize=7, xytext=(8 if right else -8, 0),
                        textcoords="offset points", ha="left" if right else "right", va="center")
            first_paper = False
