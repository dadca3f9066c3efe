"""The ``--suite levels`` rows of ``bench/bench_train_step.py``: a training step and a sampling step
side by side per model, wavelet level and resolution (the options and the rows are described in
that module's docstring; run it through ``python bench/bench_train_step.py --suite levels``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, REPO, peak_gb_suffix, print_rows, read_rows, write_rows  # noqa: E402
from wdm.probe import probe_isolated  # noqa: E402

log = logging.getLogger("bench.train_step")


# -- the levels suite: training step and sampling step side by side (--suite levels) ---------------
#: (label, model, network preset, diffusion.levels, resolution, checkpointing); each row runs a
#: training step and a sampling step (one network evaluation + wavelet clipping + decoding, batch 1).
LEVEL_ROWS = (("wdm J=1", "wdm", "wdm-128", 1, 128, False),
              ("wdm J=1 +ckpt", "wdm", "wdm-256", 1, 256, True),
              ("wdm J=2", "wdm", "wdm-512", 2, 256, False),
              ("wdm J=2 +ckpt", "wdm", "wdm-512", 2, 512, True),
              ("wavunet J=1", "wdm", "wdm-128-wavunet", 1, 128, False),
              ("ddpm3d", "ddpm3d", "wdm-128", 0, 128, False))
LEVEL_MODES = ("train", "sample")
TINY_PRESETS = {"wdm-128-wavunet": "tiny-wavunet", "wdm-256-wavunet": "tiny-wavunet"}
#: The authors' sampling memory (torch.cuda.max_memory_allocated, GB); DESIGN.md section 1. WDM's
#: two values are the paper's; WavU-Net and 3D DDPM come from a second-hand transcription.
PAPER_SAMPLE_GB = {("wdm J=1", 128): (2.55, "paper"), ("wdm J=1 +ckpt", 256): (7.27, "paper"),
                   ("wavunet J=1", 128): (2.65, "paper table, unverified transcription"),
                   ("ddpm3d", 128): (6.51, "paper table, unverified transcription")}
MEMORY_NOTE = ("CPU peak RSS (interpreter and allocator included) is not the same quantity as the "
               "paper's torch.cuda.max_memory_allocated; alloc_peak_gb (CPU allocator bytes in use, "
               "from torch.profiler) is its counterpart, count_gb the activations autograd saves plus "
               "4x the parameter bytes (a lower bound; under checkpointing only what is saved "
               "outside the checkpointed blocks)")
LEVEL_COLUMNS = ("label", "mode", "resolution", "levels", "status", "s", "peak_memory_gb",
                 "peak_minus_baseline_gb", "alloc_peak_gb", "count_gb", "paper_gb", "flops_per_step",
                 "achieved_gflops", "efficiency", "efficiency_conv", "source")


def add_level_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--suite levels`` (training and sampling step per model and level)."""
    p.add_argument("--suite", choices=["train_step", "levels"], default="train_step",
                   help="train_step: the models against resolution (default); levels: training and "
                        "sampling step of LEVEL_ROWS -> memory_levels.csv and its figure")
    p.add_argument("--levels-rows", nargs="+", default=None, help="a subset of LEVEL_ROWS' labels")
    p.add_argument("--level-modes", nargs="+", choices=LEVEL_MODES, default=list(LEVEL_MODES))
    p.add_argument("--scale", type=int, default=1, help="divide every levels-row resolution (smoke)")
    p.add_argument("--reuse", default=None, help="train_step.csv whose training rows replace runs of "
                                                 "the --reuse-rows labels (counts still made)")
    p.add_argument("--reuse-rows", nargs="+", default=["wdm J=1 +ckpt", "ddpm3d"])
    p.add_argument("--keep", default=None, help="an earlier levels CSV whose --keep-rows are kept")
    p.add_argument("--keep-rows", nargs="+", default=[], help="LABEL:MODE rows taken from --keep")
    p.add_argument("--peak-n", type=int, default=4096, help="side of the peak-FLOP/s matmul")
    p.add_argument("--rescore", default=None, help="an earlier levels CSV: re-measure the peaks only and "
                                                   "recompute its efficiencies (written to --out)")


