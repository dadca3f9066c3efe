"""Benchmark: wall time of the evaluation metrics on random features, N = 1000 and 2048, F = 2048.

For each N: real, two fake and a held-out set of N seeded Gaussian features (F = 2048, the width of
Inception-style features; fake b shifted by 0.05) and times, in this one process with
``bench.common.time_repeats`` (``--repeats`` >= 3 runs each after one untimed FID per N; no
per-metric warm-up, numpy has nothing to compile):

- ``fid``: ``eval.metrics.fid_from_features``;
- ``fid_bootstrap_ci``: ``eval.metrics.fid_bootstrap_ci``, 200 resamples. It costs one full FID
  per resample (two 2048² eigendecompositions once N >= F), ~20 min a run at N = 2048, so at
  N >= F it is timed on ``--ref-resamples`` resamples and scaled to 200 (it is nothing but that
  loop; column ``extrapolated``);
- ``fast_fid_bootstrap_ci``: ``eval.significance.fast_fid_bootstrap_ci``, the same 200 resamples
  through count vectors (one small eigenvalue problem each);
- ``kid_bootstrap_ci``: ``eval.significance.kid_bootstrap_ci``, 200 resamples, 10 subsets each;
- ``evaluate_feature_scores``: ``eval.scores.feature_scores`` at the schema's defaults, i.e. what
  ``wdm-bench evaluate`` computes from the features (FID, both intervals, KID, FID∞, PRDC, MMD);
- ``fid_infinity`` (15 points), ``kid`` (100 subsets of the default size min(N_a, N_b)),
  ``prdc`` (k = 5), ``memorisation`` (Euclidean nearest training neighbour of the N generated and
  the N held-out features, and ``memorisation_report``);
- ``paired_fid`` / ``paired_kid``: ``eval.significance.paired_bootstrap``, 1000 replicates (KID:
  the default 10 subsets, here of the whole resample); at N >= F estimated from a line through the
  times at 2 and ``--large-replicates`` replicates (a fixed cost for the full-set values and the
  kernel / Gram matrices, then the same cost per replicate).

Prints a table of medians plus the total of the set (with the reference bootstrap and with the fast
one) per N, and writes ``results/bench/metrics.csv`` atomically; column ``load_1m`` is the 1-minute
load average after each metric (other processes on the machine inflate the times). Cost at the
defaults on 2 cores: ~8 min at N = 1000 (the reference bootstrap interval alone: 3 × ~1 min) and
~10 min at N = 2048 for 3 repeats, when the machine is otherwise idle.

Run:  python bench/bench_metrics.py [--sizes 1000 2048] [--dim 2048] [--repeats 3] [--only METRIC ...]
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
from eval.scores import feature_scores  # noqa: E402
from eval.significance import fast_fid_bootstrap_ci, kid_bootstrap_ci, paired_bootstrap  # noqa: E402
from wdm.config import EvaluationSettings  # noqa: E402

logger = logging.getLogger("bench.metrics")

#: the schema's evaluation defaults (FID and KID intervals of 200 resamples, KID on 100 subsets).
DEFAULTS = EvaluationSettings.from_mapping(None)

#: Metrics of the set whose total is reported (the reference or the fast bootstrap interval).
SET = ("fid", "fid_infinity", "kid", "kid_bootstrap_ci", "prdc", "memorisation", "paired_fid", "paired_kid")


def _features(n: int, dim: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded (n, dim) float64 Gaussian features: real, fake_a, fake_b (+0.05), test."""
    rng = np.random.default_rng(seed)
    return {"real": rng.normal(size=(n, dim)), "fake_a": rng.normal(size=(n, dim)),
            "fake_b": rng.normal(size=(n, dim)) + 0.05, "test": rng.normal(size=(n, dim))}


#: Resamples / replicates of the metrics that have them (the count the set is timed at).
FULL = {"fid_bootstrap_ci": 200, "fast_fid_bootstrap_ci": 200, "kid_bootstrap_ci": 200, "paired_fid": 1000,
        "paired_kid": 1000}


