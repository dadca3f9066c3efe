"""The WDM "WavU-Net": a U-Net whose own down- and up-sampling are a Haar DWT / IDWT.

Friedrich et al., "WDM: 3D Wavelet Diffusion Models for High-Resolution Medical Image Synthesis",
DGM4MICCAI 2024 (arXiv 2402.19043), report it as the "WDM WavU-Net" row of their table. This module
rebuilds the authors' ``WavUNetModel`` (github.com/pfriedri/wdm-3d, ``guided_diffusion/wunet.py``)
as ``run.sh`` configures it for ``ours_wnet_128`` / ``ours_wnet_256`` (run.sh:29-42 and COMMON:
base 64, 2 residual blocks, GroupNorm(32), no attention, ``use_scale_shift_norm=False``,
``additive_skips=False``, ``use_freq=True``; ``resblock_updown`` keeps its default True,
script_util.py:68), presets ``wdm-128-wavunet`` / ``wdm-256-wavunet`` of :mod:`wdm.networks`.

Layout, for ``L = len(channel_mult)`` levels, widths ``w_l = base * channel_mult[l]``, as upstream:

* ``input_blocks.0``: 3x3x3 conv ``C_in -> base``. Per level (wunet.py:497-570): ``num_res_blocks``
  plain residual blocks to ``w_l``; a *down block* (:class:`WaveletDownBlock`, ``w_l -> w_l``);
  an input-pyramid step (:class:`WaveletDownsample`). Every level down-samples, the last one too
  (no level check upstream), so ``downsample_factor = 2 ** L`` (32 for ``wdm-128-wavunet``: the
  64^3 wavelet grid of a 128^3 volume reaches 2^3).
* Down block (wunet.py:223-269 with Downsample, 98-124): ``h = conv(SiLU(GN(x)))`` at full
  resolution, then ``DWT(h)``: its LLL band / 3 goes on, its 7 high bands (LLH .. HHH, all
  channels) are the level's skip; the residual path is ``DWT(x)``'s LLL / 3. Then the usual
  timestep injection, ``out_layers`` and residual sum.
* Input pyramid (``progressive_input='residual'``, wunet.py:127-145, 561-563, 758-760): ``p_0 = x``;
  ``p_{l+1} = conv3x3x3(DWT(p_l) / 3) + h`` where the 8 bands are concatenated band-major
  (all channels' LLL, then all LLH, ...) and ``h`` is the down block's output; ``h = p_{l+1}``.
* ``middle_block``: two residual blocks (``bottleneck_attention=False``).
* Decoder, per level from the deepest (wunet.py:615-675): ``num_res_blocks`` plain residual blocks
  (to ``w_l``), then an *up block* (:class:`WaveletUpBlock`, ``w_l -> w_l``): ``h = conv(SiLU(GN(x)))``
  at low resolution, then ``IDWT(3 h, skip bands)``, residual path ``IDWT(3 x, skip bands)``, with
  the 7 high bands saved by the same level's down block (wunet.py:50-85, 236-241; no convolution
  on the skip: ``use_conv=False``). Plain decoder blocks ignore the skip (wunet.py:245-247): the
  high-frequency bands are the only skip connections.
* ``out_res``: ``num_res_blocks`` residual blocks at ``w_0``; ``out``: GroupNorm, SiLU, 3x3x3 conv
  ``-> C_out``, *not* zero-initialised (wunet.py:680-705; the plain U-Net's is).

Upstream quirk kept on purpose (it defines the released network and its parameter count): the up
block is appended to the ``layers`` list of the previous iteration (wunet.py:649), so the last
plain decoder block of each level is one module held by two consecutive ``output_blocks`` and
applied twice with the same weights. Here too: ``output_blocks[3k+1].0`` *is*
``output_blocks[3k+2].0`` (``num_res_blocks=2``); ``parameters()`` counts it once, the
``state_dict`` has both keys, as upstream's. With ``num_res_blocks=1`` that block is the level's
width-changing one and its second use fails upstream unless all levels have one width; ours raises
a ValueError at construction instead.

Wavelets: :func:`wdm.wavelets.dwt3d` / :func:`~wdm.wavelets.idwt3d`, one level. Upstream's
``DWT_3D("haar")`` (DWT_IDWT/DWT_IDWT_layer.py:432-531, DWT_IDWT_Functions.py:115-136) uses
pywt's haar ``rec_lo = (1, 1)/sqrt2``, ``rec_hi = (1, -1)/sqrt2``: the same orthonormal transform,
the same band names (letters = depth, height, width). Differences: ours returns the bands
channel-major (channels ``8c .. 8c+7``), upstream eight tensors; the pyramid step re-orders ours to
upstream's band-major concatenation so its conv weights line up; and upstream sizes its depth
matrix from ``max(H, W)`` (layer.py:465-482), so it fails when ``D > max(H, W)``, ours does not.
Upstream's ResBlock stores ``use_checkpoint`` but never checkpoints; ours does when asked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from wdm.networks import (
    DenoisingUNet,
    GroupNorm32,
    ResBlock,
    TimestepEmbedSequential,
)
from wdm.wavelets import dwt3d, idwt3d

__all__ = ["FEATURE_SCALE", "WavUNet", "WaveletDownBlock", "WaveletDownsample", "WaveletUpBlock"]

#: Upstream divides the LLL band by 3 after every DWT inside the network (and all 8 bands in the
#: input pyramid) and multiplies the LLL input of every IDWT by 3 (wunet.py:76, 121, 144).
FEATURE_SCALE: float = 3.0


def _band_view(coeffs: torch.Tensor) -> torch.Tensor:
    """``(B, 8C, d, h, w)`` from :func:`dwt3d` -> ``(B, C, 8, d, h, w)`` (band axis 2, a view)."""
    b, c8, *spatial = coeffs.shape
    return coeffs.view(b, c8 // 8, 8, *spatial)


def _inverse(low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """IDWT of ``low (B, C, d, h, w)`` (the LLL band) and ``high (B, C, 7, d, h, w)`` (LLH .. HHH)
    -> ``(B, C, 2d, 2h, 2w)``."""
    return idwt3d(torch.cat([low.unsqueeze(2), high], dim=2).flatten(1, 2))


class WaveletDownsample(nn.Module):
    """Input-pyramid step (upstream ``WaveletDownsample``): ``conv3x3x3(DWT(x) / 3)``.

    Shapes: ``(B, C_in, D, H, W) -> (B, C_out, D/2, H/2, W/2)``; the conv sees the ``8 C_in`` bands
    band-major (channel ``k * C_in + c`` = band k of channel c), as upstream concatenates them.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.in_ch, self.out_ch = in_ch, out_ch
        self.conv = nn.Conv3d(8 * in_ch, out_ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bands = _band_view(dwt3d(x)).transpose(1, 2).flatten(1, 2)  # channel-major -> band-major
        return self.conv(bands / FEATURE_SCALE)


class WaveletDownBlock(ResBlock):
    """Residual block that halves every side with a DWT and hands back the high bands.

    ``h = conv(SiLU(GN(x)))``; ``h, skip = LLL(DWT(h)) / 3, highs(DWT(h))``; residual path
    ``LLL(DWT(x)) / 3``; then :meth:`ResBlock._finish`. The width is kept (``channels`` in and out).

    Shapes: ``x (B, C, D, H, W)``, ``emb (B, E)`` -> ``(B, C, D/2, H/2, W/2)`` and the skip
    ``(B, C, 7, D/2, H/2, W/2)`` (bands LLH .. HHH of ``h``).
    """

    def __init__(self, channels: int, emb_channels: int, **kwargs: Any) -> None:
        super().__init__(channels, emb_channels, out_channels=channels, **kwargs)

    def forward(  # type: ignore[override]  # also returns the skip bands
        self, x: torch.Tensor, emb: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._down, x, emb, use_reentrant=False)
        return self._down(x, emb)

    def _down(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _band_view(dwt3d(self.in_layers(x)))
        x_low = _band_view(dwt3d(x))[:, :, 0] / FEATURE_SCALE
        return self._finish(x_low, h[:, :, 0] / FEATURE_SCALE, emb), h[:, :, 1:]


class WaveletUpBlock(ResBlock):
    """Residual block that doubles every side with an IDWT of its features and the skip bands.

    ``h = IDWT(3 conv(SiLU(GN(x))), skip)``; residual path ``IDWT(3 x, skip)``; then
    :meth:`ResBlock._finish`. The width is kept.

    Shapes: ``x (B, C, d, h, w)``, ``emb (B, E)``, ``skip (B, C, 7, d, h, w)`` (from the
    :class:`WaveletDownBlock` of the same level) -> ``(B, C, 2d, 2h, 2w)``.
    """

    def __init__(self, channels: int, emb_channels: int, **kwargs: Any) -> None:
        super().__init__(channels, emb_channels, out_channels=channels, **kwargs)

    def forward(  # type: ignore[override]  # takes the skip bands too
        self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor
    ) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._up, x, emb, skip, use_reentrant=False)
        return self._up(x, emb, skip)

    def _up(self, x: torch.Tensor, emb: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        h = _inverse(FEATURE_SCALE * self.in_layers(x), skip)
        return self._finish(_inverse(FEATURE_SCALE * x, skip), h, emb)


class WavUNet(DenoisingUNet):
    """The WavU-Net of WDM (see the module docstring), with the :class:`~wdm.networks.WDMUNet`
    hyper-parameters and contract: ``net(x, t)``, ``x (B, C_in, D, H, W)`` with every side a
    multiple of ``downsample_factor = 2 ** len(channel_mult)``, ``t (B,)`` -> ``(B, C_out, D, H, W)``.
    """

    FACTOR_FORMULA = "2**len(channel_mult)"

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        widths = [self.base_channels * m for m in self.channel_mult]
        if self.num_res_blocks == 1 and len(set(widths)) > 1:
            raise ValueError(
                f"the WavU-Net applies each decoder level's last residual block twice (upstream's "
                f"shared block), so num_res_blocks=1 needs one width for all levels, got "
                f"channel_mult={self.channel_mult}; use num_res_blocks >= 2")
        self.num_downsamplings = len(self.channel_mult)
        base, emb_dim = self.base_channels, 4 * self.base_channels
        self.time_embed = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        ch = self._build_encoder()
        self.middle_block = TimestepEmbedSequential(self._res(ch, ch), self._res(ch, ch))
        ch = self._build_decoder(ch)
        self.out_res = nn.ModuleList(
            [TimestepEmbedSequential(self._res(ch, ch)) for _ in range(self.num_res_blocks)]
        )
        self.out = nn.Sequential(GroupNorm32(self.num_groups, ch), nn.SiLU(),
                                 nn.Conv3d(ch, out_channels, 3, padding=1))

    def _wavelet_kwargs(self) -> dict[str, Any]:
        return {"dropout": self.dropout, "use_scale_shift_norm": self.use_scale_shift_norm,
                "use_checkpoint": self.use_checkpoint, "num_groups": self.num_groups}

    def _build_encoder(self) -> int:
        """``input_blocks`` as upstream numbers them; returns the bottleneck width."""
        base, emb_dim = self.base_channels, 4 * self.base_channels
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv3d(self.in_channels, base, 3, padding=1))]
        )
        ch, pyramid = base, self.in_channels
        for mult in self.channel_mult:
            for _ in range(self.num_res_blocks):
                self.input_blocks.append(TimestepEmbedSequential(self._res(ch, base * mult)))
                ch = base * mult
            down = WaveletDownBlock(ch, emb_dim, **self._wavelet_kwargs())
            self.input_blocks.append(TimestepEmbedSequential(down))
            self.input_blocks.append(TimestepEmbedSequential(WaveletDownsample(pyramid, ch)))
            pyramid = ch
        return ch

    def _build_decoder(self, ch: int) -> int:
        """``output_blocks`` with upstream's shared block (module docstring); returns the width."""
        self.output_blocks = nn.ModuleList()
        for mult in reversed(self.channel_mult):
            for _ in range(self.num_res_blocks):
                last = self._res(ch, self.base_channels * mult)
                ch = self.base_channels * mult
                self.output_blocks.append(TimestepEmbedSequential(last))
            up = WaveletUpBlock(ch, 4 * self.base_channels, **self._wavelet_kwargs())
            self.output_blocks.append(TimestepEmbedSequential(last, up))
        return ch

    def _encode(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Encoder: ``x (B, C_in, D, H, W)`` -> bottleneck ``(B, w, D/2^L, ...)`` and the skip bands
        of every level, the shallowest first."""
        h, pyramid, skips = x, x, []
        for block in self.input_blocks:
            layer = block[0]
            if isinstance(layer, WaveletDownBlock):
                h, high = layer(h, emb)
                skips.append(high)
            elif isinstance(layer, WaveletDownsample):
                h = pyramid = layer(pyramid) + h
            else:
                h = block(h, emb)
        return h, skips

    def _denoise(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """DWT encoder (high bands to the skips), middle, IDWT decoder and the output blocks."""
        h, skips = self._encode(x, emb)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            for layer in block:
                h = layer(h, emb, skips.pop()) if isinstance(layer, WaveletUpBlock) else layer(h, emb)
        for block in self.out_res:
            h = block(h, emb)
        return self.out(h)
