"""Fidelity metrics on feature arrays: KID, FID∞ and precision / recall / density / coverage.

Pure functions over numpy arrays, float64, no I/O. References:

- KID: Bińkowski, Sutherland, Arbel & Gretton, "Demystifying MMD GANs", ICLR 2018 (unbiased MMD²
  with the cubic polynomial kernel, averaged over random subsets; the formula of torchmetrics'
  ``KernelInceptionDistance``).
- FID∞: Chong & Forsyth, "Effectively Unbiased FID and Inception Score and where to find them",
  CVPR 2020 (FID at several sample sizes N, a line in 1/N extrapolated to N = ∞).
- Precision / recall: Kynkäänniemi, Karras, Laine, Lehtinen & Aila, "Improved Precision and Recall
  Metric for Assessing Generative Models", NeurIPS 2019; density / coverage: Naeem, Oh, Uh, Choi &
  Yoo, "Reliable Fidelity and Diversity Metrics for Generative Models", ICML 2020 (definitions of
  their reference package ``prdc``, ``compute_prdc``).
"""

from __future__ import annotations

import numpy as np

from eval.metrics import fid_from_features
from wdm.io import InputError

__all__ = ["pairwise_distances", "poly_kernel", "within_sums", "unbiased_mmd2_counts", "kid",
           "fid_infinity", "prdc"]

#: Largest total size (bytes) of the three full kernel matrices :func:`kid` precomputes.
_KERNEL_BYTES = 1 << 30


def _features(x: np.ndarray, name: str, min_rows: int = 2) -> np.ndarray:
    """``x`` as a finite float64 array (N, F) with N >= ``min_rows``; InputError otherwise."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < min_rows or a.shape[1] < 1:
        raise InputError(f"{name} must be features of shape (N >= {min_rows}, F >= 1), got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(f"{name} must be finite, got NaN/Inf")
    return a


def _same_width(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise InputError(f"{names} must have the same feature width F, got {a.shape[1]} and {b.shape[1]}")


def pairwise_distances(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances (N_a, N_b) float64 between the rows of ``a`` (N_a, F) and ``b`` (N_b, F).

    ``sqrt(max(|a|² + |b|² - 2 a·b, 0))`` (the expansion scikit-learn's ``euclidean_distances``
    uses in float64). With ``b=None`` the distances within ``a``, diagonal set to exactly 0.
    """
    a = np.asarray(a, np.float64)
    same = b is None
    b = a if same else np.asarray(b, np.float64)
    sa, sb = (a * a).sum(1), (b * b).sum(1)
    d2 = sa[:, None] + sb[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    if same:
        np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2, out=d2)


def poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Cubic polynomial kernel ``(xᵀy / F + 1)³`` of Bińkowski et al. (2018): (N, F), (M, F) -> (N, M)."""
    k = x @ y.T
    k /= x.shape[1]
    k += 1.0
    return k * k * k


def within_sums(k: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Off-diagonal kernel sums (S,) of S multisets: ``wᵀ K w - Σ_i w_i K_ii`` per row of ``w``.

    ``k`` (N, N) kernel matrix over the distinct points, ``w`` (S, N) counts (how often each point
    is in the multiset). The diagonal is dropped position by position, so a point drawn twice is
    paired with its copy (as in the explicit multiset).
    """
    return np.einsum("si,si->s", w @ k, w) - w @ np.diagonal(k)


def unbiased_mmd2_counts(k_aa: np.ndarray, k_bb: np.ndarray, k_ab: np.ndarray, w_a: np.ndarray,
                         w_b: np.ndarray) -> np.ndarray:
    """Unbiased MMD² (S,) of S multisets given by counts ``w_a`` (S, N_a) and ``w_b`` (S, N_b).

    Row s of ``w_a`` says how often each of the N_a points is in sample s (a subset: 0/1; a
    bootstrap resample: any count), m_a = its sum. With kernel matrices ``k_aa`` (N_a, N_a),
    ``k_bb`` (N_b, N_b), ``k_ab`` (N_a, N_b) over the distinct points, the estimator of Bińkowski
    et al. (2018), eq. (2) (Gretton et al. 2012, MMD²_u):
    ``within(a) / (m_a (m_a - 1)) + within(b) / (m_b (m_b - 1)) - 2 w_aᵀ K_ab w_b / (m_a m_b)``
    with :func:`within_sums`.
    """
    ma, mb = w_a.sum(1), w_b.sum(1)
    sab = np.einsum("si,si->s", w_a @ k_ab, w_b)
    return (within_sums(k_aa, w_a) / (ma * (ma - 1)) + within_sums(k_bb, w_b) / (mb * (mb - 1))
            - 2.0 * sab / (ma * mb))


