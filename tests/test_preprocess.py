"""Shared preprocessing ops (wdm.data.preprocess): values checked by hand on tiny arrays."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from wdm.data.preprocess import (
    avg_pool,
    check_volume,
    minmax,
    pad_or_crop,
    percentile_clip,
    pool_affine,
    run_parallel,
    shift_affine,
)
from wdm.io import InputError


def test_percentile_clip_by_hand() -> None:
    vol = np.arange(11, dtype=np.float32).reshape(1, 1, 11)  # 0..10
    # numpy's linear percentile: the 10th of 0..10 is 1.0, the 90th is 9.0
    out = percentile_clip(vol, 10, 90)
    assert out.ravel().tolist() == [1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    assert percentile_clip(vol, None, 50).max() == 5 and percentile_clip(vol, None, 50).min() == 0


def test_minmax_by_hand_and_constant_refused() -> None:
    vol = np.array([2.0, 4.0, 6.0], np.float32).reshape(1, 1, 3)
    assert minmax(vol).ravel().tolist() == [0.0, 0.5, 1.0]
    with pytest.raises(InputError, match="case7: constant volume"):
        minmax(np.full((2, 2, 2), 3.0, np.float32), name="case7")


def test_pad_or_crop_brats_offsets_and_values() -> None:
    vol = np.ones((240, 240, 155), np.float32)
    out, off = pad_or_crop(vol, 256, 0.0)
    assert out.shape == (256, 256, 256) and off.tolist() == [8, 8, 50]  # the authors' 8/8, 50/51
    assert out[8:248, 8:248, 50:205].min() == 1 and out.sum() == 240 * 240 * 155
    small = np.arange(5, dtype=np.float32).reshape(1, 1, 5)
    out, off = pad_or_crop(small, (3, 3, 3), -1.0)
    assert off.tolist() == [1, 1, -1]
    assert out[1, 1].tolist() == [1, 2, 3] and out[0].max() == -1


def test_shift_and_pool_affine_track_voxel_centres() -> None:
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [10, 20, 30]
    shifted = shift_affine(aff, np.array([1, 0, -2]))
    # output voxel (1, 0, 0) is input voxel (0, 0, 2): world (10, 20, 34)
    assert np.allclose(shifted @ [1, 0, 0, 1], [10, 20, 34, 1])
    pooled = pool_affine(aff, 2)
    # pooled voxel 0 averages input voxels 0 and 1: centre at input 0.5 -> world 11
    assert np.allclose(pooled @ [0, 0, 0, 1], [11, 21, 31, 1])
    assert np.allclose(np.diag(pooled)[:3], 4.0)


def test_avg_pool_by_hand() -> None:
    vol = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert avg_pool(vol, 2).tolist() == [[[3.5]]]
    with pytest.raises(InputError, match="cannot average-pool"):
        avg_pool(np.zeros((3, 4, 4), np.float32), 2)


def test_check_volume_errors() -> None:
    assert check_volume(np.zeros((2, 3, 4, 1)), "a").shape == (2, 3, 4)
    with pytest.raises(InputError, match=r"b: expected a 3D volume, got shape \(2, 3\)"):
        check_volume(np.zeros((2, 3)), "b")
    bad = np.zeros((2, 2, 2))
    bad[0, 0, 0] = np.nan
    bad[1, 1, 1] = np.inf
    with pytest.raises(InputError, match="c: volume holds 2 NaN/Inf voxels"):
        check_volume(bad, "c")


def test_run_parallel_keeps_order_uses_threads_and_reraises() -> None:
    seen = set()

    def f(x: int) -> int:
        seen.add(threading.get_ident())
        return x * x

    assert run_parallel(f, range(20), threads=3, progress=False) == [x * x for x in range(20)]

    def g(x: int) -> int:
        if x == 3:
            raise InputError("bad 3")
        return x

    with pytest.raises(InputError, match="bad 3"):
        run_parallel(g, range(6), threads=2, progress=False)
