"""The model interface every entry of the benchmark follows, and WDM on it.

A model is built from a resolved run config and the volume shape, and offers:

* ``modules()``: the ``nn.Module`` s whose weights are trained and checkpointed, by name;
* ``loss(x, generator)``: one training objective on a batch ``x`` of shape (B, 1, D, H, W) with
  voxels in [-1, 1]; all randomness from ``generator``; an optional keyword ``shard=(start,
  global_batch)`` enables data-parallel (DDP) training (:mod:`wdm.distributed`);
* ``generate(n, generator, **sampling)``: ``n`` volumes (n, 1, D, H, W) in [-1, 1].

Models with more than one objective (GANs) replace ``loss`` by two optional methods:
``configure_optimizers(training_cfg) -> dict[str, Optimizer]`` and
``training_step(x, generator, optimizers, step) -> dict[str, Tensor]`` (first key ``loss``),
which own the backward passes and optimizer steps. All optimizers are checkpointed by name.

The training and sampling loops (:mod:`wdm.train`, :mod:`wdm.sample`) are written against this
interface only. ``get_model_class("wdm")`` is :class:`WDMModel`; any other name ``X`` is looked up as
``baselines.X.Model``, so a baseline joins by adding its own subpackage.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn

from wdm import codec
from wdm.diffusion import GaussianDiffusion
from wdm.networks import build_network
from wdm.samplers import get_sampler

__all__ = ["BenchmarkModel", "DiffusionModel", "WDMModel", "get_model_class"]


class BenchmarkModel(Protocol):
    """Structural type of a benchmark model (see module docstring)."""

    name: str

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None: ...

    def modules(self) -> dict[str, nn.Module]: ...

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def generate(self, n: int, generator: torch.Generator, **sampling: Any) -> torch.Tensor: ...


class DiffusionModel:
    """x0-predicting Gaussian diffusion on a fixed representation of the volume (shared base).

    The representation is given by three hooks a subclass may override: ``encode`` (voxels ->
    diffusion state), ``decode`` (state -> voxels) and ``clip_x0`` (projection of a predicted
    clean state onto the data range, applied when ``diffusion.wavelet_clip`` is on). The defaults
    are the voxel-space identity with clamping to [-1, 1], i.e. a plain 3D DDPM.

    Args:
        cfg: resolved run config (``network``, ``diffusion`` sections used here).
        volume_shape: (D, H, W) of the training volumes.
        state_shape: (C, d, h, w) of the diffusion state the network denoises.
    """

    name = "diffusion"

    def __init__(self, cfg: dict, volume_shape: Sequence[int], state_shape: Sequence[int]) -> None:
        self.volume_shape = tuple(int(s) for s in volume_shape)
        self.state_shape = tuple(int(s) for s in state_shape)
        channels = self.state_shape[0]
        self.network = build_network(cfg["network"], in_channels=channels, out_channels=channels)
        f = self.network.downsample_factor
        if any(s % f for s in self.state_shape[1:]):
            raise ValueError(f"the network needs every side of its input {self.state_shape[1:]} "
                             f"(from volumes {self.volume_shape}) to be divisible by {f}")
        self.diffusion = GaussianDiffusion.from_config(cfg["diffusion"])
        self.clip = bool(cfg["diffusion"]["wavelet_clip"])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) voxels in [-1, 1] -> (B, *state_shape) diffusion state (identity here)."""
        return x

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """(B, *state_shape) diffusion state -> (B, 1, D, H, W) voxels (identity here)."""
        return c

    def clip_x0(self, c0: torch.Tensor) -> torch.Tensor:
        """Project a predicted clean state onto the data range (voxels clamped to [-1, 1] here)."""
        return c0.clamp(-1.0, 1.0)

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network}

    def loss(self, x: torch.Tensor, generator: torch.Generator,
             shard: tuple[int, int] | None = None) -> torch.Tensor:
        """x0-prediction MSE on the encoded batch. ``x``: (B, 1, D, H, W) in [-1, 1].

        ``shard``: ``(start, global_batch)`` under data-parallel training (see
        :meth:`GaussianDiffusion.training_loss`); None for a single process.
        """
        return self.diffusion.training_loss(self.network, self.encode(x), generator, shard=shard)

    def denoise(self, c_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted clean state for a (B, *state_shape) noisy one, clipped if enabled."""
        c0 = self.network(c_t, t)
        return self.clip_x0(c0) if self.clip else c0

    @torch.no_grad()
    def generate(
        self,
        n: int,
        generator: torch.Generator,
        *,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        device: torch.device | str = "cpu",
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample ``n`` volumes: (n, 1, D, H, W) voxels in [-1, 1] (decoded at the boundary)."""
        fn = get_sampler(sampler)
        kwargs: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {}
        c = fn(self.denoise, self.diffusion, (n, *self.state_shape), generator=generator,
               steps=steps, progress=progress, device=device, **kwargs)
        return self.decode(c).clamp(-1.0, 1.0)


class WDMModel(DiffusionModel):
    """WDM (Friedrich et al. 2024): x0-predicting Gaussian diffusion on scaled Haar coefficients.

    Args:
        cfg: resolved run config (``network``, ``diffusion`` sections used here).
        volume_shape: (D, H, W) of the training volumes; each side even.
    """

    name = "wdm"

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        d, h, w = volume_shape
        if d % 2 or h % 2 or w % 2:
            raise ValueError(f"WDM needs even volume sides, got {tuple(volume_shape)}")
        self.coeff_shape = (8, d // 2, h // 2, w // 2)
        self.lll_scale = float(cfg["diffusion"]["lll_scale"])
        super().__init__(cfg, (d, h, w), self.coeff_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) voxels -> (B, 8, D/2, H/2, W/2) Haar coefficients, LLL / lll_scale."""
        return codec.encode(x, self.lll_scale)

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`."""
        return codec.decode(c, self.lll_scale)

    def clip_x0(self, c0: torch.Tensor) -> torch.Tensor:
        """Wavelet clipping: decode, clamp voxels to [-1, 1], encode again."""
        return codec.wavelet_clip(c0, self.lll_scale)


def get_model_class(name: str) -> type:
    """The class implementing model ``name``: WDM here, ``baselines.<name>.Model`` otherwise."""
    if name == "wdm":
        return WDMModel
    try:
        module = importlib.import_module(f"baselines.{name}")
    except ModuleNotFoundError as exc:
        raise ValueError(f"unknown model {name!r}: no module baselines.{name} ({exc})") from None
    try:
        return module.Model
    except AttributeError:
        raise ValueError(f"baselines.{name} defines no class Model") from None
