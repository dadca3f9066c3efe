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
orthonormal. M is symmetric and orthogonal, so the inverse uses the same matrix. Each call gathers
the eight strided sub-lattices ``x[a::2, b::2, c::2]`` into an (8, K) buffer and multiplies by M
(one small GEMM), writing straight into the band-major output. On the CPU this runs over slabs
of ~:data:`CHUNK_BYTES` so the gathered buffer stays in the L2 cache and each direction reads and
writes the volume about once (the upstream code instead rebuilds dense N/2 x N band matrices per
call and chains full matrix products, O(N) work per voxel). On other devices the whole tensor is
done in one gather and one batched GEMM. Gradients: the transform is orthogonal, so the adjoint of
:func:`dwt3d` is :func:`idwt3d` and vice versa (one ``autograd.Function`` pair for every number of
levels, so double backward works too).

Speed (``bench/bench_dwt.py``, 256^3 float32, 2 threads, 2-core AMD EPYC): a round trip takes
~0.075 s against ~0.022 s for ``x.clone()`` and ~0.5 s for the dense band-matrix approach; the
previous slicing version took ~0.2 s. About half of the round trip is the kernel's first touch
of the two fresh 64 MiB outputs (~0.019 s each; a clone pays it once), the rest is the strided
gather/scatter of the sub-lattices (element-wise, ~0.01 s per direction) and the GEMMs
(~0.006 s per direction). ``torch.compile`` of a butterfly version was not faster and takes
~20 s to compile, so it is not offered.

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

How J levels are computed (fused, not J passes): per cache-sized chunk of block rows the 8^J
strided sub-lattices are gathered once into a (8^J, K) buffer, then J 8x8 GEMMs mix it, one per
Kronecker factor (8 multiply-adds per coefficient and level, where the 64x64 block matrix would
take 64), the last writing into the band-major output. The inverse runs the mixes in reverse
order and scatters with one copy per width-parity pattern (a single strided copy whose innermost
dimension is a size-2 parity runs ~7x slower). Speed at 256^3 float32, 2 threads (same machine,
``bench/bench_dwt.py --levels 1 2 3``, medians over five runs): a J = 2 round trip takes
~0.08-0.12 s, 3.1-4.0x ``x.clone()`` (0.021-0.029 s), about the one-level time (0.9-1.3x) and
1.6-1.9x faster than two chained one-level passes (~0.14-0.19 s); J = 3 ~0.14-0.18 s (chained
~0.21-0.30 s). The "3x clone" target (~0.07 s) is missed at J = 2 by 3-35 %: the first touch
of the two fresh 64 MiB outputs takes ~0.04 s (~0.02 s each; it varies with the VM's memory state,
as the clone does), which leaves ~0.03 s, and the 8^J-way gather/scatter plus J GEMMs per
direction take ~0.04 s (~0.03 s at J = 1, itself 2.5-4x clone in the same runs).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch

__all__ = ["BANDS", "CHUNK_BYTES", "LEVELS", "check_levels", "dwt3d", "idwt3d", "packet_bands"]

BANDS: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")

#: Supported numbers of levels J (8^J channels; 3 levels already give 512).
LEVELS: tuple[int, ...] = (1, 2, 3)

#: Bytes of input gathered per step on the CPU (fits the 2 MiB per-core L2 cache; 0.5-2 MiB measured
#: within noise of each other at 128^3 and 256^3, 64-128 KiB slower).
CHUNK_BYTES: int = 1 << 20


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


