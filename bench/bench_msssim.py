"""Benchmark: all-pairs 3D MS-SSIM, ``eval.msssim.pairwise_ms_ssim`` vs MONAI pair by pair.

Issue 4, point 4: for 50 volumes at 64³ (kernel 7, data range 1, the 4 scales that fit at 64³),
the shared-statistics implementation must be at least 4× faster than calling MONAI's
``MultiScaleSSIMMetric`` once per pair. Both run on the same phantom volumes
(``wdm.data.phantom.make_phantom``); the script also reports the largest difference between the
two sets of per-pair values. Both implementations are timed in this one process with
``bench.common.time_repeats`` (``--repeats`` >= 3 runs each, no warm-up run: a MONAI run takes
minutes); prints a table of medians and the speed-up and writes ``results/bench/msssim.csv``
atomically. Cost at the defaults: ~1.3 min (ours) + ~9 min (MONAI) per repeat on 2 threads,
about half an hour in all.

Run:  python bench/bench_msssim.py [--n 50] [--size 64] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, print_rows, setup_logging, summarize, time_repeats, write_rows  # noqa: E402
from eval.msssim import MS_SSIM_WEIGHTS, max_ms_ssim_scales, pairwise_ms_ssim  # noqa: E402
from wdm.data.phantom import make_phantom  # noqa: E402

logger = logging.getLogger("bench.msssim")


def _volumes(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 1, size, size, size) float32 phantom volumes in [0, 1]."""
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]
    return torch.from_numpy(np.stack([make_phantom(r, size) for r in rngs])).unsqueeze(1)


def _monai_all_pairs(vols: torch.Tensor, scales: int) -> np.ndarray:
    """MONAI ``MultiScaleSSIMMetric`` (3D, kernel 7) called once per unordered pair."""
    from monai.metrics import MultiScaleSSIMMetric

    w = list(MS_SSIM_WEIGHTS[:scales])
    w = w if scales == len(MS_SSIM_WEIGHTS) else [v / sum(w) for v in w]
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, kernel_size=7, weights=w)
    n = vols.shape[0]
    out = []
    for i in range(n):
        for j in range(i + 1, n):
            out.append(float(metric(vols[i:i + 1], vols[j:j + 1]).flatten()[0]))
    return np.asarray(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=50, help="volumes (all n(n-1)/2 pairs are compared)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed runs (>= {MIN_REPEATS})")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="msssim", help="CSV path, or a name under results/bench/")
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    if a.n < 2:
        p.error(f"--n must be >= 2, got {a.n}")
    return a


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; return the rows written to the CSV."""
    a = parse_args(argv)
    setup_logging()
    torch.set_num_threads(a.threads)
    vols = _volumes(a.n, a.size, a.seed)
    scales = max_ms_ssim_scales(vols.shape[2:], 7)
    pairs = a.n * (a.n - 1) // 2
    values: dict[str, np.ndarray] = {}
    import monai.metrics  # noqa: F401  (the import, seconds long, stays out of the timed calls)

    def ours() -> None:
        values["ours"] = pairwise_ms_ssim(vols, kernel_size=7, data_range=1.0, scales=scales,
                                          return_values=True)["values"]

    def monai() -> None:
        values["monai"] = _monai_all_pairs(vols, scales)

    stats = {}
    for name, fn in (("ours", ours), ("monai", monai)):
        stats[name] = summarize(time_repeats(fn, repeats=a.repeats, warmup=0))
        logger.info("%s: median %.2f s (min %.2f, max %.2f) for %d pairs", name,
                    stats[name]["median_s"], stats[name]["min_s"], stats[name]["max_s"], pairs)
    max_diff = float(np.abs(values["ours"] - values["monai"]).max())
    med = {k: v["median_s"] for k, v in stats.items()}
    rows = [{"impl": k, "n_volumes": a.n, "size": a.size, "scales": scales, "pairs": pairs,
             "repeats": stats[k]["repeats"], "threads": a.threads, "median_s": med[k],
             "min_s": stats[k]["min_s"], "max_s": stats[k]["max_s"],
             "ms_per_pair": 1e3 * med[k] / pairs, "speedup_vs_monai": med["monai"] / med[k],
             "max_abs_diff_vs_monai": max_diff, "mean_ms_ssim": float(np.mean(values[k]))}
            for k in ("ours", "monai")]
    write_rows(rows, a.out)
    print_rows(rows)
    sys.stdout.write(f"speed-up (MONAI median / ours median): {med['monai'] / med['ours']:.1f}x; "
                     f"max |ours - MONAI| = {max_diff:.2e}\n")
    return rows


if __name__ == "__main__":
    main()