def level_config(model: str, preset: str, levels: int, resolution: int, ckpt: bool,
                 widths: str = "paper") -> tuple[dict, str]:
    """The run config of a levels-suite row: the paper config of its size (``wdm_512.yaml`` for two
    levels) with the row's preset, levels and checkpointing; batch 1."""
    name = f"{model}_{512 if levels == 2 else (256 if resolution > 128 else 128)}.yaml"
    src = REPO / "config" / "paper" / "models" / name
    cfg = yaml.safe_load(src.read_text())
    tiny = TINY_PRESETS.get(preset, "tiny") if widths == "tiny" else preset
    cfg.setdefault("network", {}).update(preset=tiny, use_checkpoint=ckpt)
    if model == "wdm":
        cfg.setdefault("diffusion", {})["levels"] = levels
    cfg.setdefault("training", {}).update(batch_size=1, device="auto")
    return cfg, str(src.relative_to(REPO))


def level_plan(labels: list[str] | None, modes: tuple[str, ...], scale: int) -> list[dict[str, Any]]:
    """The levels-suite rows to measure, in the order of ``labels`` (a subset of
    :data:`LEVEL_ROWS`; default all); ``scale`` divides every resolution, for smoke runs."""
    by = {r[0]: r for r in LEVEL_ROWS}
    bad = sorted(set(labels or []) - set(by))
    if bad:
        raise ValueError(f"unknown levels rows {bad}; allowed: {list(by)}")
    return [{"label": lab, "model": m, "preset": pre, "levels": lv, "resolution": res // scale,
             "paper_resolution": res, "checkpointing": ck, "mode": mode}
            for lab, m, pre, lv, res, ck in (by[b] for b in labels or by) for mode in modes]


def _reused(row: dict, csv: Path) -> dict[str, Any] | None:
    """The row's training measurement from an earlier ``train_step.csv`` (same model, size and
    checkpointing; wdm rows at one level only), or None."""
    if row["mode"] != "train" or row["levels"] > 1 or not csv.is_file():
        return None
    import pandas as pd

    df = pd.read_csv(csv)
    hit = df[(df["model"] == row["model"]) & (df["resolution"] == row["resolution"])
             & (df["checkpointing"] == row["checkpointing"]) & (df["precision"] == "fp32")]
    if not len(hit) or hit.iloc[0]["status"] not in ("ok", "oom"):
        return None
    old = hit.iloc[0].astype(object).where(hit.iloc[0].notna(), None).to_dict()
    out = {k: old.get(k) for k in ("status", "s_per_it", "s_per_it_all", "peak_memory_gb",
                                   "rss_baseline_gb", "peak_minus_baseline_gb", "n_parameters",
                                   "error", "wall_s")} | {"source": f"reused from {csv.name}"}
    counted = csv.with_name("activation_memory.csv")  # an OOM row's count, if made there
    if out["status"] == "oom" and not row["checkpointing"] and counted.is_file():
        cnt = pd.read_csv(counted)
        hit = cnt[(cnt["model"] == row["model"]) & (cnt["resolution"] == row["resolution"])]
        if len(hit):
            out.update(count_gb=float(hit.iloc[0]["estimate_gb"]),
                       count_saved_activations_gb=float(hit.iloc[0]["saved_activations_gb"]),
                       source=out["source"] + f"; count from {counted.name}")
    return out


def _child_counts(cfg: dict, resolution: int, count: bool) -> dict[str, Any]:
    """A training row's FLOPs from two small exact counts (``bench_flops.extrapolated_flops`` at
    the two smallest sizes the network takes) and, if ``count``, its activation count."""
    from bench.bench_flops import extrapolated_flops
    from wdm.activation_memory import count_training_memory
    from wdm.networks import build_network

    levels = cfg["diffusion"].get("levels", 1) if cfg["model"] == "wdm" else 0  # ddpm3d: voxels
    r1 = build_network(cfg["network"], 1, 1).downsample_factor * 2**levels
    out = extrapolated_flops(cfg, resolution, (r1, 2 * r1))
    if count:
        cnt = count_training_memory(cfg, resolution)
        out.update(count_gb=cnt["estimate_gb"], count_saved_activations_gb=cnt["saved_activations_gb"],
                   count_param_state_gb=cnt["param_state_gb"])
    return out


