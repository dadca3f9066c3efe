"""Tests for eval.memorisation: nearest training neighbours and copy detection (feature and NCC)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from eval.memorisation import memorisation_report, nearest_neighbours
from wdm.io import InputError


def _volumes(rng: np.random.Generator, n: int, size: int = 8) -> np.ndarray:
    """(n, size, size, size) smooth random fields with random brightness and contrast, float32."""
    noise = rng.normal(size=(n, size, size, size))
    smooth = gaussian_filter(noise, sigma=(0, 1, 1, 1))
    scale = rng.uniform(0.5, 2.0, size=(n, 1, 1, 1))
    return (smooth * scale + rng.uniform(-1, 1, size=(n, 1, 1, 1))).astype(np.float32)


def _with_copies(rng: np.random.Generator, fresh: np.ndarray, train: np.ndarray, exact: list[int],
                 noisy: list[int], noise: float) -> tuple[np.ndarray, dict[int, int]]:
    """Fresh samples with copies of ``train[exact]`` and noised ``train[noisy]`` at random positions.

    Returns the set and {position in the set: training index} of the copies.
    """
    copies = np.concatenate([train[exact], train[noisy] + noise * rng.normal(size=train[noisy].shape)])
    out = np.concatenate([fresh, copies.astype(fresh.dtype)])
    perm = rng.permutation(len(out))
    inverse = np.argsort(perm)
    sources = exact + noisy
    return out[perm], {int(inverse[len(fresh) + j]): src for j, src in enumerate(sources)}


def _check_flags(report: dict, expected: dict[int, int], n_exact: int) -> None:
    flagged = {s["index"]: s["train_index"] for s in report["suspects"]}
    assert flagged == expected
    d = [s["distance"] for s in report["suspects"]]
    assert d == sorted(d) and all(v == 0.0 for v in d[:n_exact]) and all(v > 0 for v in d[n_exact:])


def test_feature_space_flags_exactly_the_copies():
    rng = np.random.default_rng(0)
    train, test = rng.normal(size=(200, 32)), rng.normal(size=(1000, 32))
    gen, expected = _with_copies(rng, rng.normal(size=(40, 32)), train, [3, 17, 42], [5, 99], 0.01)
    # quantile 0.001: each of the 40 fresh samples is flagged by chance with probability ~0.001
    rep = memorisation_report(nearest_neighbours(gen, train, metric="euclidean"),
                              nearest_neighbours(test, train, metric="euclidean"), quantile=0.001)
    _check_flags(rep, expected, n_exact=3)
    assert rep["fraction"] == pytest.approx(5 / 45)


def test_ncc_space_flags_exactly_the_copies_including_rescaled_ones():
    rng = np.random.default_rng(1)
    train, test = _volumes(rng, 120), _volumes(rng, 150)
    gen, expected = _with_copies(rng, _volumes(rng, 30), train, [0, 7, 64], [11, 90], 0.05)
    pos = next(p for p, src in expected.items() if src == 7)
    gen[pos] = 3.0 * gen[pos] - 0.5  # an exact copy up to brightness / contrast: NCC = 1
    test_nn = nearest_neighbours(test, train, metric="ncc")
    rep = memorisation_report(nearest_neighbours(gen, train, metric="ncc"), test_nn, quantile=0.01)
    flagged = {s["index"]: s["train_index"] for s in rep["suspects"]}
    assert flagged == expected
    d = [s["distance"] for s in rep["suspects"]]
    assert max(d[:3]) < 1e-12 < min(d[3:])  # exact and rescaled copies first, then the noised ones
    assert 0 < rep["threshold"] == pytest.approx(np.quantile(test_nn["distance"], 0.01))


def test_fresh_samples_are_flagged_at_about_the_quantile_rate():
    rng = np.random.default_rng(2)
    train, test, fresh = (rng.normal(size=(n, 16)) for n in (300, 400, 600))
    rep = memorisation_report(nearest_neighbours(fresh, train, metric="euclidean"),
                              nearest_neighbours(test, train, metric="euclidean")["distance"])
    assert rep["fraction"] <= 0.03
    vtrain, vtest, vfresh = (_volumes(rng, n) for n in (100, 200, 200))
    rep = memorisation_report(nearest_neighbours(vfresh, vtrain, metric="ncc"),
                              nearest_neighbours(vtest, vtrain, metric="ncc"))
    assert rep["fraction"] <= 0.03


def test_nearest_neighbours_against_brute_force_and_blocking():
    rng = np.random.default_rng(3)
    q, r = rng.normal(size=(23, 5)), rng.normal(size=(31, 5))
    d = np.linalg.norm(q[:, None] - r[None], axis=-1)
    out = nearest_neighbours(q, r, metric="euclidean")
    np.testing.assert_array_equal(out["index"], d.argmin(1))
    np.testing.assert_allclose(out["distance"], d.min(1), rtol=1e-12)
    assert out["index"].dtype == np.int64 and out["distance"].dtype == np.float64
    tiny = nearest_neighbours(q, r, metric="euclidean", memory_budget_gb=1e-6)  # 1 row per block
    np.testing.assert_array_equal(tiny["index"], out["index"])
    vq, vr = _volumes(rng, 9, 6), _volumes(rng, 13, 6)
    corr = np.corrcoef(vq.reshape(9, -1).astype(np.float64), vr.reshape(13, -1).astype(np.float64))[:9, 9:]
    ncc = nearest_neighbours(vq, vr, metric="ncc")
    np.testing.assert_array_equal(ncc["index"], (1 - corr).argmin(1))
    np.testing.assert_allclose(ncc["distance"], (1 - corr).min(1), rtol=1e-10)
    blocked = nearest_neighbours(vq, vr, metric="ncc", memory_budget_gb=4e-5)  # ~5 rows per block
    np.testing.assert_array_equal(blocked["index"], ncc["index"])
    np.testing.assert_allclose(blocked["distance"], ncc["distance"], rtol=1e-12)


def test_ncc_1000_by_1000_at_32_cubed_stays_within_the_memory_budget():
    rng = np.random.default_rng(4)
    vols = rng.random((1000, 32, 32, 32), dtype=np.float32)  # 131 MB; a dense (N, M, V) array: 131 GB
    tracemalloc.start()
    out = nearest_neighbours(vols, vols, metric="ncc", memory_budget_gb=0.25)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.3 * 2 ** 30
    np.testing.assert_array_equal(out["index"], np.arange(1000))
    assert out["distance"].max() < 1e-12


def test_constant_volume_has_distance_one():
    vols = np.zeros((2, 4, 4, 4))
    vols[1] = np.arange(64).reshape(4, 4, 4)
    out = nearest_neighbours(vols[:1], vols[1:], metric="ncc")
    assert out["index"][0] == 0 and out["distance"][0] == 1.0


def test_report_orders_suspects_and_counts_strictly_below():
    gen = {"index": np.array([4, 2, 9, 1]), "distance": np.array([0.3, 0.1, 0.5, 0.1])}
    rep = memorisation_report(gen, np.array([0.5, 0.6, 0.7]), quantile=0.0)
    assert rep["threshold"] == 0.5 and rep["fraction"] == 0.75
    assert rep["suspects"] == [{"index": 1, "train_index": 2, "distance": 0.1},
                               {"index": 3, "train_index": 1, "distance": 0.1},
                               {"index": 0, "train_index": 4, "distance": 0.3}]


def test_bad_input():
    feats = np.zeros((3, 4))
    with pytest.raises(InputError, match="metric"):
        nearest_neighbours(feats, feats, metric="cosine")
    with pytest.raises(InputError, match="same per-item shape"):
        nearest_neighbours(feats, np.zeros((3, 5)), metric="euclidean")
    with pytest.raises(InputError, match="query must be features"):
        nearest_neighbours(np.zeros((3, 2, 2, 2)), np.zeros((3, 2, 2, 2)), metric="euclidean")
    with pytest.raises(InputError, match="finite"):
        nearest_neighbours(np.full((2, 2, 2, 2), np.nan), np.zeros((2, 2, 2, 2)), metric="ncc")
    nn = {"index": np.zeros(3, np.int64), "distance": np.zeros(3)}
    with pytest.raises(InputError, match="quantile"):
        memorisation_report(nn, nn, quantile=1.5)
    with pytest.raises(InputError, match="gen_to_train"):
        memorisation_report(np.zeros(3), nn)
