"""Tests for eval.significance: resampled FID / KID, the paired bootstrap test and shared ranks."""

from __future__ import annotations

import numpy as np
import pytest

from eval.fidelity import kid
from eval.metrics import fid_bootstrap_ci, fid_from_features
from eval.significance import (
    _counts,
    _draw,
    _kid_replicates,
    _p_value,
    fast_fid_bootstrap_ci,
    fid_replicates,
    paired_bootstrap,
    share_ranks,
)
from wdm.io import InputError


def _sets(rng: np.random.Generator, f: int, sizes=(30, 25, 35), shift=0.3):
    r = rng.normal(size=(sizes[0], f)) + 5.0
    a = rng.normal(size=(sizes[1], f)) * 1.2 + 5.0 + shift
    b = rng.normal(size=(sizes[2], f)) + 5.0
    return r, a, b


@pytest.mark.parametrize("f", [40, 6])  # Gram (F > N) and F × F (3F <= N) forms
@pytest.mark.parametrize("n_jobs", [1, 2])
def test_fid_replicates_equal_fid_of_explicit_resamples(f, n_jobs):
    rng = np.random.default_rng(0)
    r, a, b = _sets(rng, f)
    ir, ia, ib = _draw(np.random.default_rng(1), (30, 25, 35), 6)
    assert (_counts(ir, 30).sum(1) == 30).all()
    reps = fid_replicates(r, [a, b], _counts(ir, 30), [_counts(ia, 25), _counts(ib, 35)], n_jobs=n_jobs)
    ref = [[fid_from_features(r[ir[t]], a[ia[t]]), fid_from_features(r[ir[t]], b[ib[t]])] for t in range(6)]
    np.testing.assert_allclose(reps, ref, rtol=1e-9, atol=1e-9)


def test_fast_fid_bootstrap_ci_equals_the_reference_loop():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 50)), rng.normal(0.2, 1.0, size=(30, 50))
    fast = fast_fid_bootstrap_ci(a, b, n_bootstrap=50, seed=7)
    np.testing.assert_allclose(fast, fid_bootstrap_ci(a, b, n_bootstrap=50, seed=7), rtol=1e-9)


def test_kid_replicates_equal_kid_of_explicit_resamples():
    rng = np.random.default_rng(3)
    r, a, b = _sets(rng, 4, sizes=(12, 12, 12))
    ir, ia, ib = _draw(np.random.default_rng(4), (12, 12, 12), 5)
    reps = _kid_replicates(r, [a, b], ir, [ia, ib], 12, 1, np.random.default_rng(0))
    # subset size = N: the subset is the whole resample; a point drawn twice pairs with its copy
    ref = [[kid(r[ir[t]], f[idx[t]], n_subsets=1)["mean"] for f, idx in ((a, ia), (b, ib))]
           for t in range(5)]
    np.testing.assert_allclose(reps, ref, rtol=1e-10)


def test_kid_replicate_subsets_are_drawn_from_the_resample():
    rng = np.random.default_rng(5)
    r, a, _ = _sets(rng, 3, sizes=(10, 10, 10))
    idx = np.tile(np.arange(3), (1, 4))[:, :10]  # a resample holding only points 0, 1, 2
    reps = _kid_replicates(r, [a], idx, [idx], 4, 3, np.random.default_rng(0))
    # every subset of the resample uses points 0..2 only: the same as KID on the explicit resample
    other = _kid_replicates(r[:3], [a[:3]], idx, [idx], 4, 3, np.random.default_rng(0))
    np.testing.assert_allclose(reps, other, rtol=1e-10)


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_same_distribution_is_not_significant(metric):
    rng = np.random.default_rng(6)
    real, pool = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    halves = rng.permutation(200)
    out = paired_bootstrap(real, pool[halves[:100]], pool[halves[100:]], metric=metric, n_bootstrap=400)
    assert out["p_value"] > 0.05
    assert out["ci_low"] <= out["difference"] <= out["ci_high"]
    assert out["difference"] == pytest.approx(out["a"] - out["b"])
    perm = paired_bootstrap(real, pool, pool[rng.permutation(200)], metric=metric, n_bootstrap=200)
    assert perm["difference"] == pytest.approx(0.0, abs=1e-9) and perm["p_value"] > 0.05


