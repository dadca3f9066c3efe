"""Memory against resolution: probe results (:mod:`wdm.probe`) -> a CSV and a two-panel figure.

The figure has one panel per mode (training step, sampling), peak memory in GB against
the volume side R on log-log axes, one line per model (and option set). A probe that ran out of
memory is a red cross at the top of the panel, labelled with the model; the memory limit the probes
ran under, if any, is a dashed horizontal line. Peak memory is the probe's ``peak_memory_gb``: the
child process's peak RSS on CPU (interpreter and libraries included, about 0.3 GB), the peak of
``torch.cuda.max_memory_allocated`` on a GPU; the CSV also holds ``peak_minus_baseline_gb``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eval.plotting import pyplot, save_png
from wdm.io import InputError, atomic_path, read_json

__all__ = ["CSV_COLUMNS", "series_label", "load_profiles", "profile_rows", "write_memory_csv",
           "memory_figure"]

CSV_COLUMNS = ("model", "stage", "label", "mode", "resolution", "batch_size", "status", "peak_memory_gb",
               "rss_baseline_gb", "peak_minus_baseline_gb", "peak_memory_kind", "s_per_it",
               "s_per_volume", "n_parameters", "checkpointing", "precision", "memory_limit_gb",
               "device", "error", "note")
_MODES = ("train", "sample")
_TITLES = {"train": "training step", "sample": "sampling"}
_WHAT = "probe JSON written by 'wdm-bench profile'"


def series_label(row: dict[str, Any]) -> str:
    """``model[-stage][ +ckpt][ bf16]``: one line of the figure per label."""
    label = str(row.get("model"))
    if row.get("stage"):
        label += f"-{row['stage']}"
    opts = row.get("options") or {}
    if row.get("checkpointing", opts.get("checkpointing")):
        label += " +ckpt"
    if row.get("precision", opts.get("precision")) == "bf16":
        label += " bf16"
    return label


def load_profiles(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """The probe JSON files (``wdm-bench profile``), parsed and checked.

    A missing, non-JSON or foreign file (no ``model``, a ``mode`` other than train/sample, a
    ``resolution`` that is not a positive integer, a ``peak_memory_gb`` that is not a number) is an
    :class:`~wdm.io.InputError` naming it.
    """
    return [_check_profile(Path(p), read_json(p, _WHAT)) for p in paths]


def _check_profile(path: Path, prof: dict[str, Any]) -> dict[str, Any]:
    """``prof`` if it has what :func:`profile_rows` and :func:`memory_figure` read."""
    def bad(field: str, want: str) -> InputError:
        return InputError(f"{path}: field {field!r} is {prof.get(field)!r}, expected {want} "
                          f"(a {_WHAT})")

    if not isinstance(prof.get("model"), str) or not prof["model"]:
        raise bad("model", "a model name")
    if prof.get("mode") not in _MODES:
        raise bad("mode", "'train' or 'sample'")
    res = prof.get("resolution")
    if not isinstance(res, int) or isinstance(res, bool) or res < 1:
        raise bad("resolution", "a positive integer")
    if not isinstance(prof.get("status"), str):
        raise bad("status", "a status string such as 'ok' or 'oom'")
    peak = prof.get("peak_memory_gb")
    if peak is not None and (not isinstance(peak, (int, float)) or isinstance(peak, bool) or peak < 0):
        raise bad("peak_memory_gb", "a number >= 0 or null")
    opts = prof.get("options") or {}
    if not isinstance(opts, dict):
        raise bad("options", "a mapping or null")
    limit = opts.get("memory_limit_gb")
    if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool)):
        raise InputError(f"{path}: field 'options.memory_limit_gb' is {limit!r}, expected a number "
                         f"or null (a {_WHAT})")
    return prof


def profile_rows(profiles: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat rows (:data:`CSV_COLUMNS`) sorted by label, mode and resolution."""
    rows = []
    for p in profiles:
        opts = p.get("options") or {}
        row = {c: p.get(c) for c in CSV_COLUMNS}
        row.update(label=series_label(p), checkpointing=bool(opts.get("checkpointing")),
                   precision=opts.get("precision", "fp32"), memory_limit_gb=opts.get("memory_limit_gb"))
        rows.append(row)
    return sorted(rows, key=lambda r: (r["label"], str(r["mode"]), int(r["resolution"])))


def write_memory_csv(rows: Sequence[dict[str, Any]], out: str | os.PathLike) -> Path:
    """Write ``rows`` (from :func:`profile_rows`) as CSV, atomically."""
    import pandas as pd

    out = Path(out)
    with atomic_path(out) as tmp:
        pd.DataFrame(list(rows), columns=list(CSV_COLUMNS)).to_csv(tmp, index=False, float_format="%.6g")
    return out


def _limit_line(rows: Sequence[dict[str, Any]], memory_limit_gb: float | None
                ) -> tuple[float | None, float | None]:
    """``(limit in GiB, limit in GB)`` of the dashed line: the argument, else the rows' largest."""
    if memory_limit_gb is None:
        limits = [r["memory_limit_gb"] for r in rows if r.get("memory_limit_gb")]
        memory_limit_gb = max(limits) if limits else None
    limit = memory_limit_gb * 2**30 / 1e9 if memory_limit_gb else None  # GiB -> GB
    return memory_limit_gb, limit


