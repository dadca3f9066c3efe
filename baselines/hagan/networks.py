"""HA-GAN networks (Sun et al., "Hierarchical Amortized GAN for 3D High Resolution Medical Image
Synthesis", IEEE JBHI 2022), rebuilt for any cubic power-of-two volume side >= 16.

Notation: ``S`` volume side, ``L = S / 4`` the low-resolution side, ``c`` the generator width.

* :class:`Generator`: ``z`` (B, latent) -> Linear -> (B, 16c, 4, 4, 4) -> shared trunk G^A of five
  3x3x3 conv + GroupNorm + ReLU blocks with widths (16c, 16c, 8c, 4c, 2c), nearest x2 upsampling
  before the first ``log2(L / 4)`` blocks after the first -> features (B, 2c, L, L, L).
  G^L: conv blocks 2c -> c -> c/2 -> 1 + tanh at L³ (the low-resolution volume).
  G^H: (nearest x2, conv, GroupNorm, ReLU) to width c, (nearest x2, conv) to 1, tanh: turns
  features of any depth ``d`` into (B, 1, 4d, S, S) voxels. In training only the features of a
  random axial slab (depth L/8, i.e. S/8 voxels) go through G^H; at sampling the whole volume.
  At S = 16 the slab cannot be thinner than one feature voxel, so it is 4 voxels (S/4) deep.
  With c = 32 and latent 1024 this is the paper's 128³ (two upsamplings in the trunk) and 256³
  (four) generator exactly.
* :class:`Discriminator`: D^H on the (B, 1, S/8, S, S) sub-volume (spectral-norm convs, LeakyReLU
  0.2: full stride-2 k4 convs while the depth exceeds 4, then (2,4,4)/2 convs to depth 1, then
  (1,4,4)/(1,2,2) convs to 4x4, a valid (1,4,4) conv; the crop position c / (S - S/8) in [0, 1]
  is appended before two spectral-norm linear layers, as upstream's ``crop_idx / 224.``) and D^L
  on the (B, 1, L, L, L) low-resolution volume (stride-2 k4 convs to 4³, a valid k4 conv); the
  two logits are averaged.
* :class:`Encoder` (E^H): sub-volume (B, 1, S/8, S, S) -> features (B, 2c, L/8, L, L), the input
  space of G^H. :class:`SubEncoder` (E^A): features of the whole volume (B, 2c, L, L, L) -> ``z``.

Widths follow upstream (github.com/batmanlab/HA-GAN, ``models/Model_HA_GAN_{128,256}.py``): D^H
ends at ``d_channels`` (512) with every earlier layer half as wide, D^L and E^A end at 256 likewise.
GroupNorm uses 8 groups (fewer when a layer is narrower than 8 channels).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

__all__ = ["HAGAN_PRESETS", "Generator", "Discriminator", "Encoder", "SubEncoder",
           "check_volume_shape", "feature_slab", "resolve_widths", "slab_depth"]

#: Named widths; any field can be overridden in the run config's ``hagan`` section.
#: ``hagan-128`` / ``hagan-256`` are the paper's networks (their depth follows from the volume
#: side); ``small`` is the 32³ laptop default; ``tiny`` is for unit tests at 16³.
HAGAN_PRESETS: dict[str, dict[str, int]] = {
    "hagan-128": {"latent_dim": 1024, "g_channels": 32, "d_channels": 512, "d_low_channels": 256,
                  "sub_e_channels": 256},
    "hagan-256": {"latent_dim": 1024, "g_channels": 32, "d_channels": 512, "d_low_channels": 256,
                  "sub_e_channels": 256},
    "small": {"latent_dim": 128, "g_channels": 4, "d_channels": 64, "d_low_channels": 32,
              "sub_e_channels": 32},
    "tiny": {"latent_dim": 16, "g_channels": 2, "d_channels": 16, "d_low_channels": 8,
             "sub_e_channels": 8},
}

_WIDTH_KEYS = ("latent_dim", "g_channels", "d_channels", "d_low_channels", "sub_e_channels")


def resolve_widths(cfg: dict[str, Any]) -> dict[str, int]:
    """The preset named by ``cfg['preset']`` with any explicit width in ``cfg`` applied on top."""
    preset = cfg.get("preset", "small")
    if preset not in HAGAN_PRESETS:
        raise ValueError(f"hagan.preset: unknown preset {preset!r}; allowed: {sorted(HAGAN_PRESETS)}")
    widths = dict(HAGAN_PRESETS[preset])
    widths.update({k: int(cfg[k]) for k in _WIDTH_KEYS if cfg.get(k) is not None})
    return widths


def check_volume_shape(shape: tuple[int, ...]) -> int:
    """The side S of a cubic volume; S must be a power of two >= 16 (so L = S/4 >= 4 and S/8 >= 2)."""
    if len(shape) != 3 or len(set(shape)) != 1:
        raise ValueError(f"hagan needs cubic volumes, got {tuple(shape)}")
    side = int(shape[0])
    if side < 16 or side & (side - 1):
        raise ValueError(f"hagan needs a power-of-two volume side >= 16, got {side}")
    return side


def slab_depth(side: int) -> int:
    """Depth of the training slab on the L = S/4 feature grid: L/8 (S/8 voxels), at least 1."""
    return max(side // 32, 1)


def feature_slab(start: int) -> int:
    """Start on the L = S/4 feature grid of the generator's slab for a real crop starting at
    voxel ``start``: ``start // 4``, as upstream ``Model_HA_GAN_{128,256}.py``
    (``h_latent[:, :, crop_idx//4 : crop_idx//4 + S/32]``); the two are up to 3 voxels apart."""
    return start // 4


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, ch), ch)


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """3x3x3 conv -> GroupNorm -> ReLU (the generator's building block)."""
    return nn.Sequential(nn.Conv3d(c_in, c_out, 3, padding=1), _norm(c_out), nn.ReLU())


