"""Benchmark: sampling speed, full DDPM (1000 steps) against DDIM (100 steps), seconds per volume.

Issue 7, point 3. WDM (Friedrich et al. 2024, arXiv 2402.19043, Sec. 3: ancestral DDPM with
T = 1000 and wavelet clipping) is built from a network preset with seeded, untrained weights (the
speed of a forward pass does not depend on the weight values) and samples ``--batch-size`` volumes
of ``--size``³ voxels, i.e. a state of shape (B, 8, size/2, size/2, size/2). For each sampler the
script reports:

* ``s_per_volume``: median wall-clock seconds of one sampling run divided by the batch size;
* ``forward_s``: median seconds of one network forward pass on the same (B, C, d, h, w) state;
* ``clip_s``: median seconds of one ``clip_x0`` (WDM: inverse DWT, clamp, DWT);
* ``overhead_s``: run median − steps × ``forward_s`` per batch (clipping, posterior and noise
  draws, the Python loop); the samplers should be dominated by the network (small fraction);
* ``ratio_vs_ddim``: s/volume against DDIM of the same model (ideally ≈ ddpm_steps / ddim_steps).

``--ddpm3d ddim|all`` adds the voxel-space 3D DDPM baseline (``baselines.ddpm3d``, same preset on
(B, 1, size, size, size)) as comparison rows with ``ratio_vs_wdm``. Every measurement is repeated
``--repeats`` (≥ 3) times in this one process; medians are printed and written to
``results/bench/sampling.csv``.

Cost at the defaults (preset ``small``, 2.3M parameters, 64³, batch 1, 2 threads): one forward
pass on the 32³ wavelet grid took ~0.2 s on a lightly loaded 2-core machine (an earlier measurement implies
0.1–0.15 s), so the run is 3 × (1000 + 100) forwards ≈ 6–11 min. The paper's network
(``--preset wdm-128``, 58M parameters) took ≥ 1.4 s per forward at 64³, i.e. ≳ 80 min for the same
run. ``--ddpm3d ddim`` adds 3 × 100 voxel-space forwards on 64³ (8× the voxels, 1/8 the
channels; ~3–8× a WDM forward: roughly 3–8 min more); ``--ddpm3d all`` adds 3 × 1000 more (hours).
On an oversubscribed machine (load ≫ 2) a 2-thread forward slowed down by 10–20×. The script logs
its own estimate after timing the forward pass; ``--dry-run`` stops there.

Run:  python bench/bench_sampling.py [--preset small] [--size 64] [--batch-size 1] [--repeats 3]
                                      [--threads 2] [--ddpm3d off|ddim|all] [--dry-run]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, print_rows, setup_logging, summarize, time_repeats, write_rows  # noqa: E402
from bench.memory import PeakRSS  # noqa: E402

log = logging.getLogger("bench.sampling")

COLUMNS = ["model", "sampler", "steps", "preset", "params", "size", "batch_size", "s_per_volume",
           "median_s", "min_s", "forward_s", "clip_s", "overhead_s", "overhead_frac",
           "ratio_vs_ddim", "ratio_vs_wdm", "peak_rss_delta_mb", "repeats", "threads"]


def build_model(name: str, preset: str, size: int, seed: int) -> Any:
    """WDM or the voxel-space DDPM baseline at ``size``³, weights drawn from ``seed`` (untrained)."""
    from wdm.config import resolve_run_config
    from wdm.model import build_model as build

    cfg = resolve_run_config({"model": name, "network": {"preset": preset}})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(cfg, (size, size, size))
    for m in model.modules().values():
        m.eval()
    return model


def bench_model(name: str, samplers: dict[str, int], a: argparse.Namespace) -> list[dict[str, Any]]:
    """Time the forward pass, the clipping and each sampler (name -> steps) for one model."""
    from wdm.networks import count_parameters
    from wdm.samplers import timestep_sequence

    model = build_model(name, a.preset, a.size, a.seed)
    net = model.network
    shape = (a.batch_size, *model.state_shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(a.seed))
    t = torch.full((a.batch_size,), model.diffusion.num_timesteps // 2, dtype=torch.long)
    with torch.no_grad():
        fwd = summarize(time_repeats(lambda: net(x, t), repeats=a.forward_repeats, warmup=2))
        clip = summarize(time_repeats(lambda: model.clip_x0(x), repeats=a.forward_repeats, warmup=1))
    n_chain = {s: len(timestep_sequence(model.diffusion.num_timesteps, k)) for s, k in samplers.items()}
    est = a.repeats * sum(n_chain.values()) * (fwd["median_s"] + clip["median_s"])
    log.info("%s preset=%s: forward %.3f s, clip %.4f s per (B=%d) step; estimated %.0f s "
             "(%.1f min) for %s x %d repeats", name, a.preset, fwd["median_s"], clip["median_s"],
             a.batch_size, est, est / 60, n_chain, a.repeats)
    if a.dry_run:
        return []
    rows = []
    for sampler, steps in samplers.items():
        def run(sampler: str = sampler, steps: int = steps) -> None:
            model.generate(a.batch_size, torch.Generator().manual_seed(a.seed), sampler=sampler,
                           steps=steps, eta=0.0, device="cpu")

        with PeakRSS() as mem:
            times = time_repeats(run, repeats=a.repeats, warmup=0)  # warmed up by the forwards
        s = summarize(times)
        overhead = s["median_s"] - n_chain[sampler] * fwd["median_s"]
        rows.append({"model": name, "sampler": sampler, "steps": n_chain[sampler], "preset": a.preset,
                     "params": count_parameters(net), "size": a.size, "batch_size": a.batch_size,
                     "s_per_volume": s["median_s"] / a.batch_size, "median_s": s["median_s"],
                     "min_s": s["min_s"], "max_s": s["max_s"], "forward_s": fwd["median_s"],
                     "clip_s": clip["median_s"], "overhead_s": overhead,
                     "overhead_frac": overhead / s["median_s"], "peak_rss_delta_mb": mem.delta_mb,
                     "repeats": s["repeats"], "threads": a.threads})
        log.info("%s %s-%d: median %.2f s per batch of %d (min %.2f, max %.2f)", name, sampler,
                 n_chain[sampler], s["median_s"], a.batch_size, s["min_s"], s["max_s"])
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """``ratio_vs_ddim`` (same model) and ``ratio_vs_wdm`` (same sampler) of s/volume, in place."""
    by = {(r["model"], r["sampler"]): r["s_per_volume"] for r in rows}
    for r in rows:
        ddim = by.get((r["model"], "ddim"))
        wdm = by.get(("wdm", r["sampler"]))
        r["ratio_vs_ddim"] = r["s_per_volume"] / ddim if ddim else float("nan")
        r["ratio_vs_wdm"] = r["s_per_volume"] / wdm if wdm else float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small",
                   help="network preset (wdm.networks.NETWORK_PRESETS); wdm-128 = the paper's widths")
    p.add_argument("--size", type=int, default=64, help="volume side in voxels")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed runs (>= {MIN_REPEATS})")
    p.add_argument("--forward-repeats", type=int, default=10, help="timed single forward passes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddpm3d", choices=["off", "ddim", "all"], default="off",
                   help="add voxel-space 3D DDPM rows: DDIM only, or DDIM and DDPM")
    p.add_argument("--out", default="sampling", help="CSV path, or a name under results/bench/")
    p.add_argument("--dry-run", action="store_true",
                   help="time the forward pass, log the estimated total and stop (no CSV)")
    # Test hooks (tiny smoke runs); the benchmark itself is DDPM-1000 vs DDIM-100.
    p.add_argument("--ddpm-steps", type=int, default=1000, help=argparse.SUPPRESS)
    p.add_argument("--ddim-steps", type=int, default=100, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    for name in ("size", "batch_size", "forward_repeats", "threads", "ddpm_steps", "ddim_steps"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return a


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; return the rows written to the CSV."""
    a = parse_args(argv)
    setup_logging()
    torch.set_num_threads(a.threads)
    samplers = {"ddpm": a.ddpm_steps, "ddim": a.ddim_steps}
    rows = bench_model("wdm", samplers, a)
    if a.ddpm3d != "off":
        rows += bench_model("ddpm3d", samplers if a.ddpm3d == "all" else {"ddim": a.ddim_steps}, a)
    if a.dry_run:
        return rows
    add_ratios(rows)
    write_rows(rows, a.out)
    print_rows(rows, COLUMNS)
    by = {(r["model"], r["sampler"]): r for r in rows}
    ddpm, ddim = by[("wdm", "ddpm")], by[("wdm", "ddim")]
    sys.stdout.write(
        f"WDM {a.size}^3, preset {a.preset}, batch {a.batch_size}, {a.threads} threads: "
        f"DDPM-{ddpm['steps']} {ddpm['s_per_volume']:.2f} s/volume, DDIM-{ddim['steps']} "
        f"{ddim['s_per_volume']:.2f} s/volume, ratio {ddpm['s_per_volume'] / ddim['s_per_volume']:.2f} "
        f"(steps ratio {ddpm['steps'] / ddim['steps']:.2f}); network share of a run "
        f"{1 - ddpm['overhead_frac']:.0%} (DDPM), {1 - ddim['overhead_frac']:.0%} (DDIM)\n")
    return rows


if __name__ == "__main__":
    main()