def _draw_oom_marks(ax: Any, mrows: Sequence[dict[str, Any]], top: float) -> None:
    """One red cross per resolution at which a probe of this panel ran out of memory."""
    ooms: dict[int, list[str]] = {}
    for r in mrows:
        if r["status"] == "oom":
            ooms.setdefault(int(r["resolution"]), []).append(r["label"])
    for k, (res, labs) in enumerate(sorted(ooms.items())):
        ax.plot(res, top, marker="x", color="red", markersize=10, mew=2.5, linestyle="none",
                label="OOM" if k == 0 else None)
        ax.annotate("\n".join(sorted(labs)), (res, top), fontsize=7, color="red", ha="center",
                    va="top", xytext=(0, -9), textcoords="offset points")


def _draw_panel(ax: Any, mode: str, rows: Sequence[dict[str, Any]], ok: Sequence[dict[str, Any]],
                colors: dict[str, str], ylim: tuple[float, float],
                limits: tuple[float | None, float | None], resolutions: Sequence[int]) -> None:
    """One panel (``mode``): a line per label through its ok probes, OOM crosses, the limit line.

    ``ylim`` is ``(lo, hi)``; OOMs are drawn at ``hi / 1.5``. ``limits`` is ``(GiB, GB)`` from
    :func:`_limit_line`.
    """
    lo, hi = ylim
    memory_limit_gb, limit = limits
    mrows = [r for r in rows if r["mode"] == mode]
    for lab in colors:
        pts = sorted((int(r["resolution"]), float(r["peak_memory_gb"])) for r in mrows
                     if r["label"] == lab and r in ok)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", color=colors[lab], label=lab)
    _draw_oom_marks(ax, mrows, hi / 1.5)
    if limit:
        ax.axhline(limit, color="k", linestyle="--", linewidth=1,
                   label=f"memory limit {memory_limit_gb:g} GiB")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(resolutions, [f"{s}³" for s in resolutions])
    ax.set_xlim(resolutions[0] / 1.4, resolutions[-1] * 1.4)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("volume side R (R³ voxels)")
    ax.set_title(_TITLES[mode])
    ax.grid(True, which="both", alpha=0.3)
    if not mrows:
        ax.text(0.5, 0.5, "no probes", transform=ax.transAxes, ha="center", color="grey")


def _finish_figure(fig: Any, axes: Sequence[Any], rows: Sequence[dict[str, Any]],
                   ok: Sequence[dict[str, Any]], title: str | None) -> None:
    """Y label, the shared legend, the list of probes not measured, the title and the layout."""
    kinds = sorted({str(r.get("peak_memory_kind")) for r in ok})
    axes[0].set_ylabel("peak memory (GB" + (", process RSS)" if "process_peak_rss" in kinds else ")"))
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines() if not h.get_label().startswith("_")}
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(len(handles), 6),
               fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.95))
    skipped = sorted({f"{r['label']} {r['mode']} {r['resolution']}³: {r['status']}" for r in rows
                      if r["status"] not in ("ok", "oom")})
    if skipped:
        fig.text(0.01, 0.01, "not measured: " + "; ".join(skipped), fontsize=6, color="grey")
    batches = ", ".join(sorted({str(r.get("batch_size")) for r in rows}))
    fig.suptitle(title or f"Peak memory against resolution (batch {batches})", y=0.99, fontsize=10)
    n_rows = -(-len(handles) // 6)
    fig.tight_layout(rect=(0, 0.03, 1, 0.93 - 0.05 * n_rows))


def memory_figure(rows: Sequence[dict[str, Any]], out: str | os.PathLike, *,
                  memory_limit_gb: float | None = None, title: str | None = None) -> Path:
    """Draw peak memory against resolution (two panels, train and sample) into a PNG.

    Args:
        rows: :func:`profile_rows` output (or the probe dicts themselves).
        out: PNG path (written atomically).
        memory_limit_gb: dashed limit line in GiB (default: the rows' ``memory_limit_gb``, if any).
    """
    plt = pyplot()
    rows = [r if "label" in r else profile_rows([r])[0] for r in rows]
    memory_limit_gb, limit = _limit_line(rows, memory_limit_gb)
    ok = [r for r in rows if r["status"] == "ok" and r.get("peak_memory_gb")]
    vals = [float(r["peak_memory_gb"]) for r in ok] + ([limit] if limit else [])
    ylim = (min(vals, default=0.1) / 2, max(vals, default=1.0) * 12)
    resolutions = sorted({int(r["resolution"]) for r in rows}) or [32]
    labels = sorted({r["label"] for r in rows})
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for ax, mode in zip(axes, _MODES, strict=True):
        _draw_panel(ax, mode, rows, ok, colors, ylim, (memory_limit_gb, limit), resolutions)
    _finish_figure(fig, axes, rows, ok, title)
    return save_png(fig, out, dpi=110)
