"""Orthonormal 3D Haar wavelet transform as used by WDM (one level), and its J-level packet form.

Friedrich et al., "WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis",
DGM4MICCAI 2024, Sec. 2: a volume x of shape (D, H, W) is decomposed into 8 sub-bands of shape
(D/2, H/2, W/2) that are stacked as channels in the order

    LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH        (letters = depth, height, width)

with low = (a + b) / sqrt(2) and high = (a - b) / sqrt(2) along each axis, where a is the even
and b the odd sample. LLL is therefore the sum of each 2x2x2 block divided by 2*sqrt(2). The
transform is orthonormal, so idwt3d(dwt3d(x)) == x and Gaussian noise stays white i.i.d. Gaussian.

How it is computed. Band k (bits k = 4*kd + 2*kh + kw, bit 1 = high) of the block whose voxel
(a, b, c) in {0, 1}^3 has index j = 4a + 2b + c is ``sum_j M[k, j] * block[j]`` with
``M[k, j] = (-1)^popcount(k & j) / (2 sqrt 2)``: the 8x8 Sylvester-Hadamard matrix, scaled to be
orthonormal. M is symmetric and orthogonal, so the inverse uses the same matrix. Two paths give the
same numbers (to rounding):

* CPU, float32/float64, at least :data:`KERNEL_BYTES`: the fused kernels of :mod:`wdm.haar_cpu`
  (Numba), one pass per direction: per block row the voxels are gathered into a cache-resident
  band-major scratch, the log2(8^J) butterfly stages of the Walsh-Hadamard transform run on its rows,
  and each row is written to its channel; block rows are split over ``torch.get_num_threads()``
  threads. The volume and its coefficients are each read or written once.
* everything else (GPUs, small or half-precision tensors): one strided gather of the 8^J
  sub-lattices ``x[a::2, b::2, c::2]`` (at J = 1) and one batched 8x8 GEMM per level.

The upstream code instead rebuilds dense N/2 x N band matrices per call and chains full matrix
products, O(N) work per voxel. Gradients: the transform is orthogonal, so the adjoint of
:func:`dwt3d` is :func:`idwt3d` and vice versa (one ``autograd.Function`` pair for every number of
levels, so double backward works too).

J levels (``levels`` = 2 or 3; ``diffusion.levels``): the packet transform, i.e. the one-level step
applied to EVERY sub-band of level J - 1 (not only to LLL as in a Mallat pyramid), giving 8^J
channels at 1/2^J of the side. Channel order: ``8^(J-1) b_1 + ... + 8 b_(J-1) + b_J`` with b_1
the level-1 band (in :data:`BANDS` order) and b_l the band of level l taken of it; so at J = 2
channel ``8 b1 + b2`` is band b2 of band b1, channel 0 is LLL.LLL (the block sum / 8), channel 4
LLL.HLL, channel 32 HLL.LLL (names: :func:`packet_bands`). This equals ``dwt3d`` applied J times
(every band of the previous output being a channel) and is the orthonormal (2^J)^3 block transform
with matrix ``M kron ... kron M`` (J factors) acting on the block's voxels ordered by their level
parities (A_1, ..., A_J), A_l = ``4 a_l^d + 2 a_l^h + a_l^w`` and a_l the bit l-1 of the voxel's
offset in the block along that axis. Being orthonormal and symmetric, the inverse and the adjoint
use the same factors, and i.i.d. N(0, 1) voxel noise maps to i.i.d. N(0, 1) coefficients.

Speed (``python bench/bench_dwt.py --levels 1 2 3``, 256^3 float32, 2 threads, 2-core AMD EPYC):
a round trip takes ~0.06 s at every level (J = 1 0.05-0.065 s, J = 2 0.05-0.076 s, J = 3
0.06-0.072 s over eight runs), 1.8-2.7x ``x.clone()`` (0.022-0.031 s) and 0.11-0.14x the dense
band-matrix approach; two chained one-level passes take 1.7-2.3x the fused J = 2. Most of it
is the kernel's first touch of the two fresh 64 MiB outputs (~0.02 s each, as much as a whole
``x.clone()``, which pays it once); the arithmetic and the gather/scatter take ~0.01 s per
direction. The torch-only chunked version this replaces (gather per
1 MiB chunk, then one 8x8 GEMM per level) took 3.1-4.4x a clone at J = 2: its small GEMMs ran on
one thread, which also took every first-touch page fault of the output alone.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import logging
import math
from collections.abc import Sequence
from types import ModuleType

import torch

log = logging.getLogger(__name__)

__all__ = ["BANDS", "KERNEL_BYTES", "LEVELS", "check_levels", "dwt3d", "idwt3d", "packet_bands"]

BANDS: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")

#: Supported numbers of levels J (8^J channels; 3 levels already give 512).
LEVELS: tuple[int, ...] = (1, 2, 3)

#: CPU float32/float64 tensors of at least this many bytes take the fused Numba kernels of
#: :mod:`wdm.haar_cpu`; smaller ones the whole-tensor path (no compilation for tiny inputs).
KERNEL_BYTES: int = 1 << 20


@functools.lru_cache(maxsize=16)
def _haar_matrix(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(8, 8) orthonormal Haar/Hadamard matrix ``M[k, j] = (-1)^popcount(k & j) / sqrt(8)``.

    Rows are bands in :data:`BANDS` order, columns the voxels of a 2x2x2 block in (d, h, w)
    C order. Cached per (dtype, device); callers must not modify it.
    """
    k = torch.arange(8)
    parity = torch.zeros(8, 8, dtype=torch.long)
    both = k[:, None] & k[None, :]
    for bit in range(3):
        parity += (both >> bit) & 1
    m = (1 - 2 * (parity % 2)).to(torch.float64) / math.sqrt(8.0)
    return m.to(dtype=dtype, device=device)


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _gemm(m: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> None:
    """out (g, 8, K) = m (8, 8) @ a (g, 8, K); a plain GEMM when g == 1 (no batched path)."""
    if a.shape[0] == 1:
        torch.mm(m, a[0], out=out[0])
    else:
        torch.matmul(m, a, out=out)


@functools.cache
def _cpu_kernels() -> ModuleType | None:
    """:mod:`wdm.haar_cpu` (imported on first use: Numba takes ~0.5 s to import), or None with one
    warning when Numba is missing (then every tensor takes the whole-tensor path)."""
    try:
        haar_cpu = importlib.import_module("wdm.haar_cpu")
    except ImportError as err:  # pragma: no cover - numba is a dependency
        log.warning("numba not importable (%s): large CPU wavelet transforms take the slower "
                    "whole-tensor path", err)
        return None
    return haar_cpu


def _fused_kernel(t: torch.Tensor) -> ModuleType | None:
    """The fused CPU kernels when ``t`` (contiguous, floating) should use them: on the CPU, float32 or
    float64, at least :data:`KERNEL_BYTES`; else None (the whole-tensor path)."""
    if (t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64)
            or t.numel() * t.element_size() < KERNEL_BYTES):
        return None
    return _cpu_kernels()


