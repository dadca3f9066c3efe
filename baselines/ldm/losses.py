"""Losses of the VQ-GAN stage: hinge GAN losses, GAN feature matching, the perceptual term.

Khader et al. (Sci Rep 2023, code "Medical Diffusion", ``vq_gan_3d/model/vqgan.py``) train their
VQ-GAN with L1 reconstruction, LPIPS on one random depth slice per volume, hinge losses of a 2D
(slice) and a 3D patch discriminator, and pix2pixHD feature matching on both discriminators'
intermediate maps.

Perceptual term (``ldm.vqgan.perceptual``): ``lpips`` is theirs (:mod:`baselines.ldm.lpips`; it
needs local LPIPS and VGG-16 weights, ``lpips_weights`` and ``vgg_weights``); ``medicalnet`` is our
3D substitute: MedicalNet (Chen et al. 2019, :mod:`eval.features`) feature maps of the whole
volume compared LPIPS-style (each layer unit-normalised over channels, squared differences averaged
over channels and positions, layers summed), used only when real MedicalNet weights are found (an
untrained network would make it noise). ``auto`` (default) takes LPIPS when both of its files are
given, else MedicalNet. Whichever ran, or that none did, is recorded (log, ``loss.csv`` column
``perceptual_on``, ``train_profile.json`` ``model_info.perceptual`` / ``perceptual_kind``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.ldm.lpips import build_lpips
from eval.features import MedicalNetResNet, medicalnet_resnet
from eval.medicalnet_weights import resolve_weights
from wdm.io import InputError

__all__ = ["FEAT_WEIGHT", "hinge_d_loss", "hinge_g_loss", "feature_matching_loss",
           "MedicalNetPerceptual", "PerceptualTerm", "perceptual_kind", "build_medicalnet_perceptual",
           "build_perceptual"]

log = logging.getLogger(__name__)

#: Per-layer weight of the feature-matching L1 terms: theirs is ``4.0 / (3 + 1)`` (pix2pixHD's
#: ``4 / (n_layers + 1)`` with n_layers written as 3), whatever ``disc_layers`` is.
FEAT_WEIGHT = 4.0 / (3 + 1)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(G))))`` (scalar)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-mean(D(G))`` (scalar)."""
    return -logits_fake.mean()


def feature_matching_loss(feats_fake: Sequence[torch.Tensor],
                          feats_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i FEAT_WEIGHT * L1(fake_i, sg(real_i))`` over every discriminator map but the last
    (the logits); maps of any shape, scalar result. Zero iff the maps agree."""
    if len(feats_fake) != len(feats_real):
        raise ValueError(f"feature matching: {len(feats_fake)} fake maps, {len(feats_real)} real")
    total = feats_fake[0].new_zeros(())
    for f, r in zip(feats_fake[:-1], feats_real[:-1], strict=True):
        total = total + FEAT_WEIGHT * F.l1_loss(f, r.detach())
    return total


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


@dataclass
class PerceptualTerm:
    """The perceptual module (None: off), its ``kind`` (lpips, medicalnet, off) and a run label.

    ``lpips`` compares (B, 1, H, W) depth slices, ``medicalnet`` (B, 1, D, H, W) volumes.
    """

    module: nn.Module | None
    kind: str
    label: str

    @property
    def on_slices(self) -> bool:
        return self.kind == "lpips"


def perceptual_kind(settings: Mapping[str, Any]) -> str:
    """``lpips`` or ``medicalnet`` for ``ldm.vqgan.perceptual`` (auto: lpips iff both files given)."""
    choice = settings.get("perceptual", "auto")
    given = [k for k in ("lpips_weights", "vgg_weights") if settings.get(k)]
    if choice == "lpips" and len(given) < 2:
        raise InputError("ldm.vqgan.perceptual: lpips needs local files in both "
                         "ldm.vqgan.lpips_weights and ldm.vqgan.vgg_weights")
    if choice == "auto" and len(given) == 1:
        raise InputError(f"ldm.vqgan: {given[0]} is set without its partner; LPIPS needs both "
                         "lpips_weights and vgg_weights (or neither, for the MedicalNet term)")
    if choice not in ("auto", "lpips", "medicalnet"):
        raise InputError(f"ldm.vqgan.perceptual: {choice!r}; allowed: auto, lpips, medicalnet")
    return "lpips" if choice == "lpips" or (choice == "auto" and given) else "medicalnet"


def build_medicalnet_perceptual(weights: str | None, depth: int = 10
                                ) -> tuple[MedicalNetPerceptual | None, str]:
    """The MedicalNet term for ``ldm.vqgan.perceptual_weights`` and a label for the run record.

    ``weights`` follows :func:`eval.medicalnet_weights.resolve_weights` (path, manifest name, ``auto:NAME``,
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
    log.info("VQ-GAN perceptual loss ON: MedicalNet %s (%s), 3D", label, path)
    return MedicalNetPerceptual(net), f"on (MedicalNet 3D substitute: {label}, {path})"


def build_perceptual(settings: Mapping[str, Any]) -> PerceptualTerm:
    """The perceptual term of expanded ``ldm.vqgan`` settings (off when ``perceptual_weight`` is 0)."""
    if not settings["perceptual_weight"] > 0:
        return PerceptualTerm(None, "off", "off (ldm.vqgan.perceptual_weight is 0)")
    if perceptual_kind(settings) == "lpips":
        lp, vgg = settings["lpips_weights"], settings["vgg_weights"]
        module = build_lpips(lp, vgg)
        log.info("VQ-GAN perceptual loss ON: LPIPS (VGG-16) on 2D depth slices")
        return PerceptualTerm(module, "lpips", f"on (LPIPS VGG-16 on 2D depth slices: {lp}, {vgg})")
    module, label = build_medicalnet_perceptual(settings["perceptual_weights"],
                                                settings["perceptual_depth"])
    return PerceptualTerm(module, "medicalnet" if module is not None else "off", label)
