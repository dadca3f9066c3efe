"""The data/sample boundary of WDM: voxels in [-1, 1] <-> scaled wavelet coefficients.

Friedrich et al. 2024, Sec. 2 and the released code: the LLL sub-band of a 2x2x2-block Haar
transform grows like 2*sqrt(2) times the voxel mean, so it is divided by a constant before
diffusion and multiplied back after. The authors note sqrt(8) would be the principled value; the
released weights use 3, which is :data:`LLL_SCALE` and the config default
(``diffusion.lll_scale``). Wavelet clipping (Sec. 2, "sampling"): the predicted x0 is taken back
to voxels, clamped to [-1, 1] and transformed again at every sampling step.

J levels (``diffusion.levels``, the packet transform of :func:`wdm.wavelets.dwt3d`): only the
all-low band (channel 0 of each 8^J group, LLL.LLL... = block sum / (2 sqrt 2)^J) is scaled, by
``lll_scale ** J`` (:func:`lll_divisor`); the other 8^J - 1 bands are not. Why that value: each
level multiplies the all-low band of a constant volume by 2 sqrt 2 ~ 2.83, so a constant volume of
value v has channel 0 = v (2 sqrt 2)^J / lll_scale^J. With the released 3 that is
v (0.943)^J, just inside the voxel range [-1, 1] at every J, as 3 keeps it at one level;
sqrt(8)^J would make it exactly v (the principled choice, ``lll_scale: 2.828...``). At J = 1 the
divisor is ``lll_scale`` itself, so the released weights' /3 is unchanged (bit for bit).
"""

from __future__ import annotations

import torch

from wdm.wavelets import check_levels, dwt3d, idwt3d

__all__ = ["LLL_SCALE", "lll_divisor", "encode", "decode", "wavelet_clip"]

#: Divisor of the LLL band before diffusion (the released WDM weights use 3; sqrt(8) is principled).
LLL_SCALE: float = 3.0


def lll_divisor(lll_scale: float = LLL_SCALE, levels: int = 1) -> float:
    """Divisor of the all-low band at ``levels`` J: ``lll_scale ** J`` (module docstring)."""
    return float(lll_scale) ** check_levels(levels)


def _band_scale(c: torch.Tensor, first: float, levels: int) -> torch.Tensor:
    """(1, C, 1, 1, 1) factors: ``first`` on channel 0 of every 8^J group, 1 elsewhere."""
    nb = 8**levels
    scale = torch.ones(nb, dtype=c.dtype, device=c.device)
    scale[0] = first
    return scale.repeat(c.shape[1] // nb).view(1, -1, 1, 1, 1)


def encode(x: torch.Tensor, lll_scale: float = LLL_SCALE, levels: int = 1) -> torch.Tensor:
    """(B, C, D, H, W) voxels in [-1, 1] -> (B, 8^J C, D/2^J, H/2^J, W/2^J) coefficients,
    the all-low band divided by ``lll_scale ** levels``."""
    c = dwt3d(x, levels)
    return c * _band_scale(c, 1.0 / lll_divisor(lll_scale, levels), levels)


def decode(c: torch.Tensor, lll_scale: float = LLL_SCALE, levels: int = 1) -> torch.Tensor:
    """Inverse of :func:`encode`: (B, 8^J C, d, h, w) -> (B, C, 2^J d, 2^J h, 2^J w) voxels."""
    return idwt3d(c * _band_scale(c, lll_divisor(lll_scale, levels), levels), levels)


def wavelet_clip(c: torch.Tensor, lll_scale: float = LLL_SCALE, levels: int = 1) -> torch.Tensor:
    """Project coefficients onto volumes in [-1, 1]: encode(clamp(decode(c), -1, 1)), at any J."""
    return encode(decode(c, lll_scale, levels).clamp(-1.0, 1.0), lll_scale, levels)
