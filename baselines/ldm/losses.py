"""Losses of the VQ-GAN stage: hinge GAN losses and a perceptual term on MedicalNet features.

Khader et al. (Sci Rep 2023) train their VQ-GAN with L1 reconstruction, a perceptual loss and
patch-GAN hinge losses. Their perceptual loss is LPIPS on 2D slices; in 3D we compare MedicalNet
(Chen et al. 2019, :mod:`eval.features`) feature maps instead, LPIPS-style: each layer's features
are unit-normalised over channels, the squared differences averaged over channels and positions,
and the layers summed. The term is used only when real MedicalNet weights are found (an untrained
network would make it noise); otherwise it is off, and the run says so (log, ``loss.csv`` column
``perceptual_on``, ``train_profile.json`` ``model_info``).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from eval.features import MedicalNetResNet, medicalnet_resnet, resolve_weights
from wdm.io import InputError

__all__ = ["hinge_d_loss", "hinge_g_loss", "MedicalNetPerceptual", "build_perceptual"]

log = logging.getLogger(__name__)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``mean(relu(1 - D(x))) + mean(relu(1 + D(G)))`` (scalar)."""
    return F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean()


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-mean(D(G))`` (scalar)."""
    return -logits_fake.mean()


class MedicalNetPerceptual(nn.Module):
    """LPIPS-style distance on frozen MedicalNet feature maps: ``(x, y) -> scalar``.

    Layers compared: the stem (after ReLU), ``layer1``, ``layer2`` and ``layer3``. Inputs
    (B, 1, D, H, W) in [-1, 1]. The network's weights are frozen and it stays in eval mode.
    """

    def __init__(self, net: MedicalNetResNet) -> None:
        super().__init__()
        self.net = net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> MedicalNetPerceptual:  # always frozen BN statistics
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for fx, fy in zip(self.net.feature_maps(x), self.net.feature_maps(y), strict=True):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (fx - fy).pow(2).sum(1).mean()
        return total


def build_perceptual(weights: str | None, depth: int = 10) -> tuple[MedicalNetPerceptual | None, str]:
    """The perceptual module for ``ldm.vqgan.perceptual_weights`` and a label for the run record.

    ``weights`` follows :func:`eval.features.resolve_weights` (path, manifest name, ``auto:NAME``,
    ``hub:NAME``, or None). Without real weights the term is off: returns ``(None, reason)``.
    """
    if weights is None:
        return None, "off (ldm.vqgan.perceptual_weights is null)"
    auto = str(weights).startswith("auto:")
    try:  # "auto:NAME" = NAME if present locally, else off (never an untrained network)
        path, label = resolve_weights(str(weights).removeprefix("auto:"), depth=depth)
    except InputError:
        if not auto:
            raise
        path = None
    if path is None:
        log.warning("VQ-GAN perceptual loss OFF: MedicalNet weights %r not found", weights)
        return None, f"off (MedicalNet weights {weights!r} not found)"
    net = medicalnet_resnet(depth, path)
    log.info("VQ-GAN perceptual loss ON: %s (%s)", label, path)
    return MedicalNetPerceptual(net), f"on ({label}, {path})"
