"""LPIPS (Zhang et al., CVPR 2018) with a VGG-16 trunk: the VQ-GAN's 2D perceptual loss.

Khader et al. (Sci Rep 2023, code "Medical Diffusion", ``vq_gan_3d/model/lpips.py``, as
taming-transformers) compare one random depth slice per volume and its reconstruction with LPIPS:
inputs in [-1, 1] go through a ScalingLayer ``(x - shift) / scale`` (shift
(-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450), one value per RGB channel: a 1-channel slice
broadcasts to 3 channels), the ImageNet VGG-16 ``features`` give the maps after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, each map is unit-normalised over channels, the squared differences
are weighted per channel by a learnt 1x1 conv (``lin0`` .. ``lin4``), averaged over positions and
summed over the five layers.

No weights can be downloaded here, and torchvision is not a dependency: :class:`VGG16Features`
rebuilds ``torchvision.models.vgg16().features`` with its exact layer indices, so that

* ``vgg_weights``: a torchvision VGG-16 state dict (keys ``features.N.weight`` / ``features.N.bias``
  for the 13 convs; ``classifier.*`` keys, if present, are ignored), and
* ``lpips_weights``: the LPIPS linear layers as upstream / taming-transformers ship them
  (``vgg.pth``: keys ``lin0.model.1.weight`` .. ``lin4.model.1.weight``, shapes (1, C, 1, 1))

load strictly (``torch.load(..., weights_only=True)``); a wrong key set is a one-line
:class:`~wdm.io.InputError` naming the file and the missing / unexpected keys.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from wdm.io import InputError

__all__ = ["VGG16_CFG", "LPIPS_CHANNELS", "VGG16Features", "LPIPSHeads", "LPIPS", "load_strict",
           "build_lpips"]

log = logging.getLogger(__name__)

#: torchvision's VGG-16 ("D") configuration: conv widths, "M" = 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")
#: ``features`` index ranges whose ends are relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
#: Widths of the five LPIPS layers.
LPIPS_CHANNELS = (64, 128, 256, 512, 512)
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class VGG16Features(nn.Module):
    """``torchvision.models.vgg16().features`` (31 modules, same indices; ReLUs not in place).

    ``forward``: (B, 3, H, W) -> the five maps relu1_2 (B, 64, H, W) .. relu5_3 (B, 512, H/16, W/16).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(ch, int(v), 3, padding=1), nn.ReLU()]
                ch = int(v)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for lo, hi in _SLICES:
            for i in range(lo, hi):
                x = self.features[i](x)
            out.append(x)
        return out


class _NetLin(nn.Module):
    """LPIPS ``NetLinLayer``: ``model = (Dropout, 1x1 conv C -> 1 without bias)``."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(ch, 1, 1, bias=False))


class LPIPSHeads(nn.Module):
    """The five linear layers ``lin0`` .. ``lin4`` (state dict keys as ``vgg.pth``)."""

    def __init__(self) -> None:
        super().__init__()
        for k, ch in enumerate(LPIPS_CHANNELS):
            self.add_module(f"lin{k}", _NetLin(ch))

    def layers(self) -> list[nn.Module]:
        return [getattr(self, f"lin{k}").model for k in range(len(LPIPS_CHANNELS))]


class LPIPS(nn.Module):
    """LPIPS distance of 2D images: ``(x, y)`` (B, 1 or 3, H, W) in [-1, 1] -> (B,).

    Frozen and always in eval mode (dropout off). H and W of at least 16 keep relu5_3 non-empty.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.net = VGG16Features()
        self.heads = LPIPSHeads()
        for p in self.parameters():
            p.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = self.net((x - self.shift) / self.scale)
        fy = self.net((y - self.shift) / self.scale)
        total = x.new_zeros(x.shape[0])
        for a, b, lin in zip(fx, fy, self.heads.layers(), strict=True):
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((a - b).pow(2)).mean((1, 2, 3))
        return total


def _keys(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return "[" + ", ".join(keys[:n]) + "]" + more


def load_strict(module: nn.Module, path: str | os.PathLike, what: str,
                ignore_prefix: str | None = None) -> None:
    """Load the state dict in ``path`` into ``module`` strictly (``torch.load(weights_only=True)``).

    ``what`` names the setting and the format in errors; keys starting with ``ignore_prefix`` are
    dropped first. Raises a one-line :class:`InputError` for a missing or unreadable file, a key set
    other than the module's (naming the missing and unexpected keys), or a wrong tensor shape.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: {path} not found")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise InputError(f"{what}: {path} is not a PyTorch state dict ({type(exc).__name__})") from None
    if not isinstance(sd, dict):
        raise InputError(f"{what}: {path} holds a {type(sd).__name__}, not a state dict")
    if ignore_prefix:
        sd = {k: v for k, v in sd.items() if not str(k).startswith(ignore_prefix)}
    want, got = set(module.state_dict()), {str(k) for k in sd}
    missing, unexpected = sorted(want - got), sorted(got - want)
    if missing or unexpected:
        raise InputError(f"{what}: {path} has the wrong keys: missing {_keys(missing)}, "
                         f"unexpected {_keys(unexpected)}")
    own = module.state_dict()
    bad = [f"{k} {tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__} "
           f"(want {tuple(own[k].shape)})" for k, v in sd.items()
           if not isinstance(v, torch.Tensor) or v.shape != own[k].shape]
    if bad:
        raise InputError(f"{what}: {path} has wrong shapes: {_keys(sorted(bad), 3)}")
    module.load_state_dict(sd, strict=True)


def build_lpips(lpips_weights: str | os.PathLike, vgg_weights: str | os.PathLike) -> LPIPS:
    """A frozen :class:`LPIPS` with its linear layers from ``lpips_weights`` (``vgg.pth`` format)
    and its VGG-16 trunk from ``vgg_weights`` (torchvision format)."""
    model = LPIPS()
    load_strict(model.heads, lpips_weights, "ldm.vqgan.lpips_weights (LPIPS lin0..lin4)")
    load_strict(model.net, vgg_weights, "ldm.vqgan.vgg_weights (torchvision VGG-16 features)",
                ignore_prefix="classifier.")
    log.info("LPIPS: linear layers %s, VGG-16 %s", lpips_weights, vgg_weights)
    return model
