"""Pure array operations shared by the real-data preprocessors (BraTS 2023, LIDC-IDRI).

Every function takes and returns arrays (no I/O) and keeps the volume's 4×4 voxel-to-world affine
consistent with what it did to the array, so a saved output lands where the input was in space.
The steps and their order follow the WDM paper's preprocessing (Friedrich et al. 2024,
arXiv 2402.19043, and the authors' preprocessing code).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import numpy as np

from wdm.io import InputError

__all__ = [
    "check_volume",
    "percentile_clip",
    "minmax",
    "pad_or_crop",
    "shift_affine",
    "avg_pool",
    "pool_affine",
    "run_parallel",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def check_volume(vol: np.ndarray, name: str) -> np.ndarray:
    """Return ``vol`` as a float32 3D array; :class:`InputError` naming ``name`` if it is not one.

    A trailing singleton axis (``(X, Y, Z, 1)``) is dropped; anything else that is not 3D, or a
    volume with NaN/Inf voxels, is refused.
    """
    vol = np.asarray(vol)
    while vol.ndim > 3 and vol.shape[-1] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise InputError(f"{name}: expected a 3D volume, got shape {tuple(vol.shape)} "
                         f"({vol.ndim} dimensions)")
    if min(vol.shape) < 1:
        raise InputError(f"{name}: empty volume of shape {tuple(vol.shape)}")
    vol = vol.astype(np.float32, copy=False)
    bad = ~np.isfinite(vol)
    if bad.any():
        raise InputError(f"{name}: volume holds {int(bad.sum())} NaN/Inf voxels")
    return vol


def percentile_clip(vol: np.ndarray, lo: float | None = 0.1, hi: float | None = 99.9) -> np.ndarray:
    """Clip ``vol`` to its own ``lo``-th and ``hi``-th percentiles (numpy's linear interpolation).

    ``None`` leaves that side unclipped. Returns a new float32 array of the same shape.
    """
    qs = [q for q in (lo, hi) if q is not None]
    vals = np.percentile(vol, qs) if qs else []
    a = float(vals[0]) if lo is not None else None
    b = float(vals[-1]) if hi is not None else None
    return np.clip(vol, a, b).astype(np.float32, copy=False)


def minmax(vol: np.ndarray, name: str = "volume") -> np.ndarray:
    """Scale ``vol`` linearly to [0, 1]: ``(x - min) / (max - min)``; float32.

    Raises :class:`InputError` naming ``name`` for a constant volume (no contrast to scale).
    """
    lo, hi = float(vol.min()), float(vol.max())
    if not hi > lo:
        raise InputError(f"{name}: constant volume (every voxel is {lo:g}); nothing to normalise")
    out = (vol.astype(np.float64) - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def pad_or_crop(vol: np.ndarray, target: Sequence[int] | int, pad_value: float = 0.0
                ) -> tuple[np.ndarray, np.ndarray]:
    """Centre ``vol`` in a box of shape ``target``: pad with ``pad_value`` or crop, per axis.

    Along an axis of length ``n`` and target ``t``: padding puts ``(t - n) // 2`` voxels before
    and the rest after (BraTS 155 -> 256: 50 before, 51 after, as in the WDM data loader);
    cropping keeps ``[(n - t) // 2, (n - t) // 2 + t)``.

    Returns:
        ``(out, offset)``: the array of shape ``target`` and the integer ``offset`` (3,) such that
        output voxel ``j`` is input voxel ``j - offset`` (positive = padded before, negative =
        cropped before). Use :func:`shift_affine` to update the affine.
    """
    target = (int(target),) * vol.ndim if np.isscalar(target) else tuple(int(t) for t in target)
    if len(target) != vol.ndim:
        raise InputError(f"target {target} does not match a {vol.ndim}D volume")
    offset = np.zeros(vol.ndim, dtype=np.int64)
    src, dst = [], []
    for ax, (n, t) in enumerate(zip(vol.shape, target, strict=True)):
        if n <= t:
            before = (t - n) // 2
            offset[ax] = before
            src.append(slice(0, n))
            dst.append(slice(before, before + n))
        else:
            start = (n - t) // 2
            offset[ax] = -start
            src.append(slice(start, start + t))
            dst.append(slice(0, t))
    out = np.full(target, pad_value, dtype=vol.dtype)
    out[tuple(dst)] = vol[tuple(src)]
    return out, offset


def shift_affine(affine: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Affine of the output of :func:`pad_or_crop`: output voxel ``j`` = input voxel ``j - offset``."""
    shift = np.eye(4)
    shift[:3, 3] = -np.asarray(offset, dtype=np.float64)
    return np.asarray(affine, dtype=np.float64) @ shift


def avg_pool(vol: np.ndarray, factor: int) -> np.ndarray:
    """Average-pool a (D, H, W) volume by ``factor`` (non-overlapping blocks); float32.

    Every side must be divisible by ``factor`` (the 256³ -> 128³ step of the paper uses 2).
    """
    factor = int(factor)
    if factor == 1:
        return vol.astype(np.float32, copy=False)
    if factor < 1 or any(n % factor for n in vol.shape):
        raise InputError(f"cannot average-pool shape {tuple(vol.shape)} by {factor}")
    d, h, w = (n // factor for n in vol.shape)
    blocks = vol.reshape(d, factor, h, factor, w, factor)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def pool_affine(affine: np.ndarray, factor: int) -> np.ndarray:
    """Affine after :func:`avg_pool`: pooled voxel ``j`` is centred on input ``f·j + (f - 1)/2``."""
    scale = np.diag([float(factor)] * 3 + [1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return np.asarray(affine, dtype=np.float64) @ scale


def run_parallel(fn: Callable[[T], R], items: Iterable[T], *, threads: int = 1, desc: str = "",
                 progress: bool = True) -> list[R]:
    """Map ``fn`` over ``items`` in a thread pool with a tqdm progress bar; results in item order.

    numpy, scipy.ndimage and zlib release the GIL in their heavy loops, so threads scale for
    preprocessing without copying volumes between processes. The first exception raised by ``fn``
    cancels the items not yet started and is re-raised once the running ones have finished.
    """
    from tqdm import tqdm

    items = list(items)
    results: dict[int, Any] = {}
    with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool, \
            tqdm(total=len(items), desc=desc, unit="case", disable=not progress) as bar:
        futures: dict[Future, int] = {pool.submit(fn, it): i for i, it in enumerate(items)}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    for p in pending:
                        p.cancel()
                    raise exc
                results[futures[fut]] = fut.result()
                bar.update(1)
    return [results[i] for i in sorted(results)]
