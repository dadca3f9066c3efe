"""The WDM 3D U-Net: a guided-diffusion style denoiser for wavelet (or voxel) volumes.

Friedrich et al., "WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis",
DGM4MICCAI 2024 (arXiv 2402.19043) train the U-Net of guided-diffusion (Dhariwal & Nichol,
"Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021), made 3D, on the 8 Haar sub-bands
of a volume at half resolution. This module rebuilds that network; it knows nothing about
wavelets: ``in_channels=8`` for WDM, ``1`` for the voxel-space DDPM baseline.

Architecture (as configured by the authors' ``run.sh`` and ``script_util.py`` in
github.com/pfriedri/wdm-3d, ``guided_diffusion/unet.py``), for ``L = len(channel_mult)`` levels:

* timestep ``t`` -> sinusoidal embedding of width ``base`` (cos half first, then sin) ->
  ``Linear -> SiLU -> Linear`` to width ``4 * base`` (``time_embed.0`` / ``time_embed.2``).
* ``input_blocks.0``: 3x3x3 conv ``in_channels -> base``; per level ``num_res_blocks`` residual
  blocks to ``base * mult``, and on all but the last level a residual block that halves every
  spatial side (``resblock_updown=True``, average pooling inside the block, ``resample_2d=False``).
* ``middle_block``: two residual blocks (no attention: ``bottleneck_attention=False`` and
  ``attention_resolutions`` empty).
* ``output_blocks``: per level ``num_res_blocks + 1`` residual blocks; the last one of each level
  but the first also carries a residual block that doubles every side (nearest upsampling).
* ``out``: ``GroupNorm -> SiLU -> conv 3x3x3 base -> out_channels``, zero-initialised.

Residual block (``ResBlock``): ``in_layers = GroupNorm, SiLU, conv``; timestep injection
``emb_layers = SiLU, Linear``; ``out_layers = GroupNorm, SiLU, Dropout, conv`` with the last conv
zero-initialised (so every block starts as its skip path and the whole net outputs zeros at
initialisation); ``skip_connection`` is an identity, or a 1x1x1 conv when the width changes.

Findings from the upstream code that fix choices the paper leaves open:

* **Scale-shift norm is off** (``--use_scale_shift_norm=False`` for every WDM configuration): the
  projected embedding is *added* to the features before ``out_layers``. The FiLM variant
  (``GroupNorm(h) * (1 + scale) + shift``) is available with ``use_scale_shift_norm=True``.
* **"Additive skips" average**: with ``--additive_skips=True`` the decoder computes
  ``h = (h + skip) / 2`` before every output block (no concatenation), so decoder blocks keep the
  width of the skip they consume next, and the last residual block of each decoder level maps to
  the width of the next skip (the widths below therefore differ from a concatenating U-Net).
* Down/up-sampling inside residual blocks (``resblock_updown=True`` is the default that ``run.sh``
  does not override); no convolution in the resampling itself; all three axes are resampled.
* Hyper-parameters: base 64, 2 residual blocks per level, GroupNorm(32) computed in float32,
  SiLU, dropout 0, channel multipliers (1, 2, 2, 4, 4) at 128^3 and (1, 2, 2, 4, 4, 4) at 256^3.

Module names mirror upstream (``time_embed.0``, ``input_blocks.N.0.in_layers.2``, ``out.2``,
``output_blocks.N.1`` for up-sampling), so the released ``state_dict`` keys load without renaming.

The paper's "WavU-Net" (resampling by DWT/IDWT) is :class:`wdm.wavunet.WavUNet`; both share the
:class:`DenoisingUNet` contract, and :func:`build_network` picks the class by the preset's ``arch``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ARCHITECTURES", "DenoisingUNet", "NETWORK_PRESETS", "ResBlock", "TimestepEmbedSequential",
           "WDMUNet", "build_network", "count_parameters", "timestep_embedding"]

logger = logging.getLogger(__name__)

#: Named network configurations; ``build_network`` accepts any of these names as ``preset``.
#: ``wdm-128`` / ``wdm-256`` are the paper's networks; ``small`` (2.3M parameters at 8 channels) and
#: ``xs`` (0.57M; the embedded default's, 8.3 GFLOP per training step at batch 4 on a 16^3 x 8
#: wavelet grid) are laptop sizes; ``tiny`` is for unit tests on 16^3 grids. ``arch`` (not a
#: config key) selects the class, see :data:`ARCHITECTURES`; the ``*-wavunet`` presets are the
#: paper's WavU-Net (``ours_wnet_128`` / ``ours_wnet_256`` of upstream's ``run.sh``).
NETWORK_PRESETS: dict[str, dict[str, Any]] = {
    "wdm-128": {"base_channels": 64, "channel_mult": (1, 2, 2, 4, 4), "num_res_blocks": 2},
    "wdm-256": {"base_channels": 64, "channel_mult": (1, 2, 2, 4, 4, 4), "num_res_blocks": 2},
    # diffusion.levels 2 at 512^3: wdm-256's 128^3 grid, depth and widths; 64 in/out channels.
    "wdm-512": {"base_channels": 64, "channel_mult": (1, 2, 2, 4, 4, 4), "num_res_blocks": 2},
    "wdm-128-wavunet": {"arch": "wavunet", "base_channels": 64, "channel_mult": (1, 2, 2, 4, 4),
                        "num_res_blocks": 2},
    "wdm-256-wavunet": {"arch": "wavunet", "base_channels": 64, "channel_mult": (1, 2, 2, 4, 4, 4),
                        "num_res_blocks": 2},
    "tiny-wavunet": {"arch": "wavunet", "base_channels": 16, "channel_mult": (1, 2),
                     "num_res_blocks": 2, "num_groups": 8},
    # ``xs`` as a WavU-Net, with 2 residual blocks a level (its decoder applies each level's last
    # block twice); sides multiples of 8 (config/depth/wdm_wavunet_64.yaml: 32^3 -> 4^3).
    "xs-wavunet": {"arch": "wavunet", "base_channels": 16, "channel_mult": (1, 2, 2),
                   "num_res_blocks": 2, "num_groups": 8},
    "small": {"base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1},
    "xs": {"base_channels": 16, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "num_groups": 8},
    "tiny": {"base_channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1, "num_groups": 8},
}

#: Constructor fields that a config may override on top of a preset.
OVERRIDABLE_KEYS: tuple[str, ...] = ("base_channels", "channel_mult", "num_res_blocks", "num_groups",
                                     "dropout", "use_checkpoint", "use_scale_shift_norm")


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (guided-diffusion ``nn.timestep_embedding``).

    ``emb[:, i] = cos(t * f_i)`` and ``emb[:, half + i] = sin(t * f_i)`` with
    ``f_i = max_period ** (-i / half)``, ``half = dim // 2``; an odd ``dim`` is zero-padded.

    Args:
        t: ``(B,)`` timesteps, integer or fractional.
        dim: embedding width.
        max_period: sets the lowest frequency.

    Returns:
        ``(B, dim)`` float32 embedding.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back (guided-diffusion ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def _zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place and return it (guided-diffusion)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class _Downsample(nn.Module):
    """2x average pooling along all three spatial axes: ``(B, C, D, H, W) -> (B, C, D/2, ...)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(x, kernel_size=2, stride=2)


