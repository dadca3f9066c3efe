"""The 3D VQ-GAN of the latent diffusion baseline: encoder, EMA vector quantiser, decoder, patch-GAN.

Khader et al., "Denoising diffusion probabilistic models for 3D medical image generation"
(Sci Rep 13, 7303, 2023; code "Medical Diffusion") compress a volume with a VQ-GAN (codebook
16384 x 8, down-sampling 4 or 8 per axis) and train a diffusion U-Net on its latents. Their VQ-GAN
follows VideoGPT / taming-transformers; this module rebuilds its parts in 3D:

* :class:`Encoder`: ``(B, 1, D, H, W) -> (B, code_dim, D/f, H/f, W/f)`` with ``f = 2 ** (L - 1)`` for
  ``L = len(channel_mult)``: conv in, per level a strided conv then residual blocks, GroupNorm +
  SiLU + 1x1x1 conv to ``code_dim``.
* :class:`VectorQuantizerEMA`: nearest-code lookup, codebook updated by exponential moving averages
  of code counts and sums (van den Oord et al. 2017, appendix; VideoGPT ``Codebook``), initialised
  from the first batch of encoder outputs, straight-through gradients, commitment loss
  ``beta * ||z_e - sg(z_q)||^2``, and dead-code restarts: every code whose EMA count falls below
  ``restart_threshold`` is re-seeded with an encoder output drawn by the run's generator.
* :class:`Decoder`: the mirror image (stride-2 transposed convolutions), linear output.
* :class:`PatchDiscriminator3D`: pix2pix-style ``NLayerDiscriminator`` in 3D (4^3 kernels, stride 2,
  BatchNorm, LeakyReLU 0.2) giving a grid of real/fake logits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VQGAN_PRESETS",
    "ARCH_KEYS",
    "Encoder",
    "Decoder",
    "VectorQuantizerEMA",
    "VQGAN",
    "PatchDiscriminator3D",
    "vqgan_settings",
    "build_vqgan",
    "build_discriminator",
]

#: Named VQ-GAN configurations (``ldm.vqgan.preset``); fields given in the config override them.
#: ``paper-128`` / ``paper-256``: Khader et al.'s codebook (16384 codes of dim 8), 16 hidden channels
#: doubled per level, down-sampling 4 (128^3 -> 32^3 latents) and 8 (256^3 -> 32^3), 64-channel
#: 3-layer discriminator (their released configs; residual-block counts unverified);
#: ``small``: the 32^3 laptop default; ``tiny``: tests.
VQGAN_PRESETS: dict[str, dict[str, Any]] = {
    "paper-128": {"base_channels": 16, "channel_mult": [1, 2, 4], "num_res_blocks": 1,
                  "n_codes": 16384, "code_dim": 8, "disc_channels": 64, "disc_layers": 3},
    "paper-256": {"base_channels": 16, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 1,
                  "n_codes": 16384, "code_dim": 8, "disc_channels": 64, "disc_layers": 3},
    "small": {"base_channels": 8, "channel_mult": [1, 2, 4], "num_res_blocks": 1,
              "n_codes": 256, "code_dim": 8, "disc_channels": 8, "disc_layers": 2},
    "tiny": {"base_channels": 8, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
             "n_codes": 32, "code_dim": 4, "disc_channels": 8, "disc_layers": 2},
}

#: Settings that fix the VQ-GAN's architecture: stage 2 must use the same values as stage 1.
ARCH_KEYS: tuple[str, ...] = ("base_channels", "channel_mult", "num_res_blocks", "n_codes",
                              "code_dim", "num_groups")


def vqgan_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ldm.vqgan`` section with its preset expanded (fields given in it win)."""
    preset = cfg.get("preset", "small")
    if preset not in VQGAN_PRESETS:
        raise ValueError(f"unknown ldm.vqgan.preset {preset!r}; allowed: {sorted(VQGAN_PRESETS)}")
    out = dict(VQGAN_PRESETS[preset])
    out.update(cfg)
    return out


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, ch), ch, eps=1e-6)


