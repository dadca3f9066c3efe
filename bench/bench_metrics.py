"""Benchmark: wall time of the evaluation metrics on random features, N = 1000 and 2048, F = 2048.

For each N: real, two fake and a held-out set of N seeded Gaussian features (F = 2048, the width of
Inception-style features; fake b shifted by 0.05) and times, in this one process with
``bench.common.time_repeats`` (``--repeats`` >= 3 runs each after one untimed FID per N; no
per-metric warm-up, numpy has nothing to compile):

- ``fid``: ``eval.metrics.fid_from_features``;
- ``fid_bootstrap_ci``: ``eval.metrics.fid_bootstrap_ci``, 200 resamples. It costs one full FID
  per resample (two 2048² eigendecompositions once N >= F), ~20 min a run at N = 2048, so at
  N >= F it is timed on ``--ref-resamples`` resamples and scaled to 200 (the loop's cost is linear
  in the resamples; column ``extrapolated``);
- ``fast_fid_bootstrap_ci``: ``eval.significance.fast_fid_bootstrap_ci``, the same 200 resamples
  through count vectors (one small eigenvalue problem each);
- ``fid_infinity`` (15 points), ``kid`` (100 subsets of the default size min(N_a, N_b)),
  ``prdc`` (k = 5), ``memorisation`` (Euclidean nearest training neighbour of the N generated and
  the N held-out features, and ``memorisation_report``);
- ``paired_fid`` / ``paired_kid``: ``eval.significance.paired_bootstrap``, 1000 replicates (KID:
  the default 10 subsets, here of the whole resample); at N >= F timed on ``--large-replicates``
  replicates and scaled to 1000 (a replicate costs the same each time; the one-off Gram matrices,
  ~1 s, are then counted 1000 / replicates times: a slight over-estimate).

Prints a table of medians plus the total of the set (with the reference bootstrap and with the fast
one) per N, and writes ``results/bench/metrics.csv`` atomically; column ``load_1m`` is the 1-minute
load average after each metric (other processes on the machine inflate the times). Cost at the
defaults on 2 cores: ~8 min at N = 1000 (the reference bootstrap interval alone: 3 × ~1 min) and
~10 min at N = 2048 for 3 repeats, when the machine is otherwise idle.

Run:  python bench/bench_metrics.py [--sizes 1000 2048] [--dim 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, print_rows, setup_logging, summarize, time_repeats, write_rows  # noqa: E402
from eval.fidelity import fid_infinity, kid, prdc  # noqa: E402
from eval.memorisation import memorisation_report, nearest_neighbours  # noqa: E402
from eval.metrics import fid_bootstrap_ci, fid_from_features  # noqa: E402
from eval.significance import fast_fid_bootstrap_ci, paired_bootstrap  # noqa: E402

logger = logging.getLogger("bench.metrics")

#: Metrics of the set whose total is reported (the reference or the fast bootstrap interval).
SET = ("fid", "fid_infinity", "kid", "prdc", "memorisation", "paired_fid", "paired_kid")


def _features(n: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded (n, dim) float64 Gaussian features: real, fake_a, fake_b (+0.05), test."""
    rng = np.random.default_rng(seed)
    return {"real": rng.normal(size=(n, dim)), "fake_a": rng.normal(size=(n, dim)),
            "fake_b": rng.normal(size=(n, dim)) + 0.05, "test": rng.normal(size=(n, dim))}


def _cases(f: dict[str, np.ndarray], ref_resamples: int, replicates: int
           ) -> list[tuple[str, int, Callable[[], Any]]]:
    """(name, scale, fn): fn's median time × scale estimates the metric's time.

    ``ref_resamples`` of the 200 of ``fid_bootstrap_ci`` and ``replicates`` of the 1000 of the
    paired bootstraps are timed (all of them unless N >= F); their loops cost the same per resample.
    """
    real, a, b, test = f["real"], f["fake_a"], f["fake_b"], f["test"]

    def memorisation() -> dict:
        return memorisation_report(nearest_neighbours(a, real, metric="euclidean"),
                                   nearest_neighbours(test, real, metric="euclidean"))

    return [
        ("fid", 1, lambda: fid_from_features(real, a)),
        ("fid_bootstrap_ci", 200 // ref_resamples,
         lambda: fid_bootstrap_ci(real, a, n_bootstrap=ref_resamples)),
        ("fast_fid_bootstrap_ci", 1, lambda: fast_fid_bootstrap_ci(real, a, n_bootstrap=200)),
        ("fid_infinity", 1, lambda: fid_infinity(real, a, n_points=15)["fid_inf"]),
        ("kid", 1, lambda: kid(real, a, n_subsets=100)["mean"]),
        ("prdc", 1, lambda: prdc(real, a, k=5)["precision"]),
        ("memorisation", 1, lambda: memorisation()["fraction"]),
        ("paired_fid", 1000 // replicates,
         lambda: paired_bootstrap(real, a, b, metric="fid", n_bootstrap=replicates)["p_value"]),
        ("paired_kid", 1000 // replicates,
         lambda: paired_bootstrap(real, a, b, metric="kid", n_bootstrap=replicates)["p_value"]),
    ]


