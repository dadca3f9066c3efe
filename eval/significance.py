"""Is model A better than model B? A paired bootstrap of FID / KID differences, and shared ranks.

Pure functions over numpy arrays, float64, no I/O. References:

- Bootstrap: Efron & Tibshirani, "An Introduction to the Bootstrap", 1993 (percentile interval,
  ch. 13; the bootstrap test of a difference, ch. 16). Resamples are count vectors: a resample
  with replacement of N points is a vector c of multiplicities (sum N), and its mean and
  covariance (ddof=1) are weighted sums over the distinct points.
- FID: Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", NeurIPS 2017; KID: Bińkowski et al., "Demystifying MMD GANs", ICLR 2018.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from eval.fidelity import _features, _same_width, kid, poly_kernel, within_sums
from eval.metrics import _clip_eigenvalues, fid_from_features, frechet_distance
from wdm.io import InputError

__all__ = ["fid_replicates", "fast_fid_bootstrap_ci", "kid_bootstrap_ci", "paired_bootstrap", "share_ranks"]

METRICS = ("fid", "kid")


def _workers(n_jobs: int | None) -> int:
    if n_jobs is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if n_jobs < 1:
        raise InputError(f"n_jobs must be >= 1 or None (all cores), got {n_jobs}")
    return int(n_jobs)


def _map(fn: Callable[[int], np.ndarray], n: int, workers: int) -> list[np.ndarray]:
    """``[fn(t) for t in range(n)]``, on ``workers`` threads with single-threaded BLAS each.

    Each replicate is a few mid-sized LAPACK calls, which scale poorly over BLAS threads; one
    replicate per core is ~2× faster. Needs ``threadpoolctl`` (installed with scikit-learn) to
    pin BLAS to one thread while the pool runs (process-wide); without it, runs serially.
    """
    if workers > 1 and n > 1:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            workers = 1
    if workers <= 1 or n <= 1:
        return [fn(t) for t in range(n)]
    with threadpool_limits(1), ThreadPoolExecutor(workers) as ex:
        return list(ex.map(fn, range(n)))


# ------------------------------------------------------------------- FID of count resamples
def _weighted_stats(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F), ddof=1, of the resample of rows ``x`` (N, F) with counts c."""
    n = c.sum()
    mu = c @ x / n
    d = x - mu
    return mu, (d.T @ (d * c[:, None])) / (n - 1)


