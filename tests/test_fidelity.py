"""Tests for eval.fidelity: KID, FID∞ and PRDC (tiny arrays, hand-checkable values, references)."""

from __future__ import annotations

import numpy as np
import pytest

import eval.fidelity as fidelity
from eval.fidelity import fid_infinity, kid, pairwise_distances, prdc
from eval.metrics import fid_from_features, frechet_distance
from wdm.io import InputError


# ---------------------------------------------------------------------------------- KID
def _mmd2_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic kernel, written as explicit double loops."""
    f = x.shape[1]

    def k(u, v):
        return (float(u @ v) / f + 1.0) ** 3

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j)
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)


def _mmd2_torchmetrics_formula(x: np.ndarray, y: np.ndarray) -> float:
    """torchmetrics' ``poly_mmd`` (degree 3, gamma 1/F, coef 1), transcribed to numpy."""
    gamma = 1.0 / x.shape[1]
    k11, k22, k12 = ((x @ x.T) * gamma + 1) ** 3, ((y @ y.T) * gamma + 1) ** 3, ((x @ y.T) * gamma + 1) ** 3
    m = k11.shape[0]
    kt_xx = (k11.sum(-1) - np.diag(k11)).sum()
    kt_yy = (k22.sum(-1) - np.diag(k22)).sum()
    return float((kt_xx + kt_yy) / (m * (m - 1)) - 2 * k12.sum(0).sum() / m ** 2)


def test_kid_full_subsets_equal_double_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 3)), rng.normal(0.5, 1.0, size=(7, 3))
    out = kid(a, b, n_subsets=4)  # subset_size = 7: every subset is the whole set
    assert out["subset_size"] == 7 and out["n_subsets"] == 4
    assert out["mean"] == pytest.approx(_mmd2_loop(a, b), rel=1e-12, abs=1e-14)
    assert out["mean"] == pytest.approx(_mmd2_torchmetrics_formula(a, b), rel=1e-12, abs=1e-14)
    assert out["std"] == pytest.approx(0.0, abs=1e-12)


def test_kid_random_subsets_equal_loop_over_the_same_subsets():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 4)), rng.normal(size=(11, 4)) * 1.5
    out = kid(a, b, subset_size=5, n_subsets=6, seed=3)
    draws = np.random.default_rng(3)
    wa = fidelity._subset_indicators(9, 5, 6, draws)
    wb = fidelity._subset_indicators(11, 5, 6, draws)
    assert (wa.sum(1) == 5).all() and (wb.sum(1) == 5).all() and wa.max() == 1
    ref = np.array([_mmd2_loop(a[wa[s] > 0], b[wb[s] > 0]) for s in range(6)])
    assert out["mean"] == pytest.approx(ref.mean(), rel=1e-12)
    assert out["std"] == pytest.approx(ref.std(ddof=1), rel=1e-10)


def test_kid_per_subset_path_equals_full_kernel_path(monkeypatch):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(25, 5))
    full = kid(a, b, subset_size=10, n_subsets=8, seed=1)
    monkeypatch.setattr(fidelity, "_KERNEL_BYTES", 0)  # forces one kernel per subset
    looped = kid(a, b, subset_size=10, n_subsets=8, seed=1)
    assert looped["mean"] == pytest.approx(full["mean"], rel=1e-12)
    assert looped["std"] == pytest.approx(full["std"], rel=1e-10)


def test_kid_same_distribution_near_zero_shifted_positive():
    rng = np.random.default_rng(4)
    real, same = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    shifted = rng.normal(0.5, 1.0, size=(400, 16))
    k_same = kid(real, same, subset_size=100, n_subsets=50, seed=0)
    k_shift = kid(real, shifted, subset_size=100, n_subsets=50, seed=0)
    assert k_shift["mean"] > 10 * k_shift["std"] / np.sqrt(50) > 0
    assert abs(k_same["mean"]) < 0.05 * k_shift["mean"]
    assert abs(k_same["mean"]) < 3 * k_same["std"]


def test_kid_bad_input():
    a = np.zeros((5, 3))
    with pytest.raises(InputError, match="subset_size"):
        kid(a, a, subset_size=6)
    with pytest.raises(InputError, match="n_subsets"):
        kid(a, a, n_subsets=0)
    with pytest.raises(InputError, match="feature width"):
        kid(a, np.zeros((5, 4)))
    with pytest.raises(InputError, match="feats_b"):
        kid(a, np.zeros(5))