def _subset_indicators(n: int, m: int, n_subsets: int, rng: np.random.Generator) -> np.ndarray:
    """(n_subsets, n) 0/1 float64 rows, each with m ones at indices drawn without replacement."""
    idx = rng.permuted(np.tile(np.arange(n), (n_subsets, 1)), axis=1)[:, :m]
    w = np.zeros((n_subsets, n))
    np.put_along_axis(w, idx, 1.0, axis=1)
    return w


def kid(feats_a: np.ndarray, feats_b: np.ndarray, *, subset_size: int | None = None,
        n_subsets: int = 100, seed: int = 0) -> dict:
    """Kernel Inception Distance between features ``feats_a`` (N_a, F) and ``feats_b`` (N_b, F).

    Bińkowski et al. (2018): the unbiased MMD² with the cubic kernel :func:`poly_kernel` on
    ``n_subsets`` pairs of random subsets, each of ``subset_size`` points of a and of b drawn
    without replacement (``None``: min(N_a, N_b); subsets independent across s), seeded with
    ``numpy.random.default_rng(seed)``. The same estimator as torchmetrics'
    ``KernelInceptionDistance`` (mean and ``torch.std``, i.e. ddof=1, over subsets; here std = 0
    for one subset). Unbiased, so it can be slightly negative for equal distributions.
    The full kernel matrices are computed once when that is cheaper than per-subset ones and they
    fit in 1 GiB; otherwise each subset's are computed (loop over subsets, not over pairs).
    Returns ``{"mean", "std", "subset_size", "n_subsets"}``.
    """
    a, b = _features(feats_a, "feats_a"), _features(feats_b, "feats_b")
    _same_width(a, b, "feats_a and feats_b")
    na, nb = len(a), len(b)
    m = min(na, nb) if subset_size is None else int(subset_size)
    if not 2 <= m <= min(na, nb):
        raise InputError(f"subset_size must be in 2..{min(na, nb)} (min(N_a, N_b)), got {subset_size}")
    if n_subsets < 1:
        raise InputError(f"n_subsets must be >= 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    wa = _subset_indicators(na, m, n_subsets, rng)
    wb = _subset_indicators(nb, m, n_subsets, rng)
    full = na * na + nb * nb + na * nb
    if full * 8 <= _KERNEL_BYTES and full <= 3 * n_subsets * m * m:
        values = unbiased_mmd2_counts(poly_kernel(a, a), poly_kernel(b, b), poly_kernel(a, b), wa, wb)
    else:
        values = np.empty(n_subsets)
        ones = np.ones((1, m))
        for s in range(n_subsets):
            xa, xb = a[wa[s] > 0], b[wb[s] > 0]
            values[s] = unbiased_mmd2_counts(poly_kernel(xa, xa), poly_kernel(xb, xb),
                                             poly_kernel(xa, xb), ones, ones)[0]
    std = float(values.std(ddof=1)) if n_subsets > 1 else 0.0
    return {"mean": float(values.mean()), "std": std, "subset_size": m, "n_subsets": int(n_subsets)}


def _fid_inf_sizes(n: int, n_points: int, min_n: int | None, spacing: str) -> np.ndarray:
    """The sample sizes (n_points,) int64 of :func:`fid_infinity`, from min_n up to n."""
    lo = max(2, n // 5) if min_n is None else int(min_n)
    if not 2 <= lo < n:
        raise InputError(f"min_n must be in 2..{n - 1} (below n_fake = {n}), got {min_n}")
    if n_points < 2:
        raise InputError(f"n_points must be >= 2, got {n_points}")
    if spacing == "inverse":
        ns = 1.0 / np.linspace(1.0 / lo, 1.0 / n, n_points)
    elif spacing == "linear":
        ns = np.linspace(lo, n, n_points)
    else:
        raise InputError(f"spacing must be 'inverse' or 'linear', got {spacing!r}")
    return np.clip(np.rint(ns), lo, n).astype(np.int64)


def fid_infinity(feats_real: np.ndarray, feats_fake: np.ndarray, *, n_points: int = 15, seed: int = 0,
                 min_n: int | None = None, spacing: str = "inverse") -> dict:
    """FID∞ of Chong & Forsyth (2020): FID extrapolated to an infinite number of fake samples.

    ``feats_real`` (N_r, F), ``feats_fake`` (N_f, F). For each of ``n_points`` sizes N from
    ``min_n`` (default ``max(2, N_f // 5)``) to N_f, FID (:func:`eval.metrics.fid_from_features`)
    of a random subset of N fakes (without replacement, a fresh one per N, drawn with
    ``numpy.random.default_rng(seed)``) against all real features; then the least-squares line
    ``FID_N = fid_inf + slope / N``, whose intercept is FID∞. ``spacing="inverse"`` spaces the N
    evenly in 1/N (even leverage on the fitted line); ``"linear"`` evenly in N, as the authors'
    code (``np.linspace(5000, 50000, 15)``, i.e. min_n = N_f / 10). Only the fake sample size is
    extrapolated: the bias of the finite real set stays. The 1/N law is asymptotic (N ≫ F); with
    N < F (small 3D data sets) treat FID∞ as a bias-reduced heuristic. FID∞ is not clamped at 0.
    Returns ``{"fid_inf", "slope", "ns" (n_points,) int64, "fids" (n_points,) float64}``.
    """
    real, fake = _features(feats_real, "feats_real"), _features(feats_fake, "feats_fake")
    _same_width(real, fake, "feats_real and feats_fake")
    ns = _fid_inf_sizes(len(fake), n_points, min_n, spacing)
    rng = np.random.default_rng(seed)
    fids = np.array([fid_from_features(real, fake[rng.choice(len(fake), int(n), replace=False)])
                     for n in ns])
    design = np.stack([np.ones(len(ns)), 1.0 / ns], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, fids, rcond=None)
    return {"fid_inf": float(intercept), "slope": float(slope), "ns": ns, "fids": fids}


def prdc(real: np.ndarray, fake: np.ndarray, *, k: int = 5) -> dict:
    """Precision, recall, density and coverage of ``fake`` (N_f, F) against ``real`` (N_r, F).

    Exactly the definitions of ``prdc.compute_prdc`` (Naeem et al. 2020; precision / recall of
    Kynkäänniemi et al. 2019), on Euclidean distances (:func:`pairwise_distances`): r_i is the
    distance of real point i to its k-th nearest other real point (the (k+1)-th smallest of its row,
    the point itself at 0 included; a duplicate counts as a neighbour at 0), f_j likewise among the
    fakes; all comparisons strict. precision = share of fakes with d(r_i, f_j) < r_i for some i;
    recall = share of reals with d(r_i, f_j) < f_j for some j; density = mean over fakes of
    #{i: d(r_i, f_j) < r_i} / k; coverage = share of reals with min_j d(r_i, f_j) < r_i.
    Memory O(N²). Returns ``{"precision", "recall", "density", "coverage"}`` as floats.
    """
    r, f = _features(real, "real"), _features(fake, "fake")
    _same_width(r, f, "real and fake")
    if not 1 <= k < min(len(r), len(f)):
        raise InputError(f"k must be in 1..{min(len(r), len(f)) - 1} (below N_real and N_fake), got {k}")
    radius_r = np.partition(pairwise_distances(r), k, axis=1)[:, k]
    radius_f = np.partition(pairwise_distances(f), k, axis=1)[:, k]
    d = pairwise_distances(r, f)
    inside = d < radius_r[:, None]
    return {"precision": float(inside.any(0).mean()),
            "recall": float((d < radius_f[None, :]).any(1).mean()),
            "density": float(inside.sum(0).mean() / k),
            "coverage": float((d.min(1) < radius_r).mean())}