# --------------------------------------------------------------------------------------------
# J levels: the packet transform as one fused (2^J)^3 block transform
# --------------------------------------------------------------------------------------------
def check_levels(levels: int) -> int:
    """``levels`` if it is one of :data:`LEVELS`, else a one-line ValueError naming them."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels not in LEVELS:
        raise ValueError(f"levels must be one of {list(LEVELS)}, got {levels!r}")
    return levels


def packet_bands(levels: int = 1) -> tuple[str, ...]:
    """Names of the 8^J packet bands in channel order: level-l bands joined by ``.``, level 1
    first (``"LLL.HLL"`` = band HLL of the LLL band), channel ``sum_l 8^(J-l) b_l``."""
    return tuple(".".join(p) for p in itertools.product(BANDS, repeat=check_levels(levels)))


@functools.lru_cache(maxsize=4)
def _packet_perm(levels: int) -> tuple[int, ...]:
    """Permutation of ``x.view(n, d, 2.., h, 2.., w, 2..)`` (J parity dims per axis, level J
    outermost) to (a_1^d, a_1^h, a_1^w, ..., a_J^d, a_J^h, a_J^w, i, j, l): sub-lattice-major."""
    bases = (1, levels + 2, 2 * levels + 3)  # positions of the block indices i, j, l
    parity = [b + 1 + levels - lv for lv in range(1, levels + 1) for b in bases]
    return (0, *parity, *bases)


def _lattice_view(t: torch.Tensor, n: int, d: int, h: int, w: int, levels: int) -> torch.Tensor:
    """(n, d*2^J, h*2^J, w*2^J) voxels as (n, d, 2.., h, 2.., w, 2..), level-J parity outermost."""
    two = (2,) * levels
    return t.view(n, d, *two, h, *two, w, *two)


def _mix(m: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, levels: int, level: int) -> None:
    """dst = the 8x8 matrix m applied to the level-``level`` sub-band index of src.

    ``src``, ``dst``: (g, 8^J, K) with the channel index ``sum_l 8^(J-l) A_l``; the Kronecker
    factor of level l acts on A_l alone, a GEMM batched over g * 8^(l-1) with 8^(J-l) * K columns.
    """
    g, _, k = src.shape
    rows = g * 8 ** (level - 1)
    cols = 8 ** (levels - level) * k
    _gemm(m, src.view(rows, 8, cols), dst.view(rows, 8, cols))


def _mix_all(m: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, levels: int,
             order: Sequence[int]) -> None:
    """dst = (M kron ... kron M) src: one 8x8 mix per level, in ``order`` (the factors commute);
    src, dst (n, 8^J, K), the J - 1 intermediate results in fresh tensors."""
    cur = src
    for step, level in enumerate(order):
        nxt = dst if step == len(order) - 1 else torch.empty_like(dst)
        _mix(m, cur, nxt, levels, level)
        cur = nxt


def _forward(x: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, 8^J C, D/2^J, H/2^J, W/2^J) without autograd (module docstring)."""
    x = _as_float(x).detach().contiguous()
    s, nb = 1 << levels, 8**levels
    bsz, ch, dd, hh, ww = x.shape
    n, d, h, w = bsz * ch, dd // s, hh // s, ww // s
    out = torch.empty(n, nb, d, h, w, dtype=x.dtype, device=x.device)
    kernels = _fused_kernel(x)
    if kernels is not None:
        kernels.forward(x.view(n, dd, hh, ww).numpy(), out.numpy(), levels, torch.get_num_threads())
    else:
        blocks = _lattice_view(x, n, d, h, w, levels).permute(_packet_perm(levels)).reshape(n, nb, -1)
        _mix_all(_haar_matrix(x.dtype, x.device), blocks, out.view(n, nb, -1), levels,
                 range(1, levels + 1))
    return out.view(bsz, nb * ch, d, h, w)