def _in_child(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` in a fresh spawned process (so this driver's memory stays small)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def _measure_level(row: dict, a: argparse.Namespace) -> dict[str, Any]:
    """One isolated probe of a levels-suite row: a training step with its allocation peak and
    activation count (FLOPs are counted apart: the counter raises a training step's peak), or a
    one-step sampling call with its FLOPs and allocation peak."""
    cfg, _ = level_config(row["model"], row["preset"], row["levels"], row["resolution"],
                          row["checkpointing"], a.widths)
    train = row["mode"] == "train"
    extra = {"count_memory": True} if train else {"sample_steps": 1, "count_flops": True}
    res = probe_isolated(cfg, row["resolution"], row["mode"], memory_limit_gb=a.memory_limit_gb,
                         threads=a.threads, batch_size=1, repeats=a.repeats, device=a.device,
                         checkpointing=row["checkpointing"], count_alloc=True, **extra)
    keep = ("status", "s_per_it", "peak_memory_gb", "rss_baseline_gb", "peak_minus_baseline_gb",
            "alloc_peak_gb", "alloc_optimizer_state_gb", "count_gb", "count_saved_activations_gb",
            "count_param_state_gb", "count_no_ckpt_gb", "flops_per_it", "s_generate_probe",
            "n_parameters", "device", "error", "wall_s", "note")
    out = {k: res.get(k) for k in keep} | {"source": "measured"}
    out["s_per_it_all"] = " ".join(f"{t:.4g}" for t in res.get("s_per_it_all") or [])
    return out


def _kept(a: argparse.Namespace) -> dict[tuple[str, str], dict[str, Any]]:
    """Rows of an earlier levels CSV (``--keep``) named by ``--keep-rows`` (``LABEL:MODE``)."""
    if not a.keep:
        return {}
    import pandas as pd

    df = pd.read_csv(a.keep).astype(object)
    rows = df.where(df.notna(), None).to_dict("records")
    want = {tuple(k.rsplit(":", 1)) for k in a.keep_rows}
    kept = {(r["label"], r["mode"]): r for r in rows if (r["label"], r["mode"]) in want}
    for r in kept.values():
        r["source"] = f"kept from {Path(a.keep).name} ({r['source']})"
        if r["mode"] == "train" and r.get("flops_per_step") and not r.get("flops_source"):
            r["note"] = ("peak measured with the FLOP counter active in the warm-up (it raises a "
                         "training step's peak RSS); " + (r.get("note") or ""))
    return kept


def _finish_level(out: dict[str, Any], peak: dict[str, Any]) -> None:
    """Seconds, FLOP/s, efficiency, the paper's value and the note of a measured levels row."""
    from bench.bench_flops import efficiency_fields

    sample = out["mode"] == "sample"
    out["s"] = out.get("s_generate_probe") if sample else out.get("s_per_it")
    out["network_s"] = out.get("s_per_it") if sample else None
    out["flops_per_step"] = out.pop("flops_per_it", None) or out.get("flops_per_step")
    out.update(efficiency_fields(out["flops_per_step"], out["s"] if out["status"] == "ok" else None,
                                 peak["peak_gflops"], peak.get("peak_conv_gflops")),
               peak_gflops=peak["peak_gflops"], peak_conv_gflops=peak.get("peak_conv_gflops"))
    if sample and out["status"] == "ok" and out.get("n_parameters"):
        out["count_gb"] = 4 * out["n_parameters"] / 1e9  # float32 weights; no_grad saves nothing
    paper = PAPER_SAMPLE_GB.get((out["label"], out["paper_resolution"])) if sample else None
    out["paper_gb"], out["paper_source"] = paper if paper else (None, None)
    if MEMORY_NOTE not in (out.get("note") or ""):
        out["note"] = "; ".join(filter(None, [out.get("note"), MEMORY_NOTE]))


def measure_peaks(a: argparse.Namespace) -> dict[str, Any]:
    """The matmul and the convolution peak (``bench.bench_flops``) at ``a.threads`` threads."""
    from bench.bench_flops import peak_conv3d_gflops, peak_matmul_gflops

    return peak_matmul_gflops(a.peak_n, a.repeats, a.threads) | peak_conv3d_gflops(
        repeats=a.repeats, threads=a.threads)


def _apply_peaks(rows: list[dict[str, Any]], peaks: list[dict[str, Any]]) -> None:
    """Each peak the larger of its measurements; efficiencies of every row against both."""
    peak = {"peak_gflops": max(p["peak_gflops"] for p in peaks),
            "peak_conv_gflops": max(p["peak_conv_gflops"] for p in peaks)}
    sys.stdout.write("peaks: matmul " + ", ".join(f"{p['peak_gflops']:.1f}" for p in peaks) +
                     f" GFLOP/s ({peaks[0]['peak_matmul_n']}^2 float32), conv3d " +
                     ", ".join(f"{p['peak_conv_gflops']:.1f}" for p in peaks) +
                     f" GFLOP/s ({peaks[0]['peak_conv_shape']}), {peaks[0]['peak_threads']} threads\n")
    for out in rows:
        out.update(peak_matmul_s=min(p["peak_matmul_s"] for p in peaks),
                   peak_gflops_before=peaks[0]["peak_gflops"], peak_gflops_after=peaks[-1]["peak_gflops"])
        _finish_level(out, peak)


def run_levels(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every levels-suite row, one isolated probe at a time (see :func:`level_plan`); the
    peaks are measured before and after, and the larger of each is used."""
    from wdm.config import resolve_run_config

    peaks = [measure_peaks(a)]
    kept, rows = _kept(a), []
    for row in level_plan(a.levels_rows, tuple(a.level_modes), a.scale):
        old = _reused(row, Path(a.reuse)) if a.reuse and row["label"] in a.reuse_rows else None
        cfg, src = level_config(row["model"], row["preset"], row["levels"], row["resolution"],
                                row["checkpointing"], a.widths)
        out = kept.get((row["label"], row["mode"]))
        if out is None:
            load = os.getloadavg()[0]  # other work on the machine slows the timings
            out = dict(row, config=src, loadavg_1m_before=load) | (old or _measure_level(row, a))
            if out["mode"] == "train" and out["status"] == "ok":  # FLOPs (and a reused row's count)
                out.update(_in_child(_child_counts, resolve_run_config(cfg), row["resolution"],
                                     old is not None))
            out.update(batch_size=1, repeats=a.repeats, memory_limit_gb=a.memory_limit_gb,
                       threads=a.threads)
        rows.append(out)
        rows.sort(key=lambda r: ([b[0] for b in LEVEL_ROWS].index(r["label"]), r["mode"] != "train"))
        write_rows(rows, a.out)  # after every row: a long run interrupted keeps what it measured
    peaks.append(measure_peaks(a))
    _apply_peaks(rows, peaks)
    write_rows(rows, a.out)
    return rows


def rescore_levels(a: argparse.Namespace) -> list[dict[str, Any]]:
    """``--rescore CSV``: the rows of an earlier levels run with both peaks measured now (twice)
    and their efficiencies recomputed; the timings and FLOP counts are kept as measured."""
    rows = read_rows(a.rescore)
    _apply_peaks(rows, [measure_peaks(a), measure_peaks(a)])
    note = f"peaks re-measured on {time.strftime('%Y-%m-%d')} after the probes (--rescore)"
    for r in rows:
        kept = [p for p in str(r.get("note") or "").split("; ")
                if p and not p.startswith("peaks re-measured")]
        r["note"] = "; ".join([note, *kept])
    return rows


def main_levels(a: argparse.Namespace) -> list[dict[str, Any]]:
    """``--suite levels``: measure (or read ``--plot-from``), print, write the CSV and the figure."""
    from bench.memory import levels_figure

    if a.plot_from:
        rows = read_rows(a.plot_from)
    else:
        rows = rescore_levels(a) if a.rescore else run_levels(a)
    print_levels(rows)
    out = Path(a.plot_from or write_rows(rows, a.out))
    png = (BENCH_DIR / "memory_vs_resolution_levels.png"
           if out.resolve() == (BENCH_DIR / "memory_levels.csv").resolve() else out.with_suffix(".png"))
    caps = {float(r["memory_limit_gb"]) for r in rows if r.get("memory_limit_gb")}
    levels_figure(rows, png, max(caps) if caps else a.memory_limit_gb)  # the cap they ran under
    return rows


def print_levels(rows: list[dict[str, Any]]) -> None:
    """The levels table, the 512^3 verdict and the memory note."""
    print_rows(rows, LEVEL_COLUMNS)
    for r in rows:
        if r["label"] == "wdm J=2 +ckpt" and r["mode"] == "train":
            cap = (r.get("memory_limit_gb") or math.inf) * 2**30 / 1e9
            fits = r["status"] == "ok" and r["peak_memory_gb"] <= cap
            sys.stdout.write(f"target J=2 {r['resolution']}^3 training step within "
                             f"{r.get('memory_limit_gb')} GiB: {r['status']}{peak_gb_suffix(r)} -> "
                             f"{'PASS' if fits else 'FAIL'}\n")
    sys.stdout.write("note: " + MEMORY_NOTE + "\n")