def _timed(name: str, scale: int) -> int | None:
    """Resamples / replicates actually run per timed call (None for metrics without any)."""
    full = {"fid_bootstrap_ci": 200, "fast_fid_bootstrap_ci": 200, "paired_fid": 1000, "paired_kid": 1000}
    return full[name] // scale if name in full else None


def _time_size(n: int, a: argparse.Namespace) -> list[dict[str, Any]]:
    feats = _features(n, a.dim, a.seed + n)
    fid_from_features(feats["real"], feats["fake_a"])  # untimed: first touch of the arrays
    large = n >= a.dim
    rows = []
    for name, scale, fn in _cases(feats, a.ref_resamples if large else 200,
                                  a.large_replicates if large else 1000):
        out: dict[str, Any] = {}

        def run(fn: Callable[[], Any] = fn, out: dict[str, Any] = out) -> None:
            out["value"] = fn()

        st = summarize(time_repeats(run, repeats=a.repeats, warmup=0))
        value = out["value"]
        rows.append({"metric": name, "n": n, "dim": a.dim, "repeats": st["repeats"],
                     "median_s": st["median_s"] * scale, "min_s": st["min_s"] * scale,
                     "max_s": st["max_s"] * scale, "extrapolated": scale > 1,
                     "timed_resamples": _timed(name, scale),
                     "value": value[0] if isinstance(value, tuple) else value,
                     "load_1m": os.getloadavg()[0]})
        logger.info("N=%d %s: median %.2f s%s", n, name, rows[-1]["median_s"],
                    f" (x{scale} of {_timed(name, scale)} resamples)" if scale > 1 else "")
    return rows


def _totals(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Sum of the medians of :data:`SET` plus either bootstrap interval, at N = n."""
    by_name = {r["metric"]: r for r in rows if r["n"] == n}
    out = []
    for ci in ("fid_bootstrap_ci", "fast_fid_bootstrap_ci"):
        names = (*SET, ci)
        out.append({"metric": f"total (set + {ci})", "n": n,
                    "median_s": sum(by_name[m]["median_s"] for m in names),
                    "extrapolated": any(by_name[m]["extrapolated"] for m in names)})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2048], help="N of every set")
    p.add_argument("--dim", type=int, default=2048, help="feature width F")
    p.add_argument("--repeats", type=int, default=MIN_REPEATS, help=f"timed runs (>= {MIN_REPEATS})")
    p.add_argument("--ref-resamples", type=int, default=5,
                   help="resamples timed for eval.metrics.fid_bootstrap_ci when N >= F (a divisor of 200)")
    p.add_argument("--large-replicates", type=int, default=100,
                   help="replicates timed for the paired bootstraps when N >= F (a divisor of 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="metrics", help="CSV path, or a name under results/bench/")
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    if min(a.sizes) < 10:
        p.error(f"--sizes must be >= 10, got {a.sizes}")
    if a.ref_resamples < 2 or 200 % a.ref_resamples:
        p.error(f"--ref-resamples must be a divisor of 200 and >= 2, got {a.ref_resamples}")
    if a.large_replicates < 2 or 1000 % a.large_replicates:
        p.error(f"--large-replicates must be a divisor of 1000 and >= 2, got {a.large_replicates}")
    return a


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the benchmark; return the rows written to the CSV."""
    a = parse_args(argv)
    setup_logging()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows: list[dict[str, Any]] = []
    for n in a.sizes:
        rows += _time_size(n, a)
    rows += [t for n in a.sizes for t in _totals(rows, n)]
    for r in rows:
        r["cores"] = cores
    write_rows(rows, a.out)
    print_rows(rows, ["metric", "n", "median_s", "min_s", "max_s", "extrapolated", "value", "load_1m"])
    return rows


if __name__ == "__main__":
    main()