class _Upsample(nn.Module):
    """2x nearest-neighbour upsampling of all three axes: ``(B, C, D, H, W) -> (B, C, 2D, ...)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class TimestepBlock(nn.Module):
    """A module whose ``forward(x, emb)`` also takes the ``(B, 4*base)`` timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """``nn.Sequential`` that passes the timestep embedding to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block with timestep injection and optional 2x resampling (guided-diffusion).

    ``h = conv(SiLU(GN(x)))`` (resampled between the SiLU and the conv when ``up``/``down``);
    ``h = h + Linear(SiLU(emb))`` (or FiLM on the second GroupNorm with ``use_scale_shift_norm``);
    ``h = conv0(Dropout(SiLU(GN(h))))`` with ``conv0`` zero-initialised; output
    ``skip_connection(resample(x)) + h``.

    Shapes: ``x (B, channels, D, H, W)``, ``emb (B, emb_channels)`` ->
    ``(B, out_channels, D', H', W')`` with ``D' = D``, ``D / 2`` (down) or ``2 D`` (up).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float = 0.0,
        out_channels: int | None = None,
        use_scale_shift_norm: bool = False,
        use_checkpoint: bool = False,
        up: bool = False,
        down: bool = False,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ResBlock: `up` and `down` are mutually exclusive")
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.updown = up or down

        self.in_layers = nn.Sequential(
            GroupNorm32(num_groups, channels),
            nn.SiLU(),
            nn.Conv3d(channels, self.out_channels, 3, padding=1),
        )
        if up:
            self.h_upd: nn.Module = _Upsample()
            self.x_upd: nn.Module = _Upsample()
        elif down:
            self.h_upd, self.x_upd = _Downsample(), _Downsample()
        else:
            self.h_upd = self.x_upd = nn.Identity()

        emb_out = 2 * self.out_channels if use_scale_shift_norm else self.out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(num_groups, self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            _zero_module(nn.Conv3d(self.out_channels, self.out_channels, 3, padding=1)),
        )
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv3d(channels, self.out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Apply the block; with ``use_checkpoint`` its activations are recomputed in backward."""
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        return self._finish(x, h, emb)

    def _finish(self, x: torch.Tensor, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Timestep injection, ``out_layers`` and the residual sum, given the (resampled) input
        ``x (B, channels, D', H', W')`` and the ``in_layers`` output ``h (B, out_channels, D', H',
        W')``."""
        emb_out = self.emb_layers(emb).type(h.dtype)[:, :, None, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(emb_out, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + emb_out)
        return self.skip_connection(x) + h


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


class DenoisingUNet(nn.Module):
    """What the rest of the code relies on in a denoising U-Net: ``net(x, t)`` maps
    ``x (B, C_in, D, H, W)`` and timesteps ``t (B,)`` to ``(B, C_out, D, H, W)``; ``downsample_factor``
    (every side must be a multiple), ``set_checkpointing`` / ``use_checkpoint``, ``hparams()``.

    This base validates and stores the hyper-parameters shared by :class:`WDMUNet` and
    :class:`wdm.wavunet.WavUNet` (see :class:`WDMUNet` for their meaning); a subclass builds its
    layers and sets ``num_downsamplings`` (``FACTOR_FORMULA`` names it in errors).
    """

    FACTOR_FORMULA = "2**(len(channel_mult)-1)"

    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 64,
                 channel_mult: Sequence[int] = (1, 2, 2, 4, 4), num_res_blocks: int = 2,
                 num_groups: int = 32, dropout: float = 0.0, use_checkpoint: bool = False,
                 use_scale_shift_norm: bool = False) -> None:
        super().__init__()
        channel_mult = tuple(channel_mult)
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("out_channels", out_channels)
        _check_positive_int("base_channels", base_channels)
        _check_positive_int("num_res_blocks", num_res_blocks)
        _check_positive_int("num_groups", num_groups)
        if not channel_mult:
            raise ValueError("channel_mult must have at least one entry")
        for m in channel_mult:
            _check_positive_int(f"channel_mult entry (in {channel_mult})", m)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        widths = sorted({base_channels * m for m in channel_mult} | {base_channels})
        bad = [w for w in widths if w % num_groups]
        if bad:
            raise ValueError(
                f"num_groups={num_groups} must divide every channel count of the network "
                f"(base_channels={base_channels} x channel_mult={channel_mult} -> {widths}); "
                f"it does not divide {bad}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.channel_mult = channel_mult
        self.num_res_blocks = num_res_blocks
        self.num_groups = num_groups
        self.dropout = float(dropout)
        self.use_checkpoint = bool(use_checkpoint)
        self.use_scale_shift_norm = bool(use_scale_shift_norm)
        self.num_downsamplings = len(channel_mult) - 1

    @property
    def downsample_factor(self) -> int:
        """Total down-sampling factor; every spatial side must be a multiple of it."""
        return 2**self.num_downsamplings

    def hparams(self) -> dict[str, Any]:
        """Constructor arguments, e.g. to store beside a checkpoint and rebuild the network."""
        keys = ("in_channels", "out_channels", *OVERRIDABLE_KEYS)
        return {k: list(self.channel_mult) if k == "channel_mult" else getattr(self, k) for k in keys}

    def set_checkpointing(self, enabled: bool) -> None:
        """Switch activation checkpointing of every residual block on or off."""
        self.use_checkpoint = bool(enabled)
        for module in self.modules():
            if isinstance(module, ResBlock):
                module.use_checkpoint = self.use_checkpoint

    def _res(self, ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
        """A :class:`ResBlock` ``ch_in -> ch_out`` with this network's settings."""
        return ResBlock(ch_in, 4 * self.base_channels, dropout=self.dropout, out_channels=ch_out,
                        use_scale_shift_norm=self.use_scale_shift_norm,
                        use_checkpoint=self.use_checkpoint, num_groups=self.num_groups, **kw)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor | float | int) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"expected x of shape (B, C, D, H, W), got {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"expected {self.in_channels} input channels, got x of shape {tuple(x.shape)}"
            )
        f = self.downsample_factor
        if any(s % f for s in x.shape[2:]):
            raise ValueError(
                f"spatial shape {tuple(x.shape[2:])} of x {tuple(x.shape)} is not divisible by "
                f"{f} = {self.FACTOR_FORMULA} for channel_mult={self.channel_mult}; "
                f"every side must be a multiple of {f}"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(
                f"expected timesteps of shape ({x.shape[0]},) or a scalar, got {tuple(t.shape)}"
            )
        return t

    def forward(self, x: torch.Tensor, t: torch.Tensor | float | int) -> torch.Tensor:
        """Denoise ``x`` at timesteps ``t`` (the architecture's :meth:`_denoise` on the checked
        input and its sinusoidal time embedding).

        Args:
            x: ``(B, C_in, D, H, W)``, each side divisible by ``downsample_factor``.
            t: ``(B,)`` timesteps (long or float; a scalar is broadcast over the batch).

        Returns:
            ``(B, C_out, D, H, W)`` (the x0 prediction in WDM).
        """
        t = self._check_inputs(x, t)
        return self._denoise(x, self.time_embed(timestep_embedding(t, self.base_channels).to(x.dtype)))

    def _denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class WDMUNet(DenoisingUNet):
    """Guided-diffusion 3D U-Net with additive (averaged) skips, as used by WDM.

    See the module docstring for the layout. Every spatial side of the input must be divisible by
    ``2 ** (len(channel_mult) - 1)`` (``downsample_factor``).

    Args:
        in_channels: input channels ``C_in`` (8 Haar sub-bands for WDM, 1 for voxels).
        out_channels: output channels ``C_out`` (the network predicts x0 in WDM).
        base_channels: width of the first level (``model_channels`` upstream, 64 in the paper).
        channel_mult: width multiplier per level; one level fewer down-samplings than entries.
        num_res_blocks: residual blocks per encoder level (decoder levels get one more).
        num_groups: GroupNorm groups; must divide ``base_channels * m`` for every multiplier.
        dropout: dropout probability inside residual blocks (0 in the paper).
        use_checkpoint: recompute each residual block's activations in the backward pass
            (``torch.utils.checkpoint``, ``use_reentrant=False``) to save memory.
        use_scale_shift_norm: FiLM-style timestep conditioning; WDM uses plain addition (False).
    """

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        base_channels, channel_mult, res = self.base_channels, self.channel_mult, self._res
        emb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(
            nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        # Encoder: remember the width of every block output, each one is a skip.
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv3d(in_channels, base_channels, 3, padding=1))]
        )
        skip_widths = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(self.num_res_blocks):
                self.input_blocks.append(TimestepEmbedSequential(res(ch, base_channels * mult)))
                ch = base_channels * mult
                skip_widths.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(res(ch, ch, down=True)))
                skip_widths.append(ch)

        self.middle_block = TimestepEmbedSequential(res(ch, ch), res(ch, ch))

        # Decoder: each block consumes one skip (averaged in before the block) and outputs the
        # width of the next skip to be consumed (upstream, ``additive_skips=True``).
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            for i in range(self.num_res_blocks + 1):
                skip_widths.pop()
                next_ch = skip_widths[-1] if skip_widths else base_channels
                layers: list[nn.Module] = [res(ch, next_ch)]
                ch = next_ch
                if level and i == self.num_res_blocks:
                    layers.append(res(ch, ch, up=True))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(self.num_groups, ch),
            nn.SiLU(),
            _zero_module(nn.Conv3d(base_channels, out_channels, 3, padding=1)),
        )

    def _denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Encoder, middle and decoder with averaged skips; ``emb`` (B, 4 base) the time embedding."""
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block((h + skips.pop()) / 2, emb)
        return self.out(h)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model`` (trainable or not; works on the meta device)."""
    return sum(p.numel() for p in model.parameters())


