"""Voxel-space 3D DDPM: WDM's U-Net and schedule on 1-channel voxels at full resolution.

The ablation of Friedrich et al. (WDM, DGM4MICCAI 2024, Table 1 "3D DDPM"; the voxel-space
setting of Bieder et al., PatchDDM): the same network (:func:`wdm.networks.build_network`), the
same linear schedule and x0-prediction MSE (:class:`wdm.diffusion.GaussianDiffusion`) and the same
samplers (:mod:`wdm.samplers`), but the diffusion runs on the (B, 1, D, H, W) voxels themselves
instead of the (B, 8, D/2, H/2, W/2) Haar coefficients. Every network activation is therefore 8x
larger at the same base width, which is what the wavelet buys. The voxel-space analogue of wavelet
clipping (``diffusion.wavelet_clip``) clamps the predicted x0 to [-1, 1]; ``diffusion.lll_scale``
is unused.
"""

from __future__ import annotations

from collections.abc import Sequence

from wdm.model import DiffusionModel, register_model

__all__ = ["Model"]


@register_model("ddpm3d")
class Model(DiffusionModel):
    """3D DDPM in voxel space. ``volume_shape`` (D, H, W): each side divisible by the U-Net's
    down-sampling factor 2^(len(channel_mult) - 1) (checked by :class:`DiffusionModel`)."""

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        d, h, w = (int(s) for s in volume_shape)
        super().__init__(cfg, (d, h, w), (1, d, h, w))
