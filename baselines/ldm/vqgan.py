"""The 3D VQ-GAN of the latent diffusion baseline: encoder, EMA vector quantiser, decoder.

Khader et al., "Denoising diffusion probabilistic models for 3D medical image generation"
(Sci Rep 13, 7303, 2023; code "Medical Diffusion", ``vq_gan_3d/model/vqgan.py``) compress a volume
with a VQ-GAN (codebook 16384 x 8, down-sampling 4 or 8 per axis) and train a diffusion U-Net on its
latents. Their VQ-GAN follows VideoGPT / TATS; this module rebuilds it with the same layers. With
``w_i = base_channels * channel_mult[i]`` (``L = len(channel_mult)`` levels, ``f = 2 ** (L - 1)``;
their ``n_hiddens * 2 ** i``):

* :class:`Encoder`: ``(B, 1, D, H, W) -> (B, w_{L-1}, D/f, H/f, W/f)``: 3^3 conv ``1 -> w_0``, per
  down-sampling ``i = 1 .. L-1`` a 4^3 stride-2 conv ``w_{i-1} -> w_i`` and ``num_res_blocks``
  (theirs: 1) residual blocks; GroupNorm + SiLU.
* ``pre_vq`` / ``post_vq``: 1x1x1 convs ``w_{L-1} <-> code_dim`` around the quantiser.
* :class:`VectorQuantizerEMA`: nearest-code lookup, codebook updated by exponential moving averages
  of code counts and sums (van den Oord et al. 2017, appendix; VideoGPT ``Codebook``), initialised
  from the first batch of encoder outputs, straight-through gradients, commitment loss
  ``beta * ||z_e - sg(z_q)||^2``, and dead-code restarts: every code whose EMA count falls below
  ``restart_threshold`` is re-seeded with an encoder output drawn by the run's generator.
* :class:`Decoder`: ``(B, w_{L-1}, d, h, w) -> (B, 1, d*f, h*f, w*f)``: GroupNorm + SiLU, then per
  up-sampling to level ``j = L-2 .. 0`` a 4^3 stride-2 transposed conv to ``w_{j+1}`` and
  ``decoder_res_blocks`` (theirs: 2) residual blocks; 3^3 conv ``w_1 -> 1`` (linear output). As
  theirs, the decoder runs one level wider than the encoder (``w_1`` channels at full resolution).

Every 3^3 / 4^3 convolution pads "same" with ``padding`` (theirs: ``replicate``), GroupNorm has
``num_groups`` groups (theirs: 32) and eps 1e-6. The 2D / 3D patch discriminators live in
:mod:`baselines.ldm.discriminators`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wdm.io import InputError

__all__ = [
    "VQGAN_PRESETS",
    "ARCH_KEYS",
    "SameConv3d",
    "SameConvTranspose3d",
    "ResBlock3D",
    "Encoder",
    "Decoder",
    "VectorQuantizerEMA",
    "VQGAN",
    "vqgan_settings",
    "build_vqgan",
]

#: Named VQ-GAN configurations (``ldm.vqgan.preset``); fields given in the config override them.
#: ``paper-128`` / ``paper-256``: Khader et al.'s LIDC / BraTS VQ-GAN exactly (train_vqgan.sh:
#: n_hiddens 16, embedding_dim 8, n_codes 16384, downsample [4,4,4] / [8,8,8]; vq_gan_3d.yaml:
#: num_groups 32, disc_channels 64, disc_layers 3; vqgan.py: 1 residual block per encoder level,
#: 2 per decoder level): widths 16 -> 32 -> 64 (-> 128), 128^3 -> 32^3 and 256^3 -> 32^3 latents.
#: ``small`` (the 32^3 CPU default) and ``tiny`` (tests, 16^3) keep that structure but not GroupNorm
#: 32: it needs every normalised width divisible by 32, the decoder's full-resolution width w_1
#: included, and two residual blocks of 32 channels at 32^3 alone cost ~10x the whole former
#: ``small`` step (FLOPs per step from wdm.budget at batch 4: former small 8.1e9; this structure at
#: base 16 / GroupNorm 32 1.7e11, at base 8 x [1, 2, 4] 4.6e10). Under the workflow's fixed FLOP
#: budget that would be 5-20x fewer steps, so ``small`` is base 8 x [1, 1, 2] (widths 8, 8, 16;
#: 1.4e10 per step) with GroupNorm 8 (1-2 channels per group, as the former ``small``), down-sampling
#: 4 (32^3 -> 8^3 x 8 latents), 256 codes, 8-channel 2-layer discriminators (64 / 3 would cost more
#: than the VQ-GAN at 32^3). ``tiny``: base 4 x [1, 1, 2] (widths 4, 4, 8), GroupNorm 4, 32 codes of
#: dim 4 (5.3e8 FLOPs per step at batch 2 on 16^3; the former tiny 3.9e8).
VQGAN_PRESETS: dict[str, dict[str, Any]] = {
    "paper-128": {"base_channels": 16, "channel_mult": [1, 2, 4], "num_res_blocks": 1,
                  "decoder_res_blocks": 2, "num_groups": 32, "n_codes": 16384, "code_dim": 8,
                  "disc_channels": 64, "disc_layers": 3},
    "paper-256": {"base_channels": 16, "channel_mult": [1, 2, 4, 8], "num_res_blocks": 1,
                  "decoder_res_blocks": 2, "num_groups": 32, "n_codes": 16384, "code_dim": 8,
                  "disc_channels": 64, "disc_layers": 3},
    "small": {"base_channels": 8, "channel_mult": [1, 1, 2], "num_res_blocks": 1,
              "decoder_res_blocks": 2, "num_groups": 8, "n_codes": 256, "code_dim": 8,
              "disc_channels": 8, "disc_layers": 2},
    "tiny": {"base_channels": 4, "channel_mult": [1, 1, 2], "num_res_blocks": 1,
             "decoder_res_blocks": 2, "num_groups": 4, "n_codes": 32, "code_dim": 4,
             "disc_channels": 8, "disc_layers": 2},
}

#: Settings that fix the VQ-GAN's architecture: stage 2 must use the same values as stage 1.
ARCH_KEYS: tuple[str, ...] = ("base_channels", "channel_mult", "num_res_blocks", "decoder_res_blocks",
                              "n_codes", "code_dim", "num_groups", "padding")


def vqgan_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``ldm.vqgan`` section with its preset expanded (fields given in it win)."""
    preset = cfg.get("preset", "small")
    if preset not in VQGAN_PRESETS:
        raise ValueError(f"unknown ldm.vqgan.preset {preset!r}; allowed: {sorted(VQGAN_PRESETS)}")
    out = {"padding": "replicate", **VQGAN_PRESETS[preset]}
    out.update(cfg)
    return out


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    """GroupNorm(groups, ch, eps 1e-6); ``groups`` must divide ``ch`` (no silent correction)."""
    if ch % groups:
        raise InputError(f"ldm.vqgan.num_groups={groups} does not divide a normalised width of {ch} "
                         "channels; choose base_channels / channel_mult / num_groups to fit")
    return nn.GroupNorm(groups, ch, eps=1e-6)