def _cases(f: dict[str, np.ndarray]) -> list[tuple[str, Callable[[int], Any]]]:
    """(name, fn): ``fn(count)`` runs the metric with ``count`` resamples / replicates (ignored by
    metrics without any, see :data:`FULL`)."""
    real, a, b, test = f["real"], f["fake_a"], f["fake_b"], f["test"]

    def memorisation() -> dict:
        return memorisation_report(nearest_neighbours(a, real, metric="euclidean"),
                                   nearest_neighbours(test, real, metric="euclidean"))

    return [
        ("fid", lambda _: fid_from_features(real, a)),
        ("fid_bootstrap_ci", lambda c: fid_bootstrap_ci(real, a, n_bootstrap=c)),
        ("fast_fid_bootstrap_ci", lambda c: fast_fid_bootstrap_ci(real, a, n_bootstrap=c)),
        ("fid_infinity", lambda _: fid_infinity(real, a, n_points=15)["fid_inf"]),
        ("kid", lambda _: kid(real, a, n_subsets=100)["mean"]),
        ("kid_bootstrap_ci", lambda c: kid_bootstrap_ci(real, a, n_bootstrap=c, n_subsets=10)),
        ("prdc", lambda _: prdc(real, a, k=5)["precision"]),
        ("memorisation", lambda _: memorisation()["fraction"]),
        ("paired_fid", lambda c: paired_bootstrap(real, a, b, metric="fid", n_bootstrap=c)["p_value"]),
        ("paired_kid", lambda c: paired_bootstrap(real, a, b, metric="kid", n_bootstrap=c)["p_value"]),
        # what `wdm-bench evaluate` runs on the features, at the schema's defaults
        ("evaluate_feature_scores", lambda _: feature_scores(real, a, DEFAULTS)["kid"]),
    ]


def _timings(fn: Callable[[int], Any], count: int, repeats: int, out: dict[str, Any]) -> list[float]:
    def run() -> None:
        out["value"] = fn(count)

    return time_repeats(run, repeats=repeats, warmup=0)


def _measure(name: str, fn: Callable[[int], Any], large: bool, a: argparse.Namespace,
             out: dict[str, Any]) -> tuple[list[float], int | None]:
    """Times (one per repeat) of the metric at its full count; at N >= F estimated from fewer.

    ``fid_bootstrap_ci`` (nothing but its loop) is scaled linearly from ``--ref-resamples``; the
    paired bootstraps (full-set metrics and kernels / Gram matrices first, a fixed cost) from a
    line through 2 and ``--large-replicates`` replicates, timed repeat by repeat.
    """
    full = FULL.get(name)
    timed = {"fid_bootstrap_ci": a.ref_resamples, "paired_fid": a.large_replicates,
             "paired_kid": a.large_replicates}.get(name) if large else None
    if full is None or timed is None or timed >= full:
        return _timings(fn, full or 0, a.repeats, out), full
    t_big = _timings(fn, timed, a.repeats, out)
    if name == "fid_bootstrap_ci":
        return [t * full / timed for t in t_big], timed
    t_two = _timings(fn, 2, a.repeats, {})
    return [t2 + (tb - t2) * (full - 2) / (timed - 2) for t2, tb in zip(t_two, t_big, strict=True)], timed


def _time_size(n: int, a: argparse.Namespace) -> list[dict[str, Any]]:
    feats = _features(n, a.dim, a.seed + n)
    fid_from_features(feats["real"], feats["fake_a"])  # untimed: first touch of the arrays
    rows = []
    for name, fn in _cases(feats):
        if a.only and name not in a.only:
            continue
        out: dict[str, Any] = {}
        times, timed = _measure(name, fn, n >= a.dim, a, out)
        st = summarize(times)
        value = out["value"]
        rows.append({"metric": name, "n": n, "dim": a.dim, "repeats": st["repeats"],
                     "median_s": st["median_s"], "min_s": st["min_s"], "max_s": st["max_s"],
                     "extrapolated": timed != FULL.get(name), "timed_resamples": timed,
                     "value": value[0] if isinstance(value, tuple) else value,
                     "load_1m": os.getloadavg()[0]})
        logger.info("N=%d %s: median %.2f s%s", n, name, st["median_s"],
                    f" (estimated from {timed} resamples)" if rows[-1]["extrapolated"] else "")
    return rows


def _totals(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Sum of the medians of :data:`SET` plus either bootstrap interval, at N = n."""
    by_name = {r["metric"]: r for r in rows if r["n"] == n}
    out = []
    for ci in ("fid_bootstrap_ci", "fast_fid_bootstrap_ci"):
        names = (*SET, ci)
        if not set(names) <= set(by_name):  # --only: no total of a partial set
            continue
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
    p.add_argument("--only", nargs="+", default=None, metavar="METRIC",
                   help="time only these metrics (no totals unless the whole set is timed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="metrics", help="CSV path, or a name under results/bench/")
    a = p.parse_args(argv)
    known = [name for name, _ in _cases(_features(2, 2, 0))]
    if a.only and set(a.only) - set(known):
        p.error(f"--only {sorted(set(a.only) - set(known))}: unknown, expected some of {known}")
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