#: Values of a preset's ``arch``: the U-Net here, the WavU-Net of :mod:`wdm.wavunet`.
ARCHITECTURES: tuple[str, ...] = ("unet", "wavunet")


def _network_class(arch: str) -> type[DenoisingUNet]:
    if arch == "wavunet":
        from wdm.wavunet import WavUNet  # it builds on this module: imported when first needed

        return WavUNet
    if arch == "unet":
        return WDMUNet
    raise ValueError(f"unknown network arch {arch!r}; allowed: {list(ARCHITECTURES)}")


def build_network(cfg: Mapping[str, Any], in_channels: int, out_channels: int) -> DenoisingUNet:
    """Build a :class:`WDMUNet` or :class:`~wdm.wavunet.WavUNet` from a preset plus overrides.

    Args:
        cfg: ``{"preset": name, **overrides}`` with ``name`` in ``NETWORK_PRESETS`` and overrides
            among ``OVERRIDABLE_KEYS`` (e.g. ``{"preset": "small", "use_checkpoint": True}``);
            the preset's ``arch`` (default ``unet``) picks the class.
        in_channels: input channels (8 for WDM, 1 in voxel space, 64 at two wavelet levels).
        out_channels: output channels.

    Raises:
        ValueError: missing/unknown preset, unknown key, or an invalid hyper-parameter.
    """
    allowed = ("preset", *OVERRIDABLE_KEYS)
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"unknown network config key(s) {unknown}; allowed keys: {list(allowed)}")
    preset = cfg.get("preset")
    if preset not in NETWORK_PRESETS:
        raise ValueError(
            f"unknown network preset {preset!r}; allowed presets: {sorted(NETWORK_PRESETS)}"
        )
    kwargs: dict[str, Any] = dict(NETWORK_PRESETS[preset])
    cls = _network_class(kwargs.pop("arch", "unet"))
    overrides = {k: v for k, v in cfg.items() if k != "preset"}
    kwargs.update(overrides)
    if "channel_mult" in kwargs:
        mult = kwargs["channel_mult"]
        if isinstance(mult, str | bytes) or not isinstance(mult, Sequence):
            raise ValueError(f"channel_mult must be a list of integers, got {mult!r}")
        kwargs["channel_mult"] = tuple(mult)
    model = cls(in_channels, out_channels, **kwargs)
    logger.info("built network preset=%s (%s) in=%d out=%d overrides=%s: %d parameters", preset,
                cls.__name__, in_channels, out_channels, overrides, count_parameters(model))
    return model