# ------------------------------------------------------------------------------- FID∞
def test_fid_infinity_recovers_an_exact_line(monkeypatch):
    monkeypatch.setattr(fidelity, "fid_from_features", lambda r, f: 3.0 + 50.0 / len(f))
    feats = np.zeros((200, 2))
    out = fid_infinity(feats, feats, n_points=7, min_n=20)
    assert out["fid_inf"] == pytest.approx(3.0, abs=1e-9)
    assert out["slope"] == pytest.approx(50.0, rel=1e-9)
    # 1/N evenly spaced from 1/20 to 1/200: 1 / [0.05, 0.0425, 0.035, 0.0275, 0.02, 0.0125, 0.005]
    np.testing.assert_array_equal(out["ns"], [20, 24, 29, 36, 50, 80, 200])
    lin = fid_infinity(feats, feats, n_points=4, min_n=20, spacing="linear")
    np.testing.assert_array_equal(lin["ns"], [20, 80, 140, 200])


def test_fid_infinity_closer_to_true_distance_than_full_n_fid():
    f, n, s = 32, 400, 1.5
    true = frechet_distance(np.zeros(f), np.eye(f), np.zeros(f), s * s * np.eye(f))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        real, fake = rng.normal(size=(40000, f)), s * rng.normal(size=(n, f))
        full = fid_from_features(real, fake)
        out = fid_infinity(real, fake, seed=seed)
        assert full - true > 0.5  # the 1/N bias of the fake covariance at N = 400
        assert abs(out["fid_inf"] - true) < abs(full - true)
        assert out["slope"] > 0 and out["ns"][-1] == n and out["ns"][0] == n // 5


def test_fid_infinity_bad_input():
    feats = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(InputError, match="min_n"):
        fid_infinity(feats, feats, min_n=20)
    with pytest.raises(InputError, match="n_points"):
        fid_infinity(feats, feats, n_points=1)
    with pytest.raises(InputError, match="spacing"):
        fid_infinity(feats, feats, spacing="log")


# -------------------------------------------------------------------------------- PRDC
def test_prdc_one_dimensional_hand_example():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])  # every real radius (k = 1) is 1
    fake = np.array([[0.5], [10.0]])  # fake radii: 9.5 each
    out = prdc(real, fake, k=1)
    # 0.5 is within radius 1 of reals 0 and 1, 10 of none; reals are all within 9.5 of 0.5;
    # reals 0 and 1 have a fake closer than 1, reals 2, 3, 4 do not.
    assert out == {"precision": 0.5, "recall": 1.0, "density": 1.0, "coverage": 0.4}


def test_prdc_comparisons_are_strict_and_duplicates_count():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    fake = np.array([[5.0], [5.0]])  # at exactly the radius 1 of real 4; fake radii 0 (duplicate)
    assert prdc(real, fake, k=1) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_k_excludes_the_point_itself():
    real = np.array([[0.0], [1.0], [3.0], [6.0]])  # 2nd-nearest other point: 3, 2, 3, 5
    fake = np.array([[0.0], [2.9], [6.1], [100.0]])
    out = prdc(real, fake, k=2)
    # 0 is inside the balls of reals 0, 1, 2 (d 0 < 3, 1 < 2, 3 !< 3 -> only 0, 1); 2.9 of 0, 1, 2;
    # 6.1 of 2, 3; 100 of none.
    assert out["precision"] == 0.75
    assert out["density"] == pytest.approx((2 + 3 + 2) / 4 / 2)
    assert out["coverage"] == 1.0


def test_prdc_matches_reference_package(capsys):
    prdc_pkg = pytest.importorskip("prdc")
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(120, 8)), rng.normal(0.3, 1.2, size=(90, 8))
    for k in (1, 3, 5, 10):
        ours = prdc(real, fake, k=k)
        ref = prdc_pkg.compute_prdc(real, fake, nearest_k=k)
        for key in ours:
            assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), (k, key)


def test_pairwise_distances_match_direct_norms():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 4)), rng.normal(size=(5, 4))
    direct = np.linalg.norm(a[:, None] - b[None], axis=-1)
    np.testing.assert_allclose(pairwise_distances(a, b), direct, rtol=1e-12)
    within = pairwise_distances(a)
    assert (np.diag(within) == 0).all()
    np.testing.assert_allclose(within, np.linalg.norm(a[:, None] - a[None], axis=-1), atol=1e-12)


def test_prdc_bad_input():
    real = np.zeros((4, 2))
    with pytest.raises(InputError, match="k must be"):
        prdc(real, np.zeros((3, 2)), k=3)
    with pytest.raises(InputError, match="finite"):
        prdc(np.full((4, 2), np.nan), real)