def _inverse(coeffs: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, 8^J C, d, h, w) -> (B, C, 2^J d, 2^J h, 2^J w) without autograd (module docstring)."""
    coeffs = _as_float(coeffs).detach().contiguous()
    s, nb = 1 << levels, 8**levels
    bsz, cj, d, h, w = coeffs.shape
    n = bsz * cj // nb
    x = torch.empty(n, s * d, s * h, s * w, dtype=coeffs.dtype, device=coeffs.device)
    kernels = _fused_kernel(coeffs)
    if kernels is not None:
        kernels.inverse(coeffs.view(n, nb, d, h, w).numpy(), x.numpy(), levels, torch.get_num_threads())
    else:
        res = torch.empty(n, nb, d * h * w, dtype=x.dtype, device=x.device)
        _mix_all(_haar_matrix(x.dtype, x.device), coeffs.view(n, nb, -1), res, levels,
                 range(levels, 0, -1))  # each Kronecker factor is its own inverse
        lattices = (2,) * (3 * levels)
        _lattice_view(x, n, d, h, w, levels).permute(_packet_perm(levels)).copy_(
            res.view(n, *lattices, d, h, w))
    return x.view(bsz, cj // nb, s * d, s * h, s * w)


class _DWT(torch.autograd.Function):
    """dwt3d at any ``levels`` with its adjoint (= idwt3d, the transform being orthogonal) as the
    gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, levels: int) -> torch.Tensor:  # type: ignore[override]
        ctx.levels = levels
        return _forward(x, levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _IDWT.apply(grad, ctx.levels), None


class _IDWT(torch.autograd.Function):
    """idwt3d at any ``levels`` with its adjoint (= dwt3d) as the gradient."""

    @staticmethod
    def forward(ctx, coeffs: torch.Tensor, levels: int) -> torch.Tensor:  # type: ignore[override]
        ctx.levels = levels
        return _inverse(coeffs, levels)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return _DWT.apply(grad, ctx.levels), None


def _check_sides(shape: torch.Size, dims: tuple[int, ...], levels: int) -> None:
    side = 1 << levels
    if any(shape[d] % side for d in dims):
        need = "even spatial sides" if levels == 1 else f"spatial sides divisible by {side} (levels={levels})"
        raise ValueError(
            f"dwt3d needs {need}, got {tuple(shape[d] for d in dims)} "
            f"(input shape {tuple(shape)}); pad or crop the volume first"
        )


def dwt3d(x: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Forward 3D Haar DWT: one level (WDM Sec. 2) or the J-level packet transform.

    Args:
        x: (B, C, D, H, W) with D, H, W divisible by 2^J. Integer inputs are converted to the
            default dtype.
        levels: J in :data:`LEVELS`; 1 is the paper's transform.

    Returns:
        (B, 8^J C, D/2^J, H/2^J, W/2^J), contiguous, same dtype and device: for every input
        channel c its 8^J sub-bands occupy channels 8^J c .. 8^J c + 8^J - 1 in
        :func:`packet_bands` order (:data:`BANDS` at J = 1). Differentiable.
    """
    check_levels(levels)
    if x.ndim != 5:
        raise ValueError(f"dwt3d expects (B, C, D, H, W), got shape {tuple(x.shape)}")
    _check_sides(x.shape, (2, 3, 4), levels)
    s = 1 << levels
    if x.numel() == 0:
        b, c, dd, hh, ww = x.shape
        return _as_float(x).new_zeros(b, 8**levels * c, dd // s, hh // s, ww // s)
    return _DWT.apply(x, levels)


def idwt3d(coeffs: torch.Tensor, levels: int = 1) -> torch.Tensor:
    """Inverse of :func:`dwt3d` at the same ``levels`` (its adjoint too, being orthonormal).

    Args:
        coeffs: (B, 8^J C, d, h, w) in :func:`packet_bands` order per input channel.
        levels: J in :data:`LEVELS`.

    Returns:
        (B, C, 2^J d, 2^J h, 2^J w), contiguous. Differentiable.
    """
    check_levels(levels)
    nb = 8**levels
    if coeffs.ndim != 5 or coeffs.shape[1] % nb:
        raise ValueError(f"idwt3d expects (B, {nb}*C, d, h, w) with a multiple of {nb} channels "
                         f"(levels={levels}), got {tuple(coeffs.shape)}")
    s = 1 << levels
    if coeffs.numel() == 0:
        b, cj, d, h, w = coeffs.shape
        return _as_float(coeffs).new_zeros(b, cj // nb, s * d, s * h, s * w)
    return _IDWT.apply(coeffs, levels)
