"""Benchmark: one training step's peak memory and s/iteration against resolution.

Models at the paper's network widths, batch size 1 for all (the paper trains WDM with batch 10 at
128^3 and 1 at 256^3; one volume per step makes the rows comparable): ``wdm`` (U-Net preset
wdm-128 up to 128^3, wdm-256 at 256^3, on the Haar coefficients), ``ddpm3d`` (the same U-Net on
voxels), ``hagan`` (hagan-128 / hagan-256) and the latent diffusion baseline as two rows,
``ldm-vqgan`` (stage 1, VQ-GAN paper-128 / paper-256 with its discriminator and perceptual term) and
``ldm-diffusion`` (stage 2, the wdm-128 U-Net on the latents). The run configs are
``config/paper/models/<model>_{128,256}.yaml`` when present, else ``config/models/<model>.yaml``,
with the presets above and ``network.use_checkpoint`` forced to the row's setting (default off: fp32
without checkpointing, as the paper). ``--widths tiny`` swaps in the tiny presets (smoke tests).
Extra WDM rows at 256^3 (``--variant-resolutions``): activation checkpointing, and checkpointing
with bf16 autocast.

Every measurement is an isolated probe (:func:`wdm.probe.probe_isolated`): this one driver process
launches one child per (model, resolution), because a CPU process's peak RSS cannot be reset; each
child runs a warm-up step and ``--repeats`` (>= 3) timed steps under ``--memory-limit-gb`` (default
24 GiB, ``RLIMIT_DATA``). Once a model runs out of memory at R, its larger resolutions are recorded as
``oom`` "(skipped: OOM at R)"; a step estimated (previous resolution's median x 8 per doubling of the
side) above ``--max-seconds-per-step`` is recorded as ``too_slow`` without running. Prints the
estimated total time first, then a table of medians, peak memory (process peak RSS on CPU, also
minus the post-import baseline), the WDM/ddpm3d ratios per resolution and one verdict per target;
writes ``results/bench/train_step.csv``.

Targets: WDM <= 0.2x ddpm3d's peak memory at 128^3 (memory beyond the post-import baseline; if
ddpm3d runs out of memory there, the ratio at the largest resolution where both fit), and one WDM
training step at 256^3 within 24 GiB (any of its rows).

``--suite levels`` (:data:`LEVEL_ROWS`): a training step and a sampling step (one network
evaluation with wavelet clipping and the decoding, ``sample_steps = 1``) side by side, batch 1, each
an isolated probe, for WDM at one level (wdm-128 at 128^3, wdm-256 + checkpointing at 256^3), at two
levels (preset wdm-512: 256^3, and 512^3 with checkpointing), the WavU-Net (wdm-128-wavunet, 128^3)
and ddpm3d (128^3). Each row has the process peak RSS (and minus the post-import baseline), the CPU
allocator's peak (``alloc_peak_gb``, the counterpart of the paper's ``torch.cuda.max_memory_allocated``),
the activation count (``count_gb``: :func:`wdm.activation_memory.count_training_memory`; a sampling
row: its float32 weights), the paper's sampling value (``paper_gb``), the counted FLOPs of the step
and its FLOP/s against a float32 matmul peak measured first (:mod:`bench.bench_flops`).
``--reuse train_step.csv`` takes the training rows of ``--reuse-rows`` from an earlier run (their
counts are still made, FLOPs extrapolated). Writes ``results/bench/memory_levels.csv`` (a separate
file: its rows have a mode and levels, the README's train_step table has neither) and
``results/bench/memory_vs_resolution_levels.png``.

Run:  python bench/bench_train_step.py [--resolutions 32 64 128 256] [--models ...] [--repeats 3]
      python bench/bench_train_step.py --suite levels --memory-limit-gb 21 --threads 2 \
          --reuse results/bench/train_step.csv
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BENCH_DIR,
    MIN_REPEATS,
    REPO,
    print_rows,
    setup_logging,
    write_rows,
)
from wdm.probe import probe_isolated  # noqa: E402

log = logging.getLogger("bench.train_step")

MODELS = ("wdm", "ddpm3d", "hagan", "ldm-vqgan", "ldm-diffusion")
#: Rough s/step at 128^3 and 256^3 (paper widths, batch 1, 2 idle CPU cores; from conv throughput
#: measured at 16^3-32^3, not from runs at these sizes) for the estimate printed before the run, scaled
#: by voxel count below 128^3 with a floor of MIN_S_PER_STEP. The skip guard itself uses this run's
#: own measurements. ldm-diffusion runs on 32^3 latents at both sizes (paper-128 / paper-256 VQ-GAN).
EST_S_PER_STEP = {"wdm": (60.0, 480.0), "ddpm3d": (480.0, 3840.0), "hagan": (30.0, 240.0),
                  "ldm-vqgan": (40.0, 320.0), "ldm-diffusion": (10.0, 20.0)}
MIN_S_PER_STEP = 0.5  # Adam on ~58M parameters and the deep levels' fixed cost
PROBE_OVERHEAD_S = 8.0  # child start, imports, model build
TARGET_RATIO = 0.2
COLUMNS = ("label", "resolution", "status", "s_per_it", "peak_memory_gb", "peak_minus_baseline_gb",
           "mem_vs_ddpm3d", "time_vs_ddpm3d", "n_parameters", "note")


def run_config(model: str, resolution: int, widths: str = "paper") -> tuple[dict, str]:
    """The run config of a bench row (see the module docstring) and where it came from."""
    base = "ldm" if model.startswith("ldm") else model
    size = 256 if resolution > 128 else 128
    paper = REPO / "config" / "paper" / "models" / f"{base}_{size}.yaml"
    src = paper if paper.exists() else REPO / "config" / "models" / f"{base}.yaml"
    cfg = yaml.safe_load(src.read_text())
    tiny = widths == "tiny"
    if base in ("wdm", "ddpm3d"):
        cfg.setdefault("network", {})["preset"] = "tiny" if tiny else f"wdm-{size}"
    elif base == "hagan":
        cfg.setdefault("hagan", {})["preset"] = "tiny" if tiny else f"hagan-{size}"
    else:
        ldm = cfg.setdefault("ldm", {})
        ldm.update(stage=model.removeprefix("ldm-"), vqgan_run=None)
        ldm.setdefault("vqgan", {})["preset"] = "tiny" if tiny else f"paper-{size}"
        cfg.setdefault("network", {})["preset"] = "tiny" if tiny else "wdm-128"
    cfg.setdefault("network", {})["use_checkpoint"] = False
    cfg.setdefault("training", {}).update(batch_size=1, device="auto")
    return cfg, str(src.relative_to(REPO))


VARIANTS = {"ckpt": ("wdm +ckpt", "fp32"), "ckpt-bf16": ("wdm +ckpt bf16", "bf16")}


def plan(models: list[str], resolutions: list[int], variant_res: list[int] | None,
         variants: tuple[str, ...] = tuple(VARIANTS)) -> list[dict[str, Any]]:
    """The rows to measure, in order: (label, model, resolution, checkpointing, precision)."""
    rows = [{"label": m, "model": m, "resolution": r, "checkpointing": False, "precision": "fp32"}
            for m in models for r in resolutions]
    if "wdm" in models and variant_res is not None:
        at = [r for r in resolutions if r in variant_res] or [max(resolutions)]
        for label, prec in (VARIANTS[v] for v in variants):
            rows += [{"label": label, "model": "wdm", "resolution": r, "checkpointing": True,
                      "precision": prec} for r in at]
    return rows


def _scaled(s: float, r_from: int, r_to: int) -> float:
    """s/step scaled by voxel count (x 8 per doubling of the side)."""
    return s * (r_to / r_from) ** 3


def estimate_s_per_step(model: str, resolution: int, checkpointing: bool = False) -> float:
    """Rough s/step of a paper-width row on 2 idle cores (:data:`EST_S_PER_STEP`)."""
    s128, s256 = EST_S_PER_STEP[model]
    s = s256 * (resolution / 256) ** 3 if resolution > 128 else _scaled(s128, 128, resolution)
    return max(MIN_S_PER_STEP, s) * (1.3 if checkpointing else 1.0)


def estimate_total(rows: list[dict], repeats: int, max_s: float, widths: str) -> float:
    """Seconds the plan takes by the rough table (rows estimated too slow cost nothing; OOMs,
    which end a probe early, are not predicted)."""
    total = 0.0
    for row in rows:
        s = estimate_s_per_step(row["model"], row["resolution"], row["checkpointing"])
        s = 0.05 if widths == "tiny" else s
        if s <= max_s:
            total += PROBE_OVERHEAD_S + (1 + repeats) * s
    return total


def _previous(done: list[dict], row: dict) -> dict | None:
    """The largest-resolution ok row below ``row`` of the same label, else of the same model."""
    for key in ("label", "model"):
        cands = [d for d in done if d[key] == row[key] and d["status"] == "ok"
                 and d["resolution"] < row["resolution"] and d.get("s_per_it")]
        if cands:
            return max(cands, key=lambda d: d["resolution"])
    return None


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every planned row; returns the rows (with ratios) in plan order."""
    todo = plan(a.models, sorted(a.resolutions), None if a.no_variants else a.variant_resolutions,
                tuple(a.variants))
    est = estimate_total(todo, a.repeats, a.max_seconds_per_step, a.widths)
    log.info("%d probes planned; estimated total %.0f min (rough, 2 idle cores, no OOM; an OOM ends "
             "a probe early)", len(todo), est / 60)
    sys.stdout.write(f"estimated total time: {est / 60:.0f} min for {len(todo)} probes\n")
    sys.stdout.flush()
    done: list[dict[str, Any]] = []
    oom_at: dict[str, int] = {}
    for row in todo:
        out = dict(row, status=None, note=None)
        cfg, src = run_config(row["model"], row["resolution"], a.widths)
        out["config"] = src
        prev = _previous(done, row)
        guess = _scaled(prev["s_per_it"], prev["resolution"], row["resolution"]) if prev else None
        if row["label"] in oom_at:
            out.update(status="oom", note=f"(skipped: OOM at {oom_at[row['label']]})")
        elif guess is not None and guess > a.max_seconds_per_step:
            out.update(status="too_slow", note=f"(skipped: estimated {guess:.0f} s/step > "
                                                f"{a.max_seconds_per_step:g})", est_s_per_it=guess)
        else:
            timeout = None if guess is None else max(900.0, 4 * (1 + a.repeats) * guess + 300)
            res = probe_isolated(cfg, row["resolution"], "train", memory_limit_gb=a.memory_limit_gb,
                                 timeout_s=timeout, threads=a.threads, batch_size=1, repeats=a.repeats,
                                 checkpointing=row["checkpointing"], precision=row["precision"],
                                 device=a.device)
            out.update({k: res.get(k) for k in ("status", "s_per_it", "s_per_it_all", "peak_memory_gb",
                                                "rss_baseline_gb", "peak_minus_baseline_gb",
                                                "peak_memory_kind", "n_parameters", "device", "error",
                                                "wall_s")})
            out["note"] = res.get("note")
            out["s_per_it_all"] = " ".join(f"{t:.4g}" for t in res.get("s_per_it_all") or [])
            if res["status"] == "oom":
                oom_at[row["label"]] = row["resolution"]
        out.update(batch_size=1, repeats=a.repeats, memory_limit_gb=a.memory_limit_gb)
        done.append(out)
    add_ratios(done)
    return done