def _gram_side(k: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Weights s = c / N, |μ*|² and tr Σ* of the resample with counts c, from its Gram matrix k."""
    n = c.sum()
    s = c / n
    mu2 = float(s @ k @ s)
    return s, mu2, float((c @ np.diagonal(k) - n * mu2) / (n - 1))


def _gram_fid(g: np.ndarray, cr: np.ndarray, cf: np.ndarray, side_r: tuple, side_f: tuple) -> float:
    """FID of two resamples (counts cr (N_r,), cf (N_f,)) from the cross-Gram g = R Fᵀ (N_r, N_f).

    With centred resample rows, Σ_r* Σ_f* has the non-zero eigenvalues of M Mᵀ,
    M_ij = sqrt(cr_i cf_j) (r_i - μ_r*)·(f_j - μ_f*) / sqrt((N_r - 1)(N_f - 1)) over the distinct
    drawn points i, j (as in :func:`eval.metrics.fid_from_features`, ~63% of N each).
    """
    (sr, mu2_r, tr_r), (sf, mu2_f, tr_f) = side_r, side_f
    ur, uf = np.flatnonzero(cr), np.flatnonzero(cf)
    g_sf, sr_g = g @ sf, sr @ g
    cross = float(sr @ g_sf)
    m = g[np.ix_(ur, uf)]
    m -= g_sf[ur, None]
    m -= (sr_g[uf] - cross)[None, :]
    m *= np.sqrt(cr[ur])[:, None]
    m *= (np.sqrt(cf[uf]) / math.sqrt((cr.sum() - 1) * (cf.sum() - 1)))[None, :]
    a = m @ m.T if len(ur) <= len(uf) else m.T @ m
    tr_covmean = float(np.sqrt(_clip_eigenvalues(np.linalg.eigvalsh(a))).sum())
    return max(mu2_r + mu2_f - 2.0 * cross + tr_r + tr_f - 2.0 * tr_covmean, 0.0)


def fid_replicates(real: np.ndarray, fakes: Sequence[np.ndarray], counts_real: np.ndarray,
                   counts_fakes: Sequence[np.ndarray], *, n_jobs: int | None = None) -> np.ndarray:
    """FID (B, K) of the resamples of ``real`` (N_r, F) against those of each of K fake sets.

    Replicate t pairs counts ``counts_real[t]`` (B, N_r) with ``counts_fakes[k][t]`` (B, N_k) for
    every k (one real resample shared by all fakes). Equal, up to rounding, to
    :func:`eval.metrics.fid_from_features` of the explicit resamples, without forming them: all
    sets are centred by the real mean (FID is translation invariant), Gram matrices are computed
    once and each replicate costs one eigenvalue problem of the ~0.63 N distinct drawn points
    (:func:`_gram_fid`); when F is small (3F <= min N) the F × F Fréchet form of weighted
    covariances is used instead. Replicates run on ``n_jobs`` threads (None: all cores).
    """
    centre = real.mean(0)
    r = real - centre
    fs = [f - centre for f in fakes]
    feature_space = 3 * r.shape[1] <= min(len(x) for x in (r, *fs))
    if not feature_space:
        k_rr = r @ r.T
        k_ff = [f @ f.T for f in fs]
        g_rf = [r @ f.T for f in fs]

    def one(t: int) -> np.ndarray:
        cr = counts_real[t].astype(np.float64)
        cfs = [c[t].astype(np.float64) for c in counts_fakes]
        if feature_space:
            stats_r = _weighted_stats(r, cr)
            return np.array([frechet_distance(*stats_r, *_weighted_stats(f, c))
                             for f, c in zip(fs, cfs, strict=True)])
        side_r = _gram_side(k_rr, cr)
        return np.array([_gram_fid(g, cr, c, side_r, _gram_side(k, c))
                         for g, k, c in zip(g_rf, k_ff, cfs, strict=True)])

    return np.stack(_map(one, len(counts_real), _workers(n_jobs)))


def _draw(rng: np.random.Generator, sizes: Sequence[int], n_bootstrap: int) -> list[np.ndarray]:
    """Resample indices (B, N_i) per set; drawn replicate by replicate, set by set, in this order:
    ``rng.integers(0, N, N)`` (the draws of :func:`eval.metrics.fid_bootstrap_ci`)."""
    out = [np.empty((n_bootstrap, n), np.int64) for n in sizes]
    for t in range(n_bootstrap):
        for i, n in enumerate(sizes):
            out[i][t] = rng.integers(0, n, n)
    return out


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Multiplicities (B, n) int64 of the resample indices ``idx`` (B, m) over n points."""
    b = len(idx)
    return np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _check_bootstrap(n_bootstrap: int, level: float) -> None:
    if n_bootstrap < 2:
        raise InputError(f"n_bootstrap must be >= 2, got {n_bootstrap}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")


def fast_fid_bootstrap_ci(feats_a: np.ndarray, feats_b: np.ndarray, *, n_bootstrap: int = 200,
                          level: float = 0.95, seed: int = 0,
                          n_jobs: int | None = None) -> tuple[float, float]:
    """:func:`eval.metrics.fid_bootstrap_ci` (same resamples, same interval up to rounding), faster.

    Percentile bootstrap interval (Efron & Tibshirani 1993) of the FID of features (N_a, F) and
    (N_b, F), both resampled with replacement, ``numpy.random.default_rng(seed)``; each resample's
    FID by :func:`fid_replicates` (one small eigenvalue problem each, no resampled copies).
    """
    _check_bootstrap(n_bootstrap, level)
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    _same_width(a, b, "feats_a and feats_b")
    ia, ib = _draw(np.random.default_rng(seed), (len(a), len(b)), n_bootstrap)
    vals = fid_replicates(a, [b], _counts(ia, len(a)), [_counts(ib, len(b))], n_jobs=n_jobs)[:, 0]
    return _percentile_ci(vals, level)


# ------------------------------------------------------------------- KID of count resamples
def _subset_counts(idx: np.ndarray, n: int, m: int, n_subsets: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """Counts (B·S, n) of S subsets of m positions, without replacement, of each resample idx (B, N).

    With m = N every subset is the whole resample (one row per replicate is then enough: the
    caller passes n_subsets = 1).
    """
    b, size = idx.shape
    if m == size:
        rows = np.repeat(idx, n_subsets, axis=0)
    else:
        pos = rng.permuted(np.tile(np.arange(size), (b * n_subsets, 1)), axis=1)[:, :m]
        rows = np.take_along_axis(np.repeat(idx, n_subsets, axis=0), pos, axis=1)
    return _counts(rows, n).astype(np.float64)


def _kid_replicates(real: np.ndarray, fakes: Sequence[np.ndarray], idx_real: np.ndarray,
                    idx_fakes: Sequence[np.ndarray], m: int, n_subsets: int,
                    rng: np.random.Generator, chunk: int = 100) -> np.ndarray:
    """Mean KID over ``n_subsets`` subsets (B, K) of each replicate, from kernels computed once.

    Replicate t: real resample ``idx_real[t]``, fake resamples ``idx_fakes[k][t]``; the same real
    subsets for every fake set. Unbiased MMD² by :func:`eval.fidelity.within_sums` on counts.
    """
    k_rr = poly_kernel(real, real)
    kernels = [(poly_kernel(f, f), poly_kernel(real, f)) for f in fakes]
    out = np.empty((len(idx_real), len(fakes)))
    norm = m * (m - 1)
    for t0 in range(0, len(idx_real), chunk):
        sl = slice(t0, t0 + chunk)
        wr = _subset_counts(idx_real[sl], len(real), m, n_subsets, rng)
        within_r = within_sums(k_rr, wr) / norm
        for j, (f, (k_ff, k_rf)) in enumerate(zip(fakes, kernels, strict=True)):
            wf = _subset_counts(idx_fakes[j][sl], len(f), m, n_subsets, rng)
            cross = np.einsum("si,si->s", wr @ k_rf, wf) / (m * m)
            mmd2 = within_r + within_sums(k_ff, wf) / norm - 2.0 * cross
            out[sl, j] = mmd2.reshape(-1, n_subsets).mean(1)
    return out


def _paired_kid(r: np.ndarray, a: np.ndarray, b: np.ndarray, idx: tuple[np.ndarray, ...],
                kid_subsets: int, kid_subset_size: int | None, seed: int, rng: np.random.Generator
                ) -> tuple[tuple[float, float], np.ndarray]:
    """Full-set subset-mean KIDs of a and b and their replicates (B, 2) for :func:`paired_bootstrap`."""
    m, s = _kid_subset_size((len(r), len(a), len(b)), kid_subset_size, kid_subsets)
    full = tuple(kid(r, f, subset_size=m, n_subsets=s, seed=seed)["mean"] for f in (a, b))
    return full, _kid_replicates(r, [a, b], idx[0], list(idx[1:]), m, s, rng)


def _kid_subset_size(sizes: Sequence[int], subset_size: int | None, n_subsets: int) -> tuple[int, int]:
    """(m, S): KID subset size (None: the smallest set) and subsets per replicate (1 when m is every
    set's size: then each subset is the whole resample)."""
    n_min = min(sizes)
    m = n_min if subset_size is None else int(subset_size)
    if not 2 <= m <= n_min:
        raise InputError(f"kid_subset_size must be in 2..{n_min} (the smallest set), got {subset_size}")
    if n_subsets < 1:
        raise InputError(f"kid_subsets must be >= 1, got {n_subsets}")
    return m, (1 if all(n == m for n in sizes) else n_subsets)


def kid_bootstrap_ci(feats_a: np.ndarray, feats_b: np.ndarray, *, n_bootstrap: int = 200,
                     level: float = 0.95, seed: int = 0, n_subsets: int = 10,
                     subset_size: int | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of KID (Bińkowski et al. 2018).

    Features (N_a, F) and (N_b, F), both resampled with replacement
    (``numpy.random.default_rng(seed)``); each replicate's KID is the mean unbiased MMD² over
    ``n_subsets`` subsets of ``subset_size`` points (None: min(N_a, N_b); then the subset is the
    whole resample) drawn without replacement from the resamples, from kernels computed once.
    The interval reflects both sets' sampling noise, unlike the std over subsets of one set.
    """
    _check_bootstrap(n_bootstrap, level)
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    _same_width(a, b, "feats_a and feats_b")
    m, s = _kid_subset_size((len(a), len(b)), subset_size, n_subsets)
    rng = np.random.default_rng(seed)
    ia, ib = _draw(rng, (len(a), len(b)), n_bootstrap)
    return _percentile_ci(_kid_replicates(a, [b], ia, [ib], m, s, rng)[:, 0], level)


# ---------------------------------------------------------------------------- paired test
def _p_value(deltas: np.ndarray) -> float:
    """Two-sided bootstrap p-value of H0: difference = 0, ``2 min(P(Δ* <= 0), P(Δ* >= 0))``.

    The smallest 1 - level at which the percentile interval still excludes 0 (Efron & Tibshirani
    1993, ch. 16); with B replicates clipped to [1 / (B + 1), 1], as no B replicates can show less.
    """
    b = len(deltas)
    p = 2.0 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0)))
    return float(min(max(p, 1.0 / (b + 1)), 1.0))


def paired_bootstrap(real: np.ndarray, fake_a: np.ndarray, fake_b: np.ndarray, *, metric: str,
                     n_bootstrap: int = 1000, seed: int = 0, level: float = 0.95,
                     kid_subsets: int = 10, kid_subset_size: int | None = None,
                     n_jobs: int | None = None) -> dict:
    """Paired bootstrap of ``metric(real, a) - metric(real, b)`` for features (N_r, F), (N_a, F), (N_b, F).

    Each of ``n_bootstrap`` replicates resamples the real set and both fake sets with replacement
    (``numpy.random.default_rng(seed)``; one real resample shared by a and b, so their common
    real-set noise cancels) and evaluates Δ* = metric(real*, a*) - metric(real*, b*).
    ``metric="fid"``: :func:`fid_replicates` (exact FID of each resample, ~0.6 s per 10
    replicates at N = 1000, F = 2048 on 2 cores). ``metric="kid"``: the mean unbiased MMD² over
    ``kid_subsets`` subsets (default 10, fewer than :func:`eval.fidelity.kid`'s 100, for speed) of
    ``kid_subset_size`` points (None: min(N_r, N_a, N_b), one size for both comparisons) drawn
    without replacement from each resample; when that is every set's size the subsets are the
    whole resamples and one is computed. Returns ``{"difference"`` (Δ on the full sets, the same
    statistic: FID, or that subset-mean KID with the same subsets of the real set for a and b),
    ``"ci_low", "ci_high"`` (percentile interval at ``level``), ``"p_value"`` (:func:`_p_value`),
    ``"n_bootstrap", "a", "b"`` (the two full-set values)``}``. Negative Δ: a is closer to real.
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    _check_bootstrap(n_bootstrap, level)
    r, a, b = (_features(x, n) for x, n in ((real, "real"), (fake_a, "fake_a"), (fake_b, "fake_b")))
    _same_width(r, a, "real and fake_a")
    _same_width(r, b, "real and fake_b")
    rng = np.random.default_rng(seed)
    ir, ia, ib = _draw(rng, (len(r), len(a), len(b)), n_bootstrap)
    if metric == "fid":
        full = (fid_from_features(r, a), fid_from_features(r, b))
        reps = fid_replicates(r, [a, b], _counts(ir, len(r)), [_counts(ia, len(a)), _counts(ib, len(b))],
                              n_jobs=n_jobs)
    else:
        full, reps = _paired_kid(r, a, b, (ir, ia, ib), kid_subsets, kid_subset_size, seed, rng)
    deltas = reps[:, 0] - reps[:, 1]
    lo, hi = _percentile_ci(deltas, level)
    return {"difference": float(full[0] - full[1]), "ci_low": lo, "ci_high": hi,
            "p_value": _p_value(deltas), "n_bootstrap": int(n_bootstrap), "a": float(full[0]),
            "b": float(full[1])}


def share_ranks(intervals: Sequence[tuple[float, float]]) -> list[int]:
    """1-based ranks (K,) of K models from their (low, high) intervals of a lower-is-better metric.

    Chaining rule: two models are tied when their closed intervals overlap, and ties are
    transitive (A overlaps B and B overlaps C: A, B, C share a rank even if A and C do not), so
    the groups are the connected runs of overlapping intervals along the line. Groups are ordered
    by position (lowest first) and ranked competition-style: a group's rank is 1 + the number of
    models in lower groups (e.g. [1, 1, 3]). Given sorted by their means, as usual, the first
    model has rank 1; the result does not depend on the input order. For a higher-is-better
    metric pass (-high, -low).
    """
    iv = np.asarray(intervals, np.float64)
    if iv.ndim != 2 or iv.shape[1] != 2 or len(iv) < 1:
        raise InputError(f"intervals must be a sequence of (low, high) pairs, got shape {iv.shape}")
    if not np.isfinite(iv).all() or (iv[:, 0] > iv[:, 1]).any():
        raise InputError("intervals must be finite with low <= high")
    group = np.empty(len(iv), np.int64)
    current, reach = -1, -np.inf
    for i in np.argsort(iv[:, 0], kind="stable"):
        if iv[i, 0] > reach:
            current += 1
        group[i] = current
        reach = max(reach, iv[i, 1])
    first = 1 + np.concatenate([[0], np.cumsum(np.bincount(group))[:-1]])
    return [int(first[g]) for g in group]
