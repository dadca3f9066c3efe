"""HA-GAN on the benchmark interface (Sun et al., "Hierarchical Amortized GAN for 3D High
Resolution Medical Image Synthesis", IEEE JBHI 2022; github.com/batmanlab/HA-GAN ``train.py``).

One training iteration (:meth:`Model.training_step`) on a batch ``x`` (B, 1, S, S, S) in [-1, 1]:

1. draw the crop start ``c`` (voxels, :meth:`Model.sample_crop`, ``hagan.crop``): the real
   sub-volume is ``x[:, :, c : c + S/8]`` (1/8 of the depth), the generator's feature slab starts
   at ``c // 4`` on the L grid, D is told ``c / (S - S/8)``; the real low-resolution volume is
   ``x`` downsampled by 4. ``upstream`` (upstream ``train.py``, default): ``c`` any voxel in
   0..S - S/8, so the real and the generated sub-volume can be up to 3 voxels apart;
   ``aligned``: ``c`` a multiple of 4 (the real crop starts where the generator's slab does);
2. D: BCE(D(real), 1) + BCE(D(G(z)), 0), Adam lr 4e-4;
3. G: non-saturating BCE(D(G(z')), 1) with fresh noise, Adam lr 1e-4 (G is trained by this loss
   only: it is frozen during the encoder updates, as upstream);
4. E^H: L1(G^H(E^H(real sub-volume)), real sub-volume), Adam lr 1e-4;
5. E^A: features of the 8 slabs of ``x`` by E^H (no gradient), concatenated along depth, ->
   ``z_hat = E^A(.)``; loss (L1(sub-volume of G(z_hat)) + L1(low-res of G(z_hat))) / 2, Adam lr 1e-4;
   G(z_hat) uses the iteration's slab ``c // 4`` and is compared with the real crop at ``c``.

All Adam optimizers use betas (0, 0.999) (``hagan.betas``). The paper trains with batch 4 for 80k
iterations (``training.batch_size: 4``, ``training.steps: 80000`` with ``hagan.preset: hagan-128`` or
``hagan-256``). ``training.lr`` and ``training.weight_decay`` are unused.
All randomness (crop start, noise) comes from the loop's ``torch.Generator``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from baselines.hagan import losses
from baselines.hagan.networks import (
    Discriminator,
    Encoder,
    Generator,
    SubEncoder,
    check_volume_shape,
    feature_slab,
    resolve_widths,
    slab_depth,
)
from wdm.model import BenchmarkModel, register_model

__all__ = ["CROP_MODES", "Model"]

#: Values of ``hagan.crop`` (see :meth:`Model.sample_crop`).
CROP_MODES = ("aligned", "upstream")


@contextlib.contextmanager
def _frozen(*modules: nn.Module) -> Iterator[None]:
    """Parameters of ``modules`` get no gradient inside the block (restored afterwards)."""
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


@register_model("hagan")
class Model(BenchmarkModel):
    """HA-GAN: hierarchical generator, spectral-norm discriminators, encoders (see module doc).

    Args:
        cfg: resolved run config; its ``hagan`` section (``baselines/hagan/config.schema.yaml``)
            is used.
        volume_shape: (S, S, S) with S a power of two >= 16.
    """

    single_objective = False  # four networks updated in alternation

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        super().__init__(cfg, volume_shape)
        self.side = check_volume_shape(tuple(int(s) for s in volume_shape))
        self.low_side = self.side // 4
        self.slab_depth = slab_depth(self.side)  # on the L grid; L/8 from S = 32 up
        self.sub_depth = 4 * self.slab_depth  # voxels: S/8 from S = 32 up
        self.n_slabs = self.low_side // self.slab_depth
        self.last_start = self.side - self.sub_depth  # voxels: S * 7/8 from S = 32 up
        self.hcfg = cfg["hagan"]
        self.crop_mode = str(self.hcfg.get("crop", "upstream"))
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"hagan.crop: unknown mode {self.crop_mode!r}; allowed: {list(CROP_MODES)}")
        w = resolve_widths(self.hcfg)
        self.latent_dim = w["latent_dim"]
        self.generator = Generator(self.side, w["latent_dim"], w["g_channels"])
        self.discriminator = Discriminator(self.side, w["d_channels"], w["d_low_channels"])
        self.encoder = Encoder(self.generator.feature_channels)
        self.sub_encoder = SubEncoder(self.side, self.generator.feature_channels,
                                      w["sub_e_channels"], w["latent_dim"])

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator,
                "encoder": self.encoder, "sub_encoder": self.sub_encoder}

    def configure_optimizers(self, training: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Adam for G (lr_g), D (lr_d), E^H and E^A (lr_e), all with ``hagan.betas``."""
        h = self.hcfg
        betas = (float(h["betas"][0]), float(h["betas"][1]))

        def adam(m: nn.Module, lr: float) -> torch.optim.Optimizer:
            return torch.optim.Adam(m.parameters(), lr=lr, betas=betas, eps=1e-8)

        return {"g": adam(self.generator, h["lr_g"]), "d": adam(self.discriminator, h["lr_d"]),
                "e": adam(self.encoder, h["lr_e"]), "sub_e": adam(self.sub_encoder, h["lr_e"])}

    # -- helpers -------------------------------------------------------------------------------
    def sample_slab(self, generator: torch.Generator) -> int:
        """Start of the training slab on the low-resolution grid, uniform in [0, L - L/8]."""
        n = self.low_side - self.slab_depth + 1
        return int(torch.randint(0, n, (1,), generator=generator, device=generator.device).item())

    def sample_crop(self, generator: torch.Generator) -> int:
        """Depth index ``c`` (voxels) where the iteration's real sub-volume starts (``hagan.crop``).

        ``upstream``: uniform over every voxel 0..``last_start``, as upstream ``train.py``
        (``np.random.randint(0, S*7/8 + 1)``, an exclusive bound, so S·7/8 is included).
        ``last_start`` = S - sub_depth is S·7/8 from S = 32 up; at S = 16 the sub-volume is 4
        voxels (one feature voxel) deep, so c <= 12 (upstream's 14 would overrun the volume).
        ``aligned``: 4 * :meth:`sample_slab`, a multiple of 4 (one draw, as before the switch).
        """
        if self.crop_mode == "aligned":
            return 4 * self.sample_slab(generator)
        n = self.last_start + 1
        return int(torch.randint(0, n, (1,), generator=generator, device=generator.device).item())

    def crop(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """(B, 1, S, S, S) -> the (B, 1, sub_depth, S, S) sub-volume starting at voxel ``start``
        (upstream ``real_images[:, :, crop_idx : crop_idx + S//8]``)."""
        return x[:, :, start: start + self.sub_depth]

    def noise(self, n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        """z ~ N(0, I), (n, latent_dim), drawn on the generator's device."""
        return torch.randn((n, self.latent_dim), generator=generator,
                           device=generator.device).to(device)

    def encode_volume(self, x: torch.Tensor) -> torch.Tensor:
        """E^H on the slabs of ``x`` (B, 1, S, S, S) (8 from S = 32 up), concatenated along
        depth: (B, 2c, L, L, L)."""
        slabs = [self.crop(x, k * self.sub_depth) for k in range(self.n_slabs)]  # upstream: aligned
        return torch.cat([self.encoder(s) for s in slabs], dim=2)

    # -- training ------------------------------------------------------------------------------
    def training_step(self, x: torch.Tensor, generator: torch.Generator,
                      optimizers: dict[str, torch.optim.Optimizer], step: int, *,
                      shard: tuple[int, int] | None = None,
                      grad_clip: float | None = None) -> dict[str, torch.Tensor]:
        """One alternating update of D, G, E^H and E^A; returns their losses (``loss`` = D + G).

        ``shard`` and ``grad_clip`` do not apply (one process, no clipping, as upstream).
        """
        G, D, E, SE = self.generator, self.discriminator, self.encoder, self.sub_encoder
        b, dev = x.shape[0], x.device
        start = self.sample_crop(generator)  # voxels; upstream's crop_idx
        slab = feature_slab(start)  # the generator's slab, on the L grid
        real_sub = self.crop(x, start)
        real_low = losses.downsample(x, 4, self.hcfg["downsample"])
        pos = losses.slab_position(start, self.last_start, b, dev)

        # D: real -> 1, fake -> 0.
        with torch.no_grad():
            fake_sub, fake_low = G(self.noise(b, generator, dev), slab)
        d_real, d_fake = losses.d_loss(D(real_sub, real_low, pos), D(fake_sub, fake_low, pos))
        optimizers["d"].zero_grad(set_to_none=True)
        (d_real + d_fake).backward()
        optimizers["d"].step()

        # G: non-saturating loss through a frozen D.
        with _frozen(D):
            fake_sub, fake_low = G(self.noise(b, generator, dev), slab)
            g = losses.g_loss(D(fake_sub, fake_low, pos))
            optimizers["g"].zero_grad(set_to_none=True)
            g.backward()
            optimizers["g"].step()

        with _frozen(G):
            # E^H: sub-volume -> features -> G^H -> sub-volume.
            e = losses.reconstruction_loss(G.high_res(E(real_sub)), real_sub)
            optimizers["e"].zero_grad(set_to_none=True)
            e.backward()
            optimizers["e"].step()

            # E^A: whole-volume features (E^H, no gradient) -> z -> G -> both resolutions.
            with torch.no_grad():
                feats = self.encode_volume(x)
            rec_sub, rec_low = G(SE(feats), slab)
            sub_e = (losses.reconstruction_loss(rec_sub, real_sub)
                     + losses.reconstruction_loss(rec_low, real_low)) / 2.0
            optimizers["sub_e"].zero_grad(set_to_none=True)
            sub_e.backward()
            optimizers["sub_e"].step()

        return {"loss": (d_real + d_fake + g).detach(), "d_real": d_real.detach(),
                "d_fake": d_fake.detach(), "g": g.detach(), "e": e.detach(), "sub_e": sub_e.detach()}

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, *, device: torch.device | str = "cpu",
                 **_sampling: Any) -> torch.Tensor:
        """``n`` full volumes (n, 1, S, S, S) in [-1, 1]: G^H on the whole feature volume.

        The diffusion sampler options of the run config's ``sampling`` section do not apply.
        """
        full, _ = self.generator(self.noise(n, generator, device))
        return full.clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Encode (B, 1, S, S, S) volumes with E^H + E^A and decode them with G (full volume)."""
        full, _ = self.generator(self.sub_encoder(self.encode_volume(x)))
        return full