def add_ratios(rows: list[dict]) -> None:
    """``mem_vs_ddpm3d`` / ``time_vs_ddpm3d``: each ok row over ddpm3d's ok row at its resolution."""
    ref = {r["resolution"]: r for r in rows if r["label"] == "ddpm3d" and r["status"] == "ok"}
    for r in rows:
        d = ref.get(r["resolution"])
        ok = r["status"] == "ok" and d is not None
        r["mem_vs_ddpm3d"] = r["peak_minus_baseline_gb"] / d["peak_minus_baseline_gb"] if ok else None
        r["time_vs_ddpm3d"] = r["s_per_it"] / d["s_per_it"] if ok else None


def verdicts(rows: list[dict], limit_gib: float | None, target_res: int = 128) -> list[str]:
    """One line per memory target (WDM step fits the cap; WDM <= 0.2x ddpm3d)."""
    def get(label: str, res: int) -> dict | None:
        return next((r for r in rows if r["label"] == label and r["resolution"] == res), None)

    lines = []
    w, d = get("wdm", target_res), get("ddpm3d", target_res)
    if w is None or d is None:
        lines.append(f"target WDM <= {TARGET_RATIO}x ddpm3d memory at {target_res}^3: NOT MEASURED "
                     f"(run wdm and ddpm3d at {target_res})")
    else:
        both = [r["resolution"] for r in rows if r["label"] == "wdm" and r["mem_vs_ddpm3d"] is not None]
        where = target_res if w["mem_vs_ddpm3d"] is not None else (max(both) if both else None)
        head = f"target WDM <= {TARGET_RATIO}x ddpm3d memory at {target_res}^3: "
        if where is None:
            lines.append(head + f"NO COMMON SIZE (wdm {w['status']}, ddpm3d {d['status']})")
        else:
            ratio = get("wdm", where)["mem_vs_ddpm3d"]
            ctx = "" if where == target_res else (
                f"ddpm3d {d['status']} at {target_res}^3 (limit {limit_gib} GiB) while WDM is "
                f"{w['status']}{_gb(w)}; at {where}^3, the largest size where both fit: ")
            lines.append(head + ctx + f"ratio {ratio:.3f} -> {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    at256 = [r for r in rows if r["model"] == "wdm" and r["resolution"] == 256]
    head = f"target one WDM training step at 256^3 within {limit_gib} GiB: "
    if not at256:
        lines.append(head + "NOT MEASURED (add 256 to --resolutions)")
    else:
        cap = (limit_gib or math.inf) * 2**30 / 1e9
        fits = [r for r in at256 if r["status"] == "ok" and r["peak_memory_gb"] <= cap]
        desc = ", ".join(f"{r['label']}: {r['status']}{_gb(r)}" for r in at256)
        lines.append(head + f"{desc} -> {'PASS (' + fits[0]['label'] + ')' if fits else 'FAIL'}")
    return lines


def _gb(r: dict) -> str:
    return f" {r['peak_memory_gb']:.2f} GB" if r.get("status") == "ok" and r.get("peak_memory_gb") else ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed steps (>= {MIN_REPEATS})")
    p.add_argument("--memory-limit-gb", type=float, default=24.0, help="GiB per probe; 0 = none")
    p.add_argument("--max-seconds-per-step", type=float, default=1200.0,
                   help="skip (too_slow) a step estimated slower than this")
    p.add_argument("--variant-resolutions", type=int, nargs="*", default=[256],
                   help="where the extra WDM rows (checkpointing, +bf16) run (else the largest)")
    p.add_argument("--no-variants", action="store_true", help="no extra WDM rows")
    p.add_argument("--plot-from", default=None, help="only redraw the PNG of this CSV (no measuring)")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS),
                   help="which extra WDM rows: activation checkpointing, and with bf16 too")
    p.add_argument("--widths", choices=["paper", "tiny"], default="paper")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="CSV path, or a name under results/bench/ (default: "
                   "train_step; memory_levels with --suite levels)")
    _add_level_arguments(p)
    a = p.parse_args(argv)
    a.out = a.out or ("memory_levels" if a.suite == "levels" else "train_step")
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    a.memory_limit_gb = a.memory_limit_gb or None
    return a


