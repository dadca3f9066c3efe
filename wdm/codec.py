"""The data/sample boundary of WDM: voxels in [-1, 1] <-> scaled wavelet coefficients.

Friedrich et al. 2024, Sec. 2 and the released code: the LLL sub-band of a 2x2x2-block Haar
transform grows like 2*sqrt(2) times the voxel mean, so it is divided by a constant before
diffusion and multiplied back after. The authors note sqrt(8) would be the principled value; the
released weights use 3, which is :data:`LLL_SCALE` and the config default
(``diffusion.lll_scale``). Wavelet clipping (Sec. 2, "sampling"): the predicted x0 is taken back
to voxels, clamped to [-1, 1] and transformed again at every sampling step.
"""

from __future__ import annotations

import torch

from wdm.wavelets import dwt3d, idwt3d

__all__ = ["LLL_SCALE", "encode", "decode", "wavelet_clip"]

#: Divisor of the LLL band before diffusion (the released WDM weights use 3; sqrt(8) is principled).
LLL_SCALE: float = 3.0


def encode(x: torch.Tensor, lll_scale: float = LLL_SCALE) -> torch.Tensor:
    """(B, C, D, H, W) voxels in [-1, 1] -> (B, 8C, D/2, H/2, W/2) coefficients, LLL / lll_scale."""
    c = dwt3d(x)
    scale = torch.ones(8, dtype=c.dtype, device=c.device)
    scale[0] = 1.0 / lll_scale
    return c * scale.repeat(c.shape[1] // 8).view(1, -1, 1, 1, 1)


def decode(c: torch.Tensor, lll_scale: float = LLL_SCALE) -> torch.Tensor:
    """Inverse of :func:`encode`: (B, 8C, d, h, w) -> (B, C, 2d, 2h, 2w) voxels."""
    scale = torch.ones(8, dtype=c.dtype, device=c.device)
    scale[0] = lll_scale
    return idwt3d(c * scale.repeat(c.shape[1] // 8).view(1, -1, 1, 1, 1))


def wavelet_clip(c: torch.Tensor, lll_scale: float = LLL_SCALE) -> torch.Tensor:
    """Project coefficients onto volumes in [-1, 1]: encode(clamp(decode(c), -1, 1))."""
    return encode(decode(c, lll_scale).clamp(-1.0, 1.0), lll_scale)