@pytest.mark.parametrize("metric", ["fid", "kid"])
@pytest.mark.parametrize("f", [8, 64])  # F × F and Gram forms of the FID
def test_shifted_set_is_significant(metric, f):
    rng = np.random.default_rng(7)
    real, good = rng.normal(size=(120, f)), rng.normal(size=(120, f))
    bad = rng.normal(0.5, 1.0, size=(120, f))
    out = paired_bootstrap(real, good, bad, metric=metric, n_bootstrap=300, seed=1)
    assert out["p_value"] < 0.01 and out["p_value"] == pytest.approx(1 / 301)
    assert out["ci_low"] <= out["difference"] <= out["ci_high"] < 0
    flipped = paired_bootstrap(real, bad, good, metric=metric, n_bootstrap=300, seed=1)
    assert flipped["difference"] == pytest.approx(-out["difference"])


def test_paired_kid_with_subsets_smaller_than_the_sets():
    rng = np.random.default_rng(8)
    real, good, bad = rng.normal(size=(90, 6)), rng.normal(size=(80, 6)), rng.normal(0.6, 1, size=(70, 6))
    out = paired_bootstrap(real, good, bad, metric="kid", n_bootstrap=200, kid_subsets=5, kid_subset_size=40)
    assert out["p_value"] < 0.01 and out["ci_high"] < 0
    full = [kid(real, f, subset_size=40, n_subsets=5)["mean"] for f in (good, bad)]
    assert out["difference"] == pytest.approx(full[0] - full[1])


def test_p_value_estimator():
    assert _p_value(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(0.5)
    assert _p_value(np.ones(99)) == pytest.approx(1 / 100)
    assert _p_value(np.zeros(10)) == 1.0


def test_paired_bootstrap_bad_input():
    x = np.zeros((10, 3))
    with pytest.raises(InputError, match="metric"):
        paired_bootstrap(x, x, x, metric="is")
    with pytest.raises(InputError, match="n_bootstrap"):
        paired_bootstrap(x, x, x, metric="fid", n_bootstrap=1)
    with pytest.raises(InputError, match="level"):
        paired_bootstrap(x, x, x, metric="fid", level=1.0)
    with pytest.raises(InputError, match="fake_b"):
        paired_bootstrap(x, x, np.zeros((10, 4)), metric="kid")
    with pytest.raises(InputError, match="kid_subset_size"):
        paired_bootstrap(x, x, x, metric="kid", kid_subset_size=11)


def test_share_ranks_chaining():
    assert share_ranks([(0.0, 1.0), (0.5, 2.0), (3.0, 4.0)]) == [1, 1, 3]
    # A-B and B-C overlap, A-C do not: chained into one group
    assert share_ranks([(0.0, 1.0), (0.9, 2.0), (1.9, 3.0), (5.0, 6.0)]) == [1, 1, 1, 4]
    assert share_ranks([(0.0, 1.0), (1.0, 2.0)]) == [1, 1]  # touching intervals overlap
    assert share_ranks([(0.0, 1.0), (2.0, 3.0), (4.0, 5.0)]) == [1, 2, 3]
    assert share_ranks([(3.0, 4.0), (0.0, 1.0), (0.5, 2.0)]) == [3, 1, 1]  # order-independent
    assert share_ranks([(0.0, 10.0), (1.0, 2.0), (3.0, 4.0), (12.0, 13.0)]) == [1, 1, 1, 4]


def test_share_ranks_bad_input():
    with pytest.raises(InputError, match="low <= high"):
        share_ranks([(1.0, 0.0)])
    with pytest.raises(InputError, match="pairs"):
        share_ranks([1.0, 2.0])