def _sn_conv(c_in: int, c_out: int, kernel: Any, stride: Any, padding: Any) -> nn.Module:
    return spectral_norm(nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding))


def _widths_ending_at(last: int, n: int) -> list[int]:
    """``n`` widths doubling up to ``last``: [last / 2^(n-1), ..., last / 2, last] (at least 1)."""
    return [max(last >> (n - 1 - i), 1) for i in range(n)]


class Generator(nn.Module):
    """G^A (trunk), G^L (low-resolution head) and G^H (high-resolution head) of HA-GAN."""

    def __init__(self, side: int, latent_dim: int, channels: int) -> None:
        super().__init__()
        c = channels
        self.side, self.low_side, self.latent_dim, self.channels = side, side // 4, latent_dim, c
        self.n_up = int(math.log2(self.low_side // 4))
        self.fc = nn.Linear(latent_dim, 4 * 4 * 4 * 16 * c)
        widths = [16 * c, 16 * c, 8 * c, 4 * c, 2 * c]
        self.trunk = nn.ModuleList(
            _conv_block(w_in, w_out) for w_in, w_out in zip([16 * c, *widths[:-1]], widths, strict=True)
        )
        half = max(c // 2, 1)
        self.low_head = nn.Sequential(_conv_block(2 * c, c), _conv_block(c, half),
                                      nn.Conv3d(half, 1, 3, padding=1), nn.Tanh())
        self.high_head = nn.ModuleList([_conv_block(2 * c, c), nn.Conv3d(c, 1, 3, padding=1)])

    @property
    def feature_channels(self) -> int:
        return 2 * self.channels

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, 2c, L, L, L) shared features (G^A)."""
        h = self.fc(z).view(z.shape[0], 16 * self.channels, 4, 4, 4)
        for i, block in enumerate(self.trunk):
            if 1 <= i <= self.n_up:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = block(h)
        return h

    def low_res(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, 2c, L, L, L) -> (B, 1, L, L, L) low-resolution volume in [-1, 1] (G^L)."""
        return self.low_head(feats)

    def high_res(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, 2c, d, L, L) features of a slab -> (B, 1, 4d, S, S) voxels in [-1, 1] (G^H)."""
        h = self.high_head[0](F.interpolate(feats, scale_factor=2, mode="nearest"))
        h = self.high_head[1](F.interpolate(h, scale_factor=2, mode="nearest"))
        return torch.tanh(h)

    def forward(self, z: torch.Tensor, slab: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training mode when ``slab`` (start on the L grid, :func:`feature_slab` of the crop) is
        given: (sub-volume of depth S/8, low-resolution volume); otherwise (full (B, 1, S, S, S)
        volume, low-resolution volume)."""
        feats = self.features(z)
        low = self.low_res(feats)
        if slab is not None:
            feats = feats[:, :, slab: slab + slab_depth(self.side)]
        return self.high_res(feats), low


class Discriminator(nn.Module):
    """D^H on the sub-volume (with its position) and D^L on the low-resolution volume, both
    spectral-normalised; the output is the mean of the two logits, shape (B, 1)."""

    def __init__(self, side: int, channels: int, low_channels: int) -> None:
        super().__init__()
        depth, hw = 4 * slab_depth(side), side
        specs: list[tuple[Any, Any, Any]] = []
        while depth > 4:
            specs.append((4, 2, 1))
            depth, hw = depth // 2, hw // 2
        while depth > 1:
            specs.append(((2, 4, 4), 2, (0, 1, 1)))
            depth, hw = depth // 2, hw // 2
        while hw > 4:
            specs.append(((1, 4, 4), (1, 2, 2), (0, 1, 1)))
            hw //= 2
        widths = _widths_ending_at(channels, len(specs))
        self.high = nn.ModuleList(
            _sn_conv(w_in, w_out, *spec)
            for w_in, w_out, spec in zip([1, *widths][:-1], widths, specs, strict=True)
        )
        top = max(channels // 4, 1)
        self.high_out = _sn_conv(widths[-1] if widths else 1, top, (1, 4, 4), 1, 0)
        self.fc1 = spectral_norm(nn.Linear(top + 1, max(channels // 8, 1)))
        self.fc2 = spectral_norm(nn.Linear(max(channels // 8, 1), 1))

        n_low = int(math.log2(side // 4 // 4))
        low_widths = _widths_ending_at(low_channels, n_low)
        self.low = nn.ModuleList(
            _sn_conv(w_in, w_out, 4, 2, 1)
            for w_in, w_out in zip([1, *low_widths][:-1], low_widths, strict=True)
        )
        self.low_out = _sn_conv(low_widths[-1] if low_widths else 1, 1, 4, 1, 0)

    def forward(self, sub: torch.Tensor, low: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """sub (B, 1, 4 slab_depth, S, S), low (B, 1, L, L, L), position (B,) in [0, 1] -> logits (B, 1)."""
        h = sub
        for conv in self.high:
            h = F.leaky_relu(conv(h), 0.2)
        h = F.leaky_relu(self.high_out(h), 0.2).flatten(1)
        h = torch.cat([h, position.to(h.dtype).view(-1, 1)], dim=1)
        logit_high = self.fc2(F.leaky_relu(self.fc1(h), 0.2))
        g = low
        for conv in self.low:
            g = F.leaky_relu(conv(g), 0.2)
        logit_low = self.low_out(g).flatten(1)
        return (logit_high + logit_low) / 2.0


class Encoder(nn.Module):
    """E^H: sub-volume (B, 1, 4d, S, S) -> G^H input features (B, 2c, d, S/4, S/4)."""

    def __init__(self, feature_channels: int) -> None:
        super().__init__()
        ce = feature_channels
        self.net = nn.Sequential(
            nn.Conv3d(1, ce // 2, 4, stride=2, padding=1), _norm(ce // 2), nn.ReLU(),
            nn.Conv3d(ce // 2, ce // 2, 3, padding=1), _norm(ce // 2), nn.ReLU(),
            nn.Conv3d(ce // 2, ce, 4, stride=2, padding=1), _norm(ce), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SubEncoder(nn.Module):
    """E^A: whole-volume features (B, 2c, L, L, L) -> latent code (B, latent_dim)."""

    def __init__(self, side: int, feature_channels: int, channels: int, latent_dim: int) -> None:
        super().__init__()
        n = int(math.log2(side // 4 // 4))
        widths = _widths_ending_at(channels, n)
        layers: list[nn.Module] = []
        for w_in, w_out in zip([feature_channels, *widths][:-1], widths, strict=True):
            layers += [nn.Conv3d(w_in, w_out, 4, stride=2, padding=1), _norm(w_out), nn.ReLU()]
        layers.append(nn.Conv3d(widths[-1] if widths else feature_channels, latent_dim, 4))
        self.net = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).flatten(1)
