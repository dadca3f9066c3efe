"""The VQ-GAN's patch discriminators: 2D on one random depth slice per volume, and 3D.

Khader et al. (Sci Rep 2023, code "Medical Diffusion", ``vq_gan_3d/model/vqgan.py``, after TATS)
train two pix2pixHD ``NLayerDiscriminator`` s against the VQ-GAN: an ``image`` one (Conv2d,
BatchNorm2d) on one slice per volume along the depth axis (axis 2 of (B, C, D, H, W), the same
index for the volume and its reconstruction) and a ``video`` one (Conv3d, BatchNorm3d) on the whole
volume. Both return their logits and every intermediate feature map, which the generator's
feature-matching loss compares (:func:`baselines.ldm.losses.feature_matching_loss`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["NLayerDiscriminator", "VQGANDiscriminators", "draw_slice_indices", "take_slices",
           "build_discriminators"]

_MAX_WIDTH = 512  # pix2pixHD caps the width at 512 channels


class NLayerDiscriminator(nn.Module):
    """pix2pixHD patch discriminator in ``dims`` = 2 or 3 dimensions.

    ``blocks[0]``: conv 4 stride 2 + LeakyReLU(0.2); ``blocks[1 .. n_layers-1]``: conv 4 stride 2,
    BatchNorm, LeakyReLU; ``blocks[n_layers]``: the same with stride 1; ``blocks[n_layers+1]``: conv 4
    stride 1 to one channel. Widths ``channels * 2 ** n`` capped at 512; every conv pads 2 and has a
    bias (as theirs). A side ``s`` maps to ``s/2 + 1`` per stride-2 and ``s + 1`` per stride-1 block.

    ``forward``: ``(B, 1, *spatial) -> (logits, [n_layers + 2 feature maps, the logits last])``.
    """

    def __init__(self, dims: int, channels: int = 64, n_layers: int = 3, in_channels: int = 1) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"NLayerDiscriminator: dims must be 2 or 3, got {dims}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.dims, self.n_layers = dims, n_layers
        blocks = [nn.Sequential(conv(in_channels, channels, 4, stride=2, padding=2),
                                nn.LeakyReLU(0.2, True))]
        width = channels
        for n in range(1, n_layers + 1):
            prev, width = width, min(width * 2, _MAX_WIDTH)
            blocks.append(nn.Sequential(conv(prev, width, 4, stride=2 if n < n_layers else 1, padding=2),
                                        norm(width), nn.LeakyReLU(0.2, True)))
        blocks.append(nn.Sequential(conv(width, 1, 4, stride=1, padding=2)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return x, feats


class VQGANDiscriminators(nn.Module):
    """The ``image`` (2D, slices) and ``video`` (3D) discriminators; either may be None (off).

    A container (one checkpointed module, one optimizer): call ``image`` / ``video`` directly.
    """

    def __init__(self, channels: int, n_layers: int, image: bool = True, video: bool = True) -> None:
        super().__init__()
        self.image = NLayerDiscriminator(2, channels, n_layers) if image else None
        self.video = NLayerDiscriminator(3, channels, n_layers) if video else None


def draw_slice_indices(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One depth index per volume of ``x`` (B, C, D, H, W): (B,) uniform in [0, D), from ``generator``."""
    dev = generator.device if generator is not None else x.device
    return torch.randint(0, x.shape[2], (x.shape[0],), generator=generator, device=dev).to(x.device)


def take_slices(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Slices ``x[b, :, idx[b]]``: (B, C, D, H, W), (B,) -> (B, C, H, W)."""
    return x[torch.arange(x.shape[0], device=x.device), :, idx]


def build_discriminators(settings: Mapping[str, Any]) -> VQGANDiscriminators:
    """Discriminators of expanded ``ldm.vqgan`` settings; a zero GAN weight builds none of its kind."""
    return VQGANDiscriminators(settings["disc_channels"], settings["disc_layers"],
                               image=settings["image_gan_weight"] > 0,
                               video=settings["video_gan_weight"] > 0)