def _add_level_arguments(p: argparse.ArgumentParser) -> None:
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; print the table and verdicts; return the rows written to the CSV."""
    a = parse_args(argv)
    setup_logging()
    if a.suite == "levels":
        return main_levels(a)
    if a.plot_from:  # redraw the figure of an earlier run without measuring again
        import pandas as pd

        rows = pd.read_csv(a.plot_from).astype(object).where(lambda d: d.notna(), None).to_dict("records")
    else:
        rows = run(a)
    print_rows(rows, COLUMNS)
    for line in verdicts(rows, a.memory_limit_gb):
        sys.stdout.write(line + "\n")
    out = a.plot_from or write_rows(rows, a.out)
    plot(rows, Path(out).with_suffix(".png"), a.memory_limit_gb)
    return rows


def plot(rows: list[dict[str, Any]], out: Path, memory_limit_gb: float | None) -> Path:
    """Peak memory against resolution, OOM marked (the workflow's memory figure, training panel)."""
    from eval.figures_memory import memory_figure

    drawn = [dict(r, mode="train") for r in rows if r["status"] in ("ok", "oom")]
    return memory_figure(drawn, out, memory_limit_gb=memory_limit_gb or None,
                         title="One training step, paper widths, batch 1 (bench/bench_train_step.py)")


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
                 "achieved_gflops", "efficiency", "source")


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
                                 peak["peak_gflops"]), peak_gflops=peak["peak_gflops"])
    if sample and out["status"] == "ok" and out.get("n_parameters"):
        out["count_gb"] = 4 * out["n_parameters"] / 1e9  # float32 weights; no_grad saves nothing
    paper = PAPER_SAMPLE_GB.get((out["label"], out["paper_resolution"])) if sample else None
    out["paper_gb"], out["paper_source"] = paper if paper else (None, None)
    if MEMORY_NOTE not in (out.get("note") or ""):
        out["note"] = "; ".join(filter(None, [out.get("note"), MEMORY_NOTE]))


