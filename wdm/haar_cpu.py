"""Fused CPU kernels for the orthonormal 3D Haar packet transform (:mod:`wdm.wavelets`), compiled with Numba.

Friedrich et al., "WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis",
DGM4MICCAI 2024, Sec. 2 (one level); J levels are the packet transform of :mod:`wdm.wavelets`.

The transform of one (2^J)^3 block is the Walsh-Hadamard transform of its 8^J voxels, scaled by
8^(-J/2): band k of a block whose voxel at offset (od, oh, ow) has the natural index
``q = (od * 2^J + oh) * 2^J + ow`` is ``sum_q (-1)^popcount(k & q) v_q / sqrt(8^J)`` with k's bits
in the same positions as q's, so the level-l band letter of an axis is bit l-1 of that axis' part
of k. :func:`band_channels` maps k to the channel order of :func:`wdm.wavelets.packet_bands`.

One pass per direction: for every block row (volume v, block depth index i) and a run of block
columns j, the kernel gathers the voxels into a band-major scratch ``T (8^J, run * w)`` (cache
resident), runs the log2(8^J) butterfly stages on its rows (contiguous, vectorised) and writes each
row to its channel, so the volume and the coefficients are each read or written exactly once. The
block rows are split over the caller's threads (:mod:`wdm.wavelets` passes
``torch.get_num_threads()``; the kernels release the GIL), which
also shares the kernel's first touch of the fresh output pages between the cores. Nothing is
allocated but the output and one scratch per thread.

Compiled on first use per dtype (float32, float64; a few seconds) and cached on disk by Numba
(``__pycache__`` beside this file, else Numba's user-wide cache).
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import njit

__all__ = ["SCRATCH_BYTES", "band_channels", "forward", "inverse"]

#: Bytes of the per-thread band-major scratch (block columns per step are chosen to fit it; the
#: 1 MiB per-core L2 cache of the 2-core development machine).
SCRATCH_BYTES: int = 1 << 20


@njit(cache=True, nogil=True)
def band_channels(levels: int) -> np.ndarray:
    """(8^J,) int64: the output channel of the Walsh-Hadamard index k (natural bit order, see the
    module docstring), ``sum_l 8^(J-l) (4 k_l^d + 2 k_l^h + k_l^w)`` with k_l the bit l-1 of k's axis
    part."""
    s = 1 << levels
    chan = np.empty(s * s * s, np.int64)
    for kd in range(s):
        for kh in range(s):
            for kw in range(s):
                c = 0
                for lv in range(levels):
                    c = c * 8 + 4 * ((kd >> lv) & 1) + 2 * ((kh >> lv) & 1) + ((kw >> lv) & 1)
                chan[(kd * s + kh) * s + kw] = c
    return chan


@njit(cache=True, nogil=True, error_model="numpy")
def _butterflies(t: np.ndarray) -> None:
    """In place, unnormalised Walsh-Hadamard transform over the rows of t (8^J, K)."""
    nb, k = t.shape
    step = 1
    while step < nb:
        for a0 in range(0, nb, 2 * step):
            for a in range(a0, a0 + step):
                ra = t[a]
                rb = t[a + step]
                for q in range(k):
                    u = ra[q]
                    v = rb[q]
                    ra[q] = u + v
                    rb[q] = u - v
        step *= 2


@njit(cache=True, nogil=True, error_model="numpy")
def _voxels(vol: np.ndarray, t: np.ndarray, v: int, i: int, j0: int, nj: int, s: int, scale: float,
            into_scratch: bool) -> None:
    """Between the voxels of block row (v, i), block columns j0 .. j0 + nj - 1, of vol
    (n, s d, s h, s w) and the scratch t (s^3, run * w), row = natural index (module docstring):
    gathered into t (times ``scale``) if ``into_scratch``, else scattered from it."""
    w = vol.shape[3] // s
    for od in range(s):
        for jj in range(nj):
            for oh in range(s):
                row = vol[v, s * i + od, s * (j0 + jj) + oh]
                for ow in range(s):
                    r = t[(od * s + oh) * s + ow]
                    if into_scratch:
                        for col in range(w):
                            r[jj * w + col] = row[s * col + ow] * scale
                    else:
                        for col in range(w):
                            row[s * col + ow] = r[jj * w + col]


@njit(cache=True, nogil=True, error_model="numpy")
def _channels(coef: np.ndarray, t: np.ndarray, chan: np.ndarray, v: int, i: int, j0: int, nj: int,
              scale: float, into_scratch: bool) -> None:
    """Between coef (n, 8^J, d, h, w) at (v, :, i, j0 .. j0 + nj - 1) and the scratch t (8^J, run * w):
    row k of t is channel ``chan[k]``; read into t (times ``scale``) if ``into_scratch``, else
    written from it."""
    w = coef.shape[4]
    for k in range(t.shape[0]):
        r = t[k]
        c = coef[v, chan[k], i]
        for jj in range(nj):
            if into_scratch:
                for col in range(w):
                    r[jj * w + col] = c[j0 + jj, col] * scale
            else:
                for col in range(w):
                    c[j0 + jj, col] = r[jj * w + col]


@njit(cache=True, nogil=True, error_model="numpy")
def _block_rows(vol: np.ndarray, coef: np.ndarray, levels: int, p0: int, p1: int, run: int,
                analysis: bool) -> None:
    """Block rows p = v * d + i in [p0, p1) between vol (n, 2^J d, 2^J h, 2^J w) and coef
    (n, 8^J, d, h, w), ``run`` block columns at a time: coef from vol if ``analysis``, else vol
    from coef (the transform is symmetric and orthogonal: the same butterflies and scale)."""
    s = 1 << levels
    nb = s * s * s
    d, h, w = coef.shape[2], coef.shape[3], coef.shape[4]
    chan = band_channels(levels)
    scale = vol.dtype.type(1.0 / math.sqrt(nb))
    t = np.empty((nb, run * w), vol.dtype)
    for p in range(p0, p1):
        v, i = p // d, p % d
        for j0 in range(0, h, run):
            nj = min(run, h - j0)
            if analysis:
                _voxels(vol, t, v, i, j0, nj, s, scale, True)
            else:
                _channels(coef, t, chan, v, i, j0, nj, scale, True)
            _butterflies(t)
            if analysis:
                _channels(coef, t, chan, v, i, j0, nj, scale, False)
            else:
                _voxels(vol, t, v, i, j0, nj, s, scale, False)


def _split(kernel, vol: np.ndarray, coef: np.ndarray, levels: int, analysis: bool,
           threads: int) -> None:
    """Run ``kernel`` over the block rows of coef (n, 8^J, d, h, w), split into ``threads``
    contiguous ranges; an error in any range is raised here (after every thread has stopped), not
    lost in its thread."""
    n, nb, d, h, w = coef.shape
    rows = n * d
    run = max(1, min(h, SCRATCH_BYTES // (nb * w * coef.itemsize)))
    threads = max(1, min(threads, rows))
    bounds = [rows * k // threads for k in range(threads + 1)]
    errors: list[BaseException] = []

    def part(k: int) -> None:
        try:
            kernel(vol, coef, levels, bounds[k], bounds[k + 1], run, analysis)
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    workers = [threading.Thread(target=part, args=(k,)) for k in range(1, threads)]
    for t in workers:
        t.start()
    part(0)
    for t in workers:
        t.join()
    if errors:
        raise errors[0]


def forward(x: np.ndarray, out: np.ndarray, levels: int, threads: int) -> None:
    """Fill out (n, 8^J, d, h, w) with the J-level packet transform of x (n, 2^J d, 2^J h, 2^J w).

    Both C-contiguous, the same float32/float64 dtype; channels in :func:`wdm.wavelets.packet_bands`
    order; ``threads`` threads.
    """
    _split(_block_rows, x, out, levels, True, threads)


def inverse(coeffs: np.ndarray, x: np.ndarray, levels: int, threads: int) -> None:
    """Fill x (n, 2^J d, 2^J h, 2^J w) with the inverse of :func:`forward` of coeffs (n, 8^J, d, h, w)."""
    _split(_block_rows, x, coeffs, levels, False, threads)