def _same_pad(kernel: int, stride: int) -> tuple[int, ...]:
    """F.pad widths for "same" output (input side / stride): ``k - s`` split, the extra one first."""
    p = kernel - stride
    return (p // 2 + p % 2, p // 2) * 3


class SameConv3d(nn.Module):
    """``(B, C_in, D, H, W) -> (B, C_out, D/s, H/s, W/s)``: pad ``k - s`` (``padding`` mode:
    ``replicate`` or ``zeros``), then an unpadded Conv3d (as medicaldiffusion's SamePadConv3d)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1,
                 padding: str = "replicate") -> None:
        super().__init__()
        self.pad, self.mode = _same_pad(kernel, stride), padding
        self.conv = nn.Conv3d(c_in, c_out, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "replicate":
            x = F.pad(x, self.pad, mode="replicate")
        else:
            x = F.pad(x, self.pad)
        return self.conv(x)


class SameConvTranspose3d(nn.Module):
    """``(B, C_in, d, h, w) -> (B, C_out, d*s, h*s, w*s)``: pad ``k - s`` as :class:`SameConv3d`,
    then ConvTranspose3d with padding ``k - 1`` (with ``zeros`` this equals padding ``(k - s) / 2``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 2,
                 padding: str = "replicate") -> None:
        super().__init__()
        self.pad, self.mode = _same_pad(kernel, stride), padding
        self.convt = nn.ConvTranspose3d(c_in, c_out, kernel, stride=stride, padding=kernel - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "replicate":
            x = F.pad(x, self.pad, mode="replicate")
        else:
            x = F.pad(x, self.pad)
        return self.convt(x)


class ResBlock3D(nn.Module):
    """``x + conv3(SiLU(GN(conv3(SiLU(GN(x))))))``: (B, C, D, H, W) -> same shape."""

    def __init__(self, ch: int, groups: int, padding: str = "replicate") -> None:
        super().__init__()
        self.block = nn.Sequential(_norm(ch, groups), nn.SiLU(), SameConv3d(ch, ch, 3, padding=padding),
                                   _norm(ch, groups), nn.SiLU(), SameConv3d(ch, ch, 3, padding=padding))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _widths(base_channels: int, channel_mult: Sequence[int]) -> list[int]:
    if len(channel_mult) < 2:
        raise InputError(f"ldm.vqgan.channel_mult {list(channel_mult)}: needs at least 2 levels "
                         "(one down-sampling)")
    return [base_channels * m for m in channel_mult]


class Encoder(nn.Module):
    """``(B, 1, D, H, W) -> (B, w_{L-1}, D/f, H/f, W/f)`` (normalised and activated features).

    ``conv_in`` 3^3 ``1 -> w_0``; ``levels[i]``: 4^3 stride-2 conv ``w_i -> w_{i+1}`` then
    ``num_res_blocks`` residual blocks; ``out``: GroupNorm + SiLU (Khader et al.'s Encoder).
    """

    def __init__(self, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int = 1,
                 num_groups: int = 32, padding: str = "replicate") -> None:
        super().__init__()
        w = _widths(base_channels, channel_mult)
        self.out_channels = w[-1]
        self.conv_in = SameConv3d(1, w[0], 3, padding=padding)
        self.levels = nn.ModuleList(
            nn.Sequential(SameConv3d(prev, cur, 4, stride=2, padding=padding),
                          *[ResBlock3D(cur, num_groups, padding) for _ in range(num_res_blocks)])
            for prev, cur in zip(w[:-1], w[1:], strict=True))
        self.out = nn.Sequential(_norm(w[-1], num_groups), nn.SiLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            h = level(h)
        return self.out(h)


class Decoder(nn.Module):
    """``(B, w_{L-1}, d, h, w) -> (B, 1, d*f, h*f, w*f)`` (Khader et al.'s Decoder).

    ``inp``: GroupNorm + SiLU; ``levels[k]`` (k = 0 .. L-2, up-sampling to level j = L-2-k): 4^3
    stride-2 transposed conv to ``w_{j+1}`` then ``decoder_res_blocks`` residual blocks;
    ``conv_out`` 3^3 ``w_1 -> 1``, linear.
    """

    def __init__(self, base_channels: int, channel_mult: Sequence[int], decoder_res_blocks: int = 2,
                 num_groups: int = 32, padding: str = "replicate") -> None:
        super().__init__()
        w = _widths(base_channels, channel_mult)
        self.inp = nn.Sequential(_norm(w[-1], num_groups), nn.SiLU())
        levels, ch = [], w[-1]
        for j in reversed(range(len(w) - 1)):
            levels.append(nn.Sequential(
                SameConvTranspose3d(ch, w[j + 1], 4, stride=2, padding=padding),
                *[ResBlock3D(w[j + 1], num_groups, padding) for _ in range(decoder_res_blocks)]))
            ch = w[j + 1]
        self.levels = nn.ModuleList(levels)
        self.conv_out = SameConv3d(ch, 1, 3, padding=padding)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.inp(h)
        for level in self.levels:
            h = level(h)
        return self.conv_out(h)


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
    """Encoder, ``pre_vq``, EMA quantiser, ``post_vq``, decoder: ``(B, 1, D, H, W) -> same shape``.

    ``encode`` gives the pre-quantisation latents (B, code_dim, D/f, H/f, W/f) that stage 2 diffuses;
    ``decode(z, quantize=True)`` snaps latents to the codebook first (as Khader et al. do).
    """

    def __init__(self, base_channels: int, channel_mult: Sequence[int], num_res_blocks: int,
                 n_codes: int, code_dim: int, num_groups: int = 32, decay: float = 0.99,
                 beta: float = 0.25, restart_threshold: float = 1.0, decoder_res_blocks: int = 2,
                 padding: str = "replicate") -> None:
        super().__init__()
        self.factor = 2 ** (len(channel_mult) - 1)
        self.code_dim = code_dim
        self.encoder = Encoder(base_channels, channel_mult, num_res_blocks, num_groups, padding)
        width = self.encoder.out_channels
        self.pre_vq = nn.Conv3d(width, code_dim, 1)
        self.quantizer = VectorQuantizerEMA(n_codes, code_dim, decay, beta, restart_threshold)
        self.post_vq = nn.Conv3d(code_dim, width, 1)
        self.decoder = Decoder(base_channels, channel_mult, decoder_res_blocks, num_groups, padding)

    def latent_shape(self, volume_shape: Sequence[int]) -> tuple[int, int, int, int]:
        """(code_dim, D/f, H/f, W/f); every side must be divisible by the down-sampling f."""
        if any(s % self.factor for s in volume_shape):
            raise ValueError(f"volume sides {tuple(volume_shape)} must be divisible by the VQ-GAN's "
                             f"down-sampling {self.factor} (ldm.vqgan.channel_mult has "
                             f"{int(math.log2(self.factor)) + 1} levels)")
        return (self.code_dim, *(s // self.factor for s in volume_shape))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) -> pre-quantisation latents (B, code_dim, D/f, H/f, W/f)."""
        return self.pre_vq(self.encoder(x))

    def decode(self, z: torch.Tensor, quantize: bool = True) -> torch.Tensor:
        """Latents (B, code_dim, d, h, w) -> volumes (B, 1, d*f, h*f, w*f)."""
        if quantize:
            z = self.quantizer.lookup(self.quantizer.codes(z))
        return self.decoder(self.post_vq(z))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        z_q, info = self.quantizer(self.encode(x), generator)
        return self.decoder(self.post_vq(z_q)), info


def build_vqgan(settings: Mapping[str, Any]) -> VQGAN:
    """A :class:`VQGAN` from expanded ``ldm.vqgan`` settings (see :func:`vqgan_settings`)."""
    s = settings
    return VQGAN(s["base_channels"], s["channel_mult"], s["num_res_blocks"], s["n_codes"],
                 s["code_dim"], s["num_groups"], s["ema_decay"], s["commitment"],
                 s["restart_threshold"], s["decoder_res_blocks"], s.get("padding", "replicate"))