def run_levels(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure every levels-suite row, one isolated probe at a time (see :func:`level_plan`); the
    matmul peak is measured before and after, and the larger is used."""
    from bench.bench_flops import peak_matmul_gflops
    from wdm.config import resolve_run_config

    peaks = [peak_matmul_gflops(a.peak_n, a.repeats, a.threads)]
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
    peaks.append(peak_matmul_gflops(a.peak_n, a.repeats, a.threads))
    peak = max(peaks, key=lambda p: p["peak_gflops"])
    sys.stdout.write("matmul peak: " + ", ".join(f"{p['peak_gflops']:.1f}" for p in peaks) +
                     f" GFLOP/s before/after ({a.peak_n}^2 float32, {peak['peak_threads']} threads)\n")
    for out in rows:
        out.update(peak_matmul_s=peak["peak_matmul_s"], peak_gflops_before=peaks[0]["peak_gflops"],
                   peak_gflops_after=peaks[1]["peak_gflops"])
        _finish_level(out, peak)
    write_rows(rows, a.out)
    return rows


def main_levels(a: argparse.Namespace) -> list[dict[str, Any]]:
    """``--suite levels``: measure (or read ``--plot-from``), print, write the CSV and the figure."""
    from bench.memory import levels_figure

    if a.plot_from:
        import pandas as pd

        rows = pd.read_csv(a.plot_from).astype(object).where(lambda d: d.notna(), None).to_dict("records")
    else:
        rows = run_levels(a)
    print_levels(rows)
    out = Path(a.plot_from or write_rows(rows, a.out))
    png = (BENCH_DIR / "memory_vs_resolution_levels.png" if out == BENCH_DIR / "memory_levels.csv"
           else out.with_suffix(".png"))
    levels_figure(rows, png, a.memory_limit_gb)
    return rows


def print_levels(rows: list[dict[str, Any]]) -> None:
    """The levels table, the 512^3 verdict and the memory note."""
    print_rows(rows, LEVEL_COLUMNS)
    for r in rows:
        if r["label"] == "wdm J=2 +ckpt" and r["mode"] == "train":
            cap = (r.get("memory_limit_gb") or math.inf) * 2**30 / 1e9
            fits = r["status"] == "ok" and r["peak_memory_gb"] <= cap
            sys.stdout.write(f"target J=2 {r['resolution']}^3 training step within "
                             f"{r.get('memory_limit_gb')} GiB: {r['status']}{_gb(r)} -> "
                             f"{'PASS' if fits else 'FAIL'}\n")
    sys.stdout.write("note: " + MEMORY_NOTE + "\n")


if __name__ == "__main__":
    main()
