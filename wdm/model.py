"""The model interface every entry of the benchmark follows, and WDM on it.

A model is built from a resolved run config and the volume shape, and offers:

* ``modules()``: the ``nn.Module`` s whose weights are trained and checkpointed, by name;
* ``loss(x, generator)``: one training objective on a batch ``x`` of shape (B, 1, D, H, W) with
  voxels in [-1, 1]; all randomness from ``generator``;
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

__all__ = ["BenchmarkModel", "WDMModel", "get_model_class"]


class BenchmarkModel(Protocol):
    """Structural type of a benchmark model (see module docstring)."""

    name: str

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None: ...

    def modules(self) -> dict[str, nn.Module]: ...

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def generate(self, n: int, generator: torch.Generator, **sampling: Any) -> torch.Tensor: ...


class WDMModel:
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
        self.volume_shape = (d, h, w)
        self.coeff_shape = (8, d // 2, h // 2, w // 2)
        self.network = build_network(cfg["network"], in_channels=8, out_channels=8)
        self.diffusion = GaussianDiffusion.from_config(cfg["diffusion"])
        self.lll_scale = float(cfg["diffusion"]["lll_scale"])
        self.clip = bool(cfg["diffusion"]["wavelet_clip"])

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network}

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x0-prediction MSE over all wavelet coefficients. ``x``: (B, 1, D, H, W) in [-1, 1]."""
        c0 = codec.encode(x, self.lll_scale)
        return self.diffusion.training_loss(self.network, c0, generator)

    def denoise(self, c_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted clean coefficients for (B, 8, d, h, w) noisy ones, wavelet-clipped if enabled."""
        c0 = self.network(c_t, t)
        return codec.wavelet_clip(c0, self.lll_scale) if self.clip else c0

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
        """Sample ``n`` volumes: (n, 1, D, H, W) voxels in [-1, 1] (inverse DWT at the boundary)."""
        fn = get_sampler(sampler)
        kwargs: dict[str, Any] = {"eta": eta} if sampler == "ddim" else {}
        c = fn(self.denoise, self.diffusion, (n, *self.coeff_shape), generator=generator,
               steps=steps, progress=progress, device=device, **kwargs)
        return codec.decode(c, self.lll_scale).clamp(-1.0, 1.0)


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