def _plan(n: int, d: int, h: int, w: int, itemsize: int,
          block: int = 8) -> list[tuple[int, int, int, int, int, int]]:
    """Split n volumes of (d, h, w) blocks of ``block`` voxels each (8 = 2x2x2 at one level,
    8^J at J levels) into (v0, v1, i0, i1, j0, j1) steps of ~CHUNK_BYTES.

    Small volumes are grouped (v1 - v0 > 1, whole volumes); a large volume is cut into block rows
    i0..i1 (depth, one block thick each) when one block row fits, else single block rows cut
    into block columns j0..j1 (height). Either way each step's part of every band is one
    contiguous run of the band-major output, so the GEMM writes it in place.
    """
    vol_bytes = block * d * h * w * itemsize
    if vol_bytes <= CHUNK_BYTES:
        g = max(1, CHUNK_BYTES // vol_bytes)
        return [(v, min(n, v + g), 0, d, 0, h) for v in range(0, n, g)]
    row_bytes = block * h * w * itemsize
    if row_bytes <= CHUNK_BYTES:
        step = max(1, CHUNK_BYTES // row_bytes)
        return [(v, v + 1, i, min(d, i + step), 0, h) for v in range(n) for i in range(0, d, step)]
    step = max(1, CHUNK_BYTES // (block * w * itemsize))
    return [(v, v + 1, i, i + 1, j, min(h, j + step))
            for v in range(n) for i in range(d) for j in range(0, h, step)]


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _gemm(m: torch.Tensor, a: torch.Tensor, out: torch.Tensor) -> None:
    """out (g, 8, K) = m (8, 8) @ a (g, 8, K); a plain GEMM when g == 1 (no batched path)."""
    if a.shape[0] == 1:
        torch.mm(m, a[0], out=out[0])
    else:
        torch.matmul(m, a, out=out)


def _dwt_impl(x: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, 8C, D/2, H/2, W/2) without autograd; see the module docstring."""
    x = _as_float(x).contiguous()
    bsz, ch, dd, hh, ww = x.shape
    n, d, h, w = bsz * ch, dd // 2, hh // 2, ww // 2
    m = _haar_matrix(x.dtype, x.device)
    xv = x.view(n, d, 2, h, 2, w, 2)  # (n, i, a, j, b, l, c)
    if x.device.type != "cpu" or x.numel() * x.element_size() <= CHUNK_BYTES:
        blocks = xv.permute(0, 2, 4, 6, 1, 3, 5).reshape(n, 8, d * h * w)
        return torch.matmul(m, blocks).view(bsz, 8 * ch, d, h, w)
    out = torch.empty(n, 8, d, h, w, dtype=x.dtype)
    plan = _plan(n, d, h, w, x.element_size())
    work = torch.empty(max(8 * (v1 - v0) * (i1 - i0) * (j1 - j0) * w for v0, v1, i0, i1, j0, j1 in plan),
                       dtype=x.dtype)
    for v0, v1, i0, i1, j0, j1 in plan:
        g, ni, nj = v1 - v0, i1 - i0, j1 - j0
        buf = work[: 8 * g * ni * nj * w].view(g, 8, ni * nj * w)
        # Gather the 8 sub-lattices (a, b, c) of this chunk (cache-resident), then mix them.
        buf.view(g, 2, 2, 2, ni, nj, w).copy_(xv[v0:v1, i0:i1, :, j0:j1].permute(0, 2, 4, 6, 1, 3, 5))
        _gemm(m, buf, out[v0:v1, :, i0:i1, j0:j1].view(g, 8, -1))
    return out.view(bsz, 8 * ch, d, h, w)


def _idwt_impl(coeffs: torch.Tensor) -> torch.Tensor:
    """(B, 8C, d, h, w) -> (B, C, 2d, 2h, 2w) without autograd; see the module docstring."""
    coeffs = _as_float(coeffs).contiguous()
    bsz, c8, d, h, w = coeffs.shape
    n = bsz * c8 // 8
    m = _haar_matrix(coeffs.dtype, coeffs.device)  # symmetric and orthogonal: M^-1 = M
    cv = coeffs.view(n, 8, d, h, w)
    if coeffs.device.type != "cpu" or coeffs.numel() * coeffs.element_size() <= CHUNK_BYTES:
        blocks = torch.matmul(m, cv.view(n, 8, d * h * w)).view(n, 2, 2, 2, d, h, w)
        return blocks.permute(0, 4, 1, 5, 2, 6, 3).reshape(bsz, c8 // 8, 2 * d, 2 * h, 2 * w)
    x = torch.empty(n, d, 2, h, 2, w, 2, dtype=coeffs.dtype)
    plan = _plan(n, d, h, w, coeffs.element_size())
    work = torch.empty(max(8 * (v1 - v0) * (i1 - i0) * (j1 - j0) * w for v0, v1, i0, i1, j0, j1 in plan),
                       dtype=coeffs.dtype)
    for v0, v1, i0, i1, j0, j1 in plan:
        g, ni, nj = v1 - v0, i1 - i0, j1 - j0
        buf = work[: 8 * g * ni * nj * w].view(g, 8, ni * nj * w)
        _gemm(m, cv[v0:v1, :, i0:i1, j0:j1].view(g, 8, -1), buf)
        x[v0:v1, i0:i1, :, j0:j1].permute(0, 2, 4, 6, 1, 3, 5).copy_(buf.view(g, 2, 2, 2, ni, nj, w))
    return x.view(bsz, c8 // 8, 2 * d, 2 * h, 2 * w)


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


def _mix_all(m: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
             spares: tuple[torch.Tensor, torch.Tensor], levels: int, order: Sequence[int]) -> None:
    """dst = (M kron ... kron M) src: one 8x8 mix per level, in ``order`` (the factors commute).

    Intermediate results go to ``spares[0]``, then ``spares[1]`` (which may be src itself when src
    is scratch: it is read only by the first mix). All (g, 8^J, K); J <= 3.
    """
    cur = src
    for step, level in enumerate(order):
        nxt = dst if step == len(order) - 1 else spares[step % 2]
        _mix(m, cur, nxt, levels, level)
        cur = nxt


def _one_shot(t: torch.Tensor) -> bool:
    """Whether the J-level kernels do the whole tensor at once (one gather, J batched GEMMs):
    off the CPU. The CPU goes by cache-sized chunks at every size."""
    return t.device.type != "cpu"


def _dwt_packet_impl(x: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, 8^J C, D/2^J, H/2^J, W/2^J) without autograd (module docstring)."""
    x = _as_float(x).contiguous()
    s, nb = 1 << levels, 8**levels
    bsz, ch, dd, hh, ww = x.shape
    n, d, h, w = bsz * ch, dd // s, hh // s, ww // s
    m = _haar_matrix(x.dtype, x.device)
    xv, perm = _lattice_view(x, n, d, h, w, levels), _packet_perm(levels)
    order = tuple(range(1, levels + 1))  # the last mix (level J) has K-long rows: writes `out` in place
    out = torch.empty(n, nb, d, h, w, dtype=x.dtype, device=x.device)
    if _one_shot(x):
        blocks = xv.permute(perm).reshape(n, nb, d * h * w)
        a = torch.empty_like(blocks)  # not blocks itself as a spare: it may be a view of x
        _mix_all(m, blocks, out.view(n, nb, -1), (a, torch.empty_like(a) if levels > 2 else a),
                 levels, order)
        return out.view(bsz, nb * ch, d, h, w)
    plan = _plan(n, d, h, w, x.element_size(), block=nb)
    size = max(nb * (v1 - v0) * (i1 - i0) * (j1 - j0) * w for v0, v1, i0, i1, j0, j1 in plan)
    work = torch.empty(2 * size, dtype=x.dtype)
    rest = (slice(None),) * levels
    for v0, v1, i0, i1, j0, j1 in plan:
        g, ni, nj = v1 - v0, i1 - i0, j1 - j0
        k = ni * nj * w
        buf, spare = (work[o * size: o * size + nb * g * k].view(g, nb, k) for o in range(2))
        src = xv[(slice(v0, v1), slice(i0, i1), *rest, slice(j0, j1))].permute(perm)
        buf.view(g, *(2,) * (3 * levels), ni, nj, w).copy_(src)  # gather the 8^J sub-lattices
        _mix_all(m, buf, out[v0:v1, :, i0:i1, j0:j1].view(g, nb, k), (spare, buf), levels, order)
    return out.view(bsz, nb * ch, d, h, w)


def _idwt_packet_impl(coeffs: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, 8^J C, d, h, w) -> (B, C, 2^J d, 2^J h, 2^J w) without autograd (module docstring)."""
    coeffs = _as_float(coeffs).contiguous()
    s, nb = 1 << levels, 8**levels
    bsz, cj, d, h, w = coeffs.shape
    n = bsz * cj // nb
    m = _haar_matrix(coeffs.dtype, coeffs.device)  # each Kronecker factor is its own inverse
    cv, perm = coeffs.view(n, nb, d, h, w), _packet_perm(levels)
    order = tuple(range(levels, 0, -1))  # the first mix (level J) reads `coeffs` in place
    x = torch.empty(n, s * d, s * h, s * w, dtype=coeffs.dtype, device=coeffs.device)
    xv = _lattice_view(x, n, d, h, w, levels)
    lattices, w_first = (2,) * (3 * levels), _w_parity_first(levels)
    to_dst = tuple(perm[i] for i in w_first)  # volume view -> width parities first, then as res
    if _one_shot(coeffs):
        res, a = (torch.empty(n, nb, d * h * w, dtype=x.dtype, device=x.device) for _ in range(2))
        _mix_all(m, cv.view(n, nb, -1), res, (a, torch.empty_like(a) if levels > 2 else a), levels, order)
        xv.permute(perm).copy_(res.view(n, *lattices, d, h, w))
        return x.view(bsz, cj // nb, s * d, s * h, s * w)
    plan = _plan(n, d, h, w, coeffs.element_size(), block=nb)
    size = max(nb * (v1 - v0) * (i1 - i0) * (j1 - j0) * w for v0, v1, i0, i1, j0, j1 in plan)
    work = torch.empty(3 * size, dtype=coeffs.dtype)  # J = 2 touches two thirds of it
    rest = (slice(None),) * levels
    for v0, v1, i0, i1, j0, j1 in plan:
        g, ni, nj = v1 - v0, i1 - i0, j1 - j0
        k = ni * nj * w
        res, a, b = (work[o * size: o * size + nb * g * k].view(g, nb, k) for o in range(3))
        _mix_all(m, cv[v0:v1, :, i0:i1, j0:j1].view(g, nb, k), res, (a, b), levels, order)
        dst = xv[(slice(v0, v1), slice(i0, i1), *rest, slice(j0, j1))].permute(to_dst)
        src = res.view(g, *lattices, ni, nj, w).permute(w_first)
        for a_dst, a_src in zip(_leading_views(dst, levels), _leading_views(src, levels), strict=True):
            a_dst.copy_(a_src)  # scatter the sub-lattices of one width-parity pattern
    return x.view(bsz, cj // nb, s * d, s * h, s * w)


@functools.lru_cache(maxsize=4)
def _w_parity_first(levels: int) -> tuple[int, ...]:
    """Permutation of the sub-lattice-major view (see :func:`_packet_perm`) that brings the J width
    parities a_l^w to the front: one copy per width-parity pattern then runs its inner loop along
    the block index l (stride 2^J in the volume) instead of a size-2 parity dimension, ~7x faster
    at J = 2 than one strided copy."""
    w_dims = [3 + 3 * lv for lv in range(levels)]
    return (*w_dims, *(i for i in range(4 + 3 * levels) if i not in w_dims))


def _leading_views(t: torch.Tensor, count: int) -> list[torch.Tensor]:
    """The 2^count views of ``t`` with its first ``count`` (size-2) dimensions fixed, C order."""
    views = [t]
    for _ in range(count):
        views = [u for v in views for u in v.unbind(0)]
    return views


def _forward(x: torch.Tensor, levels: int) -> torch.Tensor:
    return _dwt_impl(x) if levels == 1 else _dwt_packet_impl(x, levels)


def _inverse(coeffs: torch.Tensor, levels: int) -> torch.Tensor:
    return _idwt_impl(coeffs) if levels == 1 else _idwt_packet_impl(coeffs, levels)


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
