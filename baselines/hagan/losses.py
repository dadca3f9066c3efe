"""HA-GAN objectives (Sun et al., IEEE JBHI 2022): non-saturating GAN loss and L1 reconstruction.

Pure functions of tensors; the alternating updates live in :mod:`baselines.hagan.model`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["d_loss", "g_loss", "reconstruction_loss", "downsample", "slab_position"]


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator BCE: (-log sigmoid(D(real)), -log(1 - sigmoid(D(fake)))), each a scalar mean."""
    real = F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
    fake = F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    return real, fake


def g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss -log sigmoid(D(G(z))) (Goodfellow et al. 2014), mean."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the L1 loss of HA-GAN's encoders)."""
    return F.l1_loss(x_hat, x)


def downsample(x: torch.Tensor, factor: int = 4, mode: str = "nearest") -> torch.Tensor:
    """(B, 1, S, S, S) -> (B, 1, S/f, S/f, S/f). ``nearest`` as upstream (F.interpolate with
    scale 1/f picks every f-th voxel); ``area`` averages f³ blocks."""
    if mode == "nearest":
        return F.interpolate(x, scale_factor=1.0 / factor, mode="nearest")
    if mode == "area":
        return F.avg_pool3d(x, factor)
    raise ValueError(f"hagan.downsample: unknown mode {mode!r}; allowed: ['area', 'nearest']")


def slab_position(start: int, last: int, batch: int, device: torch.device | str) -> torch.Tensor:
    """Start of the sub-volume (voxels) normalised to [0, 1] by the last possible start, the
    discriminator's position input (upstream ``Model_HA_GAN_256.py``: ``crop_idx / 224.``,
    ``_128.py``: ``crop_idx / 112.``, i.e. / (S * 7/8)); shape (B,)."""
    return torch.full((batch,), start / last, device=device)