class ResBlock3D(nn.Module):
    """``GroupNorm, SiLU, conv3, GroupNorm, SiLU, conv3`` plus a (1x1x1 conv) skip: (B, C_in, ...) ->
    (B, C_out, ...)."""

    def __init__(self, c_in: int, c_out: int, groups: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_norm(c_in, groups), nn.SiLU(), nn.Conv3d(c_in, c_out, 3, padding=1),
                                   _norm(c_out, groups), nn.SiLU(), nn.Conv3d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv3d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    """``(B, 1, D, H, W) -> (B, code_dim, D/f, H/f, W/f)``, ``f = 2 ** (len(channel_mult) - 1)``.

    As Khader et al.'s (VideoGPT-style) encoder: a 3x3x3 conv to ``w_0`` at full resolution, then
    per further level a 4x4x4 stride-2 conv ``w_{i-1} -> w_i`` followed by ``num_res_blocks``
    residual blocks (``w_i = base_channels * channel_mult[i]``); GroupNorm, SiLU, 1x1x1 conv to
    ``code_dim``. No residual blocks at full resolution (cheap on CPUs at 32^3 and large volumes).
    """

    def __init__(self, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 code_dim: int, num_groups: int = 8) -> None:
        super().__init__()
        widths = [base_channels * m for m in channel_mult]
        layers: list[nn.Module] = [nn.Conv3d(1, widths[0], 3, padding=1)]
        for prev, w in zip(widths[:-1], widths[1:], strict=True):
            layers.append(nn.Conv3d(prev, w, 4, stride=2, padding=1))
            layers += [ResBlock3D(w, w, num_groups) for _ in range(num_res_blocks)]
        layers += [_norm(widths[-1], num_groups), nn.SiLU(), nn.Conv3d(widths[-1], code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """``(B, code_dim, d, h, w) -> (B, 1, d*f, h*f, w*f)``: the encoder's mirror.

    3x3x3 conv ``code_dim -> w_last`` and ``num_res_blocks`` residual blocks at the latent grid;
    per level a 4x4x4 stride-2 transposed conv ``w_i -> w_{i-1}`` followed by residual blocks (none
    at full resolution); GroupNorm, SiLU, 3x3x3 conv to one channel (linear output).
    """

    def __init__(self, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 code_dim: int, num_groups: int = 8) -> None:
        super().__init__()
        widths = [base_channels * m for m in channel_mult][::-1]
        layers: list[nn.Module] = [nn.Conv3d(code_dim, widths[0], 3, padding=1)]
        layers += [ResBlock3D(widths[0], widths[0], num_groups) for _ in range(num_res_blocks)]
        for i, (prev, w) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.ConvTranspose3d(prev, w, 4, stride=2, padding=1))
            if i + 2 < len(widths):
                layers += [ResBlock3D(w, w, num_groups) for _ in range(num_res_blocks)]
        layers += [_norm(widths[-1], num_groups), nn.SiLU(), nn.Conv3d(widths[-1], 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorQuantizerEMA(nn.Module):
    """Vector quantiser with an EMA codebook and dead-code restarts.

    Buffers (all checkpointed): ``embeddings`` (K, C) codes, ``cluster_size`` (K,) EMA of code counts
    ``N``, ``embed_sum`` (K, C) EMA of the sums of the vectors assigned to each code, ``initialised``.

    One training-mode call on ``n`` vectors ``z`` with one-hot assignments ``A`` (n, K):
    ``N <- decay N + (1 - decay) A.sum(0)``, ``S <- decay S + (1 - decay) A^T z``,
    ``e_k = S_k / N~_k`` with Laplace-smoothed counts ``N~ = (N + eps) / (sum N + K eps) * sum N``;
    then every code with ``N_k < restart_threshold`` gets ``e_k = S_k = z_j`` (j drawn uniformly by
    ``generator``) and ``N_k = 1``. The first training call sets all codes to random vectors of z.

    Args:
        n_codes: K. code_dim: C. decay: EMA decay (0.99). beta: commitment weight (0.25).
        restart_threshold: EMA count under which a code counts as dead (1.0, as VideoGPT); 0 disables.
    """

    def __init__(self, n_codes: int, code_dim: int, decay: float = 0.99, beta: float = 0.25,
                 restart_threshold: float = 1.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_codes, self.code_dim = int(n_codes), int(code_dim)
        self.decay, self.beta = float(decay), float(beta)
        self.restart_threshold, self.eps = float(restart_threshold), float(eps)
        self.register_buffer("embeddings", torch.randn(n_codes, code_dim))
        self.register_buffer("cluster_size", torch.zeros(n_codes))
        self.register_buffer("embed_sum", self.embeddings.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    @staticmethod
    def _flatten(z: torch.Tensor) -> torch.Tensor:
        """(B, C, d, h, w) -> (B*d*h*w, C)."""
        return z.movedim(1, -1).reshape(-1, z.shape[1])

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices (B, d, h, w) of encoder outputs ``z`` (B, C, d, h, w)."""
        flat = self._flatten(z)
        dist = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.embeddings.t()
                + self.embeddings.pow(2).sum(1)[None])
        return dist.argmin(1).view(z.shape[0], *z.shape[2:])

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Codes (B, C, d, h, w) of indices (B, d, h, w)."""
        return F.embedding(idx, self.embeddings).movedim(-1, 1)

    def _draw(self, flat: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator is not None else flat.device
        j = torch.randint(0, flat.shape[0], (k,), generator=generator, device=dev).to(flat.device)
        return flat[j]

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, idx: torch.Tensor,
                   generator: torch.Generator | None = None) -> int:
        """EMA codebook update and dead-code restarts for encoder outputs ``z`` (B, C, d, h, w)
        assigned to codes ``idx`` (B, d, h, w). Returns the number of codes restarted."""
        flat = self._flatten(z.detach().float())
        onehot = F.one_hot(idx.reshape(-1), self.n_codes).to(flat.dtype)
        d = self.decay
        self.cluster_size.mul_(d).add_(onehot.sum(0), alpha=1 - d)
        self.embed_sum.mul_(d).add_(onehot.t() @ flat, alpha=1 - d)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.n_codes * self.eps) * n
        self.embeddings.copy_(self.embed_sum / smoothed.unsqueeze(1))
        dead = (self.cluster_size < self.restart_threshold).nonzero().flatten()
        if dead.numel():
            fresh = self._draw(flat, dead.numel(), generator)
            self.embeddings[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0
        return int(dead.numel())

    def forward(self, z: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Quantise ``z`` (B, C, d, h, w). Returns the straight-through codes (same shape) and
        ``{"commitment", "perplexity", "restarted", "indices"}``; updates the codebook in training."""
        if self.training and not bool(self.initialised):
            with torch.no_grad():
                flat = self._flatten(z.detach().float())
                self.embeddings.copy_(self._draw(flat, self.n_codes, generator))
                self.embed_sum.copy_(self.embeddings)
                self.cluster_size.fill_(1.0)
                self.initialised.fill_(True)
        idx = self.codes(z)
        z_q = self.lookup(idx)  # the codes the vectors were assigned to, before this update
        restarted = self.ema_update(z, idx, generator) if self.training else 0
        commitment = self.beta * F.mse_loss(z, z_q.detach())
        probs = F.one_hot(idx.reshape(-1), self.n_codes).float().mean(0)
        perplexity = torch.exp(-(probs * (probs + 1e-10).log()).sum())
        z_st = z + (z_q - z).detach()
        return z_st, {"commitment": commitment, "perplexity": perplexity,
                      "restarted": torch.tensor(float(restarted), device=z.device), "indices": idx}


class VQGAN(nn.Module):
    """Encoder + EMA quantiser + decoder: ``(B, 1, D, H, W) -> (B, 1, D, H, W)``.

    ``encode`` gives the pre-quantisation latents (B, code_dim, D/f, H/f, W/f) that stage 2 diffuses;
    ``decode(z, quantize=True)`` snaps latents to the codebook first (as Khader et al. do).
    """

    def __init__(self, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 n_codes: int, code_dim: int, num_groups: int = 8, decay: float = 0.99,
                 beta: float = 0.25, restart_threshold: float = 1.0) -> None:
        super().__init__()
        self.factor = 2 ** (len(channel_mult) - 1)
        self.code_dim = code_dim
        self.encoder = Encoder(base_channels, channel_mult, num_res_blocks, code_dim, num_groups)
        self.quantizer = VectorQuantizerEMA(n_codes, code_dim, decay, beta, restart_threshold)
        self.decoder = Decoder(base_channels, channel_mult, num_res_blocks, code_dim, num_groups)

    def latent_shape(self, volume_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """(code_dim, D/f, H/f, W/f); every side must be divisible by the down-sampling f."""
        if any(s % self.factor for s in volume_shape):
            raise ValueError(f"volume sides {tuple(volume_shape)} must be divisible by the VQ-GAN's "
                             f"down-sampling {self.factor} (ldm.vqgan.channel_mult has "
                             f"{int(math.log2(self.factor)) + 1} levels)")
        return (self.code_dim, *(s // self.factor for s in volume_shape))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        if quantize:
            z = self.quantizer.lookup(self.quantizer.codes(z))
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_q, info = self.quantizer(self.encoder(x), generator)
        return self.decoder(z_q), info


class PatchDiscriminator3D(nn.Module):
    """3D PatchGAN: ``(B, 1, D, H, W) -> (B, 1, d', h', w')`` real/fake logits.

    conv4 s2 + LeakyReLU; ``n_layers - 1`` x (conv4 s2, BatchNorm, LeakyReLU) doubling the width
    (at most 8x); conv4 s1, BatchNorm, LeakyReLU; conv4 s1 to one channel. A side of ``s`` gives
    ``s / 2**n_layers - 2`` outputs, which must be at least 1.
    """

    def __init__(self, channels: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        self.n_layers = n_layers
        layers: list[nn.Module] = [nn.Conv3d(1, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv3d(channels * prev, channels * mult, 4, stride, 1, bias=False),
                       nn.BatchNorm3d(channels * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv3d(channels * mult, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def check_input(self, volume_shape: Sequence[int]) -> None:
        """Raise ValueError if a volume side is too small for ``n_layers`` strided convolutions."""
        small = min(volume_shape) // 2 ** self.n_layers - 2
        if small < 1:
            raise ValueError(f"ldm.vqgan.disc_layers={self.n_layers} is too deep for volumes "
                             f"{tuple(volume_shape)}: the patch grid would be empty; lower it")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_vqgan(settings: Mapping[str, Any]) -> VQGAN:
    """A :class:`VQGAN` from expanded ``ldm.vqgan`` settings (see :func:`vqgan_settings`)."""
    s = settings
    return VQGAN(s["base_channels"], s["channel_mult"], s["num_res_blocks"], s["n_codes"],
                 s["code_dim"], s["num_groups"], s["ema_decay"], s["commitment"],
                 s["restart_threshold"])


def build_discriminator(settings: Mapping[str, Any]) -> PatchDiscriminator3D:
    """The 3D patch discriminator of expanded ``ldm.vqgan`` settings."""
    return PatchDiscriminator3D(settings["disc_channels"], settings["disc_layers"])
