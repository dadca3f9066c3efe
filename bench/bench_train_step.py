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

``--suite levels`` (:mod:`bench.bench_levels`, rows :data:`~bench.bench_levels.LEVEL_ROWS`): a
training step and a sampling step (one network evaluation with wavelet clipping and the decoding,
``sample_steps = 1``) side by side, batch 1, each an isolated probe, for WDM at one level (wdm-128
at 128^3, wdm-256 + checkpointing at 256^3), at two levels (preset wdm-512: 256^3, and 512^3 with
checkpointing), the WavU-Net (wdm-128-wavunet, 128^3) and ddpm3d (128^3). Each row has the process
peak RSS (and minus the post-import baseline), the CPU allocator's peak (``alloc_peak_gb``, the
counterpart of the paper's ``torch.cuda.max_memory_allocated``), the activation count (``count_gb``:
:func:`wdm.activation_memory.count_training_memory`; a sampling row: its float32 weights), the
paper's sampling value (``paper_gb``), the counted FLOPs of the step and its FLOP/s against a
float32 matmul peak measured first (:mod:`bench.bench_flops`). ``--reuse train_step.csv`` takes the
training rows of ``--reuse-rows`` from an earlier run (their counts are still made, FLOPs
extrapolated). Writes ``results/bench/memory_levels.csv`` (a separate file: its rows have a mode and
levels, the README's train_step table has neither) and
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

from bench.bench_levels import add_level_arguments, main_levels  # noqa: E402
from bench.common import (  # noqa: E402
    MIN_REPEATS,
    REPO,
    peak_gb_suffix,
    print_rows,
    read_rows,
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
                f"{w['status']}{peak_gb_suffix(w)}; at {where}^3, the largest size where both fit: ")
            lines.append(head + ctx + f"ratio {ratio:.3f} -> {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}")
    at256 = [r for r in rows if r["model"] == "wdm" and r["resolution"] == 256]
    head = f"target one WDM training step at 256^3 within {limit_gib} GiB: "
    if not at256:
        lines.append(head + "NOT MEASURED (add 256 to --resolutions)")
    else:
        cap = (limit_gib or math.inf) * 2**30 / 1e9
        fits = [r for r in at256 if r["status"] == "ok" and r["peak_memory_gb"] <= cap]
        desc = ", ".join(f"{r['label']}: {r['status']}{peak_gb_suffix(r)}" for r in at256)
        lines.append(head + f"{desc} -> {'PASS (' + fits[0]['label'] + ')' if fits else 'FAIL'}")
    return lines


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
    add_level_arguments(p)
    a = p.parse_args(argv)
    a.out = a.out or ("memory_levels" if a.suite == "levels" else "train_step")
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    a.memory_limit_gb = a.memory_limit_gb or None
    return a


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; print the table and verdicts; return the rows written to the CSV."""
    a = parse_args(argv)
    setup_logging()
    if a.suite == "levels":
        return main_levels(a)
    if a.plot_from:  # redraw the figure of an earlier run without measuring again
        rows = read_rows(a.plot_from)
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


if __name__ == "__main__":
    main()
