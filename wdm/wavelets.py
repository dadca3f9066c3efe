"""One-level orthonormal 3D Haar wavelet transform, as used by WDM.

Friedrich et al., "WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis",
DGM4MICCAI 2024, Sec. 2: a volume x of shape (D, H, W) is decomposed into 8 sub-bands of shape
(D/2, H/2, W/2) that are stacked as channels in the order

    LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH        (letters = depth, height, width)

with low = (a + b) / sqrt(2) and high = (a - b) / sqrt(2) along each axis, where a is the even
and b the odd sample. LLL is therefore the sum of each 2x2x2 block divided by 2*sqrt(2). The
transform is orthonormal, so idwt3d(dwt3d(x)) == x and Gaussian noise stays white i.i.d. Gaussian.

Pure functions on tensors; no state, no dense band matrices (the upstream code rebuilds an
N/2 x N matrix per call): each level is three pairs of strided views and one stack, so it is
O(voxels), differentiable and runs on any device and dtype.
"""

from __future__ import annotations

import math

import torch

__all__ = ["BANDS", "dwt3d", "idwt3d"]

BANDS: tuple[str, ...] = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def _check_even(shape: torch.Size, dims: tuple[int, ...]) -> None:
    odd = [shape[d] for d in dims if shape[d] % 2]
    if odd:
        raise ValueError(
            f"dwt3d needs even spatial sides, got {tuple(shape[d] for d in dims)} "
            f"(input shape {tuple(shape)}); pad or crop the volume to even sizes first"
        )


def _split(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Haar analysis along ``dim``: (low, high), each half as long."""
    a = x.narrow(dim, 0, x.shape[dim] // 2 * 2)
    even = a.unflatten(dim, (-1, 2)).select(dim + 1, 0)
    odd = a.unflatten(dim, (-1, 2)).select(dim + 1, 1)
    return (even + odd) * _INV_SQRT2, (even - odd) * _INV_SQRT2


def _merge(low: torch.Tensor, high: torch.Tensor, dim: int) -> torch.Tensor:
    """Haar synthesis along ``dim``: interleave (low+high)/sqrt2 and (low-high)/sqrt2."""
    even = (low + high) * _INV_SQRT2
    odd = (low - high) * _INV_SQRT2
    return torch.stack((even, odd), dim=dim + 1).flatten(dim, dim + 1)


def dwt3d(x: torch.Tensor) -> torch.Tensor:
    """Forward 3D Haar DWT, one level.

    Args:
        x: (B, C, D, H, W) with D, H, W even.

    Returns:
        (B, 8*C, D/2, H/2, W/2): for every input channel c the 8 sub-bands occupy channels
        8c .. 8c+7 in :data:`BANDS` order.
    """
    if x.ndim != 5:
        raise ValueError(f"dwt3d expects (B, C, D, H, W), got shape {tuple(x.shape)}")
    _check_even(x.shape, (2, 3, 4))
    bands = []
    for d in _split(x, 2):  # L, H along depth
        for h in _split(d, 3):  # along height
            bands.extend(_split(h, 4))  # along width
    # bands: list of 8 tensors (B, C, D/2, H/2, W/2) in LLL..HHH order
    b, c = x.shape[:2]
    return torch.stack(bands, dim=2).reshape(b, 8 * c, *bands[0].shape[2:])


def idwt3d(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dwt3d`.

    Args:
        coeffs: (B, 8*C, d, h, w) in :data:`BANDS` order per input channel.

    Returns:
        (B, C, 2d, 2h, 2w).
    """
    if coeffs.ndim != 5 or coeffs.shape[1] % 8:
        raise ValueError(
            f"idwt3d expects (B, 8*C, d, h, w) with a multiple of 8 channels, got {tuple(coeffs.shape)}"
        )
    b, c8 = coeffs.shape[:2]
    bands = coeffs.reshape(b, c8 // 8, 8, *coeffs.shape[2:]).unbind(2)
    # Undo the width split, then height, then depth (reverse order of dwt3d).
    hw = [_merge(bands[i], bands[i + 1], 4) for i in range(0, 8, 2)]  # LL?, LH?, HL?, HH?
    dd = [_merge(hw[i], hw[i + 1], 3) for i in range(0, 4, 2)]  # L??, H??
    return _merge(dd[0], dd[1], 2)
