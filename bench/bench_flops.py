"""Compute efficiency: counted FLOPs of a step over its time, against this machine's measured peaks.

Two peaks, each timed after a warm-up, median of ``repeats`` (>= 3) with ``threads`` torch threads:
a large float32 matrix product (``N x N @ N x N``, default N = 4096, ``2 N^3`` FLOPs; MKL) and a
large float32 3x3x3 convolution (256 -> 256 channels on 16^3, no bias, ``2 C^2 27 S^3`` FLOPs;
oneDNN, the kernels the U-Nets run). In the committed levels run (2-core AMD development machine,
``results/bench/memory_levels.csv``) the convolution reached 330 GFLOP/s and the matmul 170 (MKL
takes a slower code path on AMD processors), so a U-Net step can exceed "100 % of the matmul"; the
convolution peak is the one to read as the hardware limit. A step's FLOPs are counted as
:func:`wdm.budget.training_flops_per_step` counts them
(:class:`torch.utils.flop_counter.FlopCounterMode`: matrix products and convolutions, forward and
backward; element-wise work and the optimizer update are not counted), either inside
the probe's warm-up step (``wdm.probe --count-flops``) or, for a row that is not re-run, by
:func:`extrapolated_flops`: a network's FLOPs are ``a + b R^3`` exactly (every convolution's cost is
proportional to its output voxels, the timestep MLP is constant), so two counts at small ``R`` give
the count at any size of the same architecture. Under activation checkpointing the recomputed
forward is counted (it is work the step does).

Run:  python bench/bench_flops.py [--n 4096] [--repeats 3] [--threads 2]   (prints the peak)
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, time_repeats  # noqa: E402

__all__ = ["peak_conv3d_gflops", "peak_matmul_gflops", "extrapolated_flops", "efficiency_fields"]

log = logging.getLogger("bench.flops")


def _timed(make_op, repeats: int, threads: int | None, warmup: int) -> tuple[list[float], int]:
    """Times of ``make_op()``'s operation (built from seeded inputs) at ``threads`` torch threads,
    and the thread count used; the previous count is restored."""
    import torch

    if repeats < MIN_REPEATS:
        raise ValueError(f"repeats must be >= {MIN_REPEATS}, got {repeats}")
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        op = make_op(torch.Generator().manual_seed(0))
        with torch.no_grad():
            return time_repeats(op, repeats=repeats, warmup=warmup), threads or old
    finally:
        torch.set_num_threads(old)


def peak_matmul_gflops(n: int = 4096, repeats: int = MIN_REPEATS, threads: int | None = 2,
                       warmup: int = 1) -> dict[str, Any]:
    """GFLOP/s of a float32 ``n x n @ n x n`` product (median of ``repeats`` after ``warmup``)."""
    import torch

    def make(gen: torch.Generator):
        a, b, out = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen), torch.empty(n, n)
        return lambda: torch.mm(a, b, out=out)

    times, used = _timed(make, repeats, threads, warmup)
    med = statistics.median(times)
    return {"peak_gflops": 2 * n**3 / med / 1e9, "peak_matmul_n": n, "peak_matmul_s": med,
            "peak_matmul_s_all": times, "peak_threads": used}


def peak_conv3d_gflops(channels: int = 256, side: int = 16, repeats: int = MIN_REPEATS,
                       threads: int | None = 2, warmup: int = 1) -> dict[str, Any]:
    """GFLOP/s of a float32 3x3x3 convolution (1, C, S, S, S) -> (1, C, S, S, S), padding 1, no bias,
    under ``torch.no_grad`` (``2 C^2 27 S^3`` FLOPs; median of ``repeats`` after ``warmup``)."""
    import torch

    def make(gen: torch.Generator):
        x = torch.randn(1, channels, side, side, side, generator=gen)
        w = torch.randn(channels, channels, 3, 3, 3, generator=gen)
        return lambda: torch.nn.functional.conv3d(x, w, padding=1)

    times, used = _timed(make, repeats, threads, warmup)
    med = statistics.median(times)
    return {"peak_conv_gflops": 2 * channels**2 * 27 * side**3 / med / 1e9, "peak_conv_shape":
            f"{channels}ch {side}^3 3x3x3", "peak_conv_s": med, "peak_threads": used}


def extrapolated_flops(cfg: dict, resolution: int, small: tuple[int, int]) -> dict[str, Any]:
    """Training-step FLOPs of the resolved run config ``cfg`` at ``resolution`` from exact counts at
    the two ``small`` sizes (``a + b R^3``, see the module docstring)."""
    from wdm.budget import training_flops_per_step

    r1, r2 = small
    f1, f2 = (training_flops_per_step(copy.deepcopy(cfg), (r,) * 3) for r in (r1, r2))
    b = (f2 - f1) / (r2**3 - r1**3)
    a = f1 - b * r1**3
    return {"flops_per_step": a + b * resolution**3, "flops_source": f"extrapolated a + b R^3 from "
            f"counts at {r1}^3 ({f1:.4g}) and {r2}^3 ({f2:.4g})"}


def efficiency_fields(flops: float | None, seconds: float | None, peak_gflops: float | None,
                      peak_conv_gflops: float | None = None) -> dict[str, float | None]:
    """``achieved_gflops`` (FLOPs / s), ``efficiency`` (achieved / matmul peak) and
    ``efficiency_conv`` (achieved / convolution peak); None where missing."""
    if not flops or not seconds:
        return {"achieved_gflops": None, "efficiency": None, "efficiency_conv": None}
    achieved = flops / seconds / 1e9
    return {"achieved_gflops": achieved, "efficiency": achieved / peak_gflops if peak_gflops else None,
            "efficiency_conv": achieved / peak_conv_gflops if peak_conv_gflops else None}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Print this machine's measured matmul and convolution peaks."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=MIN_REPEATS)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    res = peak_matmul_gflops(a.n, a.repeats, a.threads)
    sys.stdout.write(f"float32 {a.n}x{a.n} matmul, {res['peak_threads']} threads: "
                     f"{res['peak_gflops']:.1f} GFLOP/s (median {res['peak_matmul_s']:.3f} s of "
                     f"{len(res['peak_matmul_s_all'])})\n")
    conv = peak_conv3d_gflops(repeats=a.repeats, threads=a.threads)
    sys.stdout.write(f"float32 conv3d {conv['peak_conv_shape']}, {conv['peak_threads']} threads: "
                     f"{conv['peak_conv_gflops']:.1f} GFLOP/s (median {conv['peak_conv_s']:.3f} s)\n")
    return res | conv


if __name__ == "__main__":
    main()
