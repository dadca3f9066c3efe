"""The model contract every entry of the benchmark follows, its registry, and WDM on it.

A model is a subclass of :class:`BenchmarkModel`, built from a resolved run config and the volume
shape ``(D, H, W)``. The harness (:mod:`wdm.train`, :mod:`wdm.sample`, :mod:`wdm.probe`) calls
only the methods below; each has a default, so a model overrides what it does differently:

* ``modules()`` (required): the ``nn.Module`` s whose state is checkpointed, by name; each is kept
  under the attribute of that name (``model.network`` for ``"network"``) so the harness can wrap it
  (bf16 autocast, DDP);
* ``configure_optimizers(training)``: AdamW on the trainable parameters (``training.lr``,
  ``training.weight_decay``) unless overridden (GANs: one optimizer per network);
* ``training_step(x, generator, optimizers, step, *, shard, grad_clip)``: one update on a batch
  ``x`` (B, 1, D, H, W) in [-1, 1]; by default ``loss`` -> backward -> clip -> step. Returns the
  logged terms, ``loss`` first;
* ``loss(x, generator, shard=None)``: the single objective the default step minimises;
* ``generate(n, generator, *, sampler, steps, eta, device, progress)``: (n, 1, D, H, W) in [-1, 1];
* ``sampling_record(sampling)``, ``sampling_network()``, ``network_evaluations(sampling)``: what a
  sample run records, the module evaluated once per sampling step (None for one-pass generators)
  and how often per batch;
* ``run_info()``: JSON facts recorded in ``train_profile.json``; ``for_probe(cfg, shape)``: the
  model a memory probe measures, with untrained stand-ins for parts it lacks;
* class attribute ``single_objective``: trained through ``loss`` by the default step, so DDP and
  bf16 training apply; ``stage_config``: the run config of a stage.

Models register with :func:`register_model` (a decorator). ``wdm`` lives here; any other name ``X``
is looked up by importing ``baselines.X``, whose classes register themselves, so a baseline joins
by adding its own subpackage. A model trained in stages (the 3D LDM) registers one class per stage;
the stage is chosen by ``<model>.stage`` in its run config.
"""

from __future__ import annotations

import copy
import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from wdm import codec
from wdm.config import resolve_run_config
from wdm.diffusion import GaussianDiffusion
from wdm.io import InputError
from wdm.networks import DenoisingUNet, build_network
from wdm.samplers import get_sampler

__all__ = ["BenchmarkModel", "DiffusionModel", "WDMModel", "register_model", "model_stages",
           "get_model_class", "model_class", "build_model", "configure_stage"]

_REGISTRY: dict[str, dict[str | None, type[BenchmarkModel]]] = {}


class BenchmarkModel:
    """Base class of every benchmark model (see the module docstring for the contract).

    Args:
        cfg: resolved run config.
        volume_shape: (D, H, W) of the training volumes.
    """

    name: ClassVar[str] = ""
    stage: ClassVar[str | None] = None
    #: trained by the default step through ``loss``; then multi-process (DDP) training and
    #: ``training.precision: bf16`` apply. False for models that own their ``training_step``.
    single_objective: ClassVar[bool] = True

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        self.cfg = cfg
        self.volume_shape = tuple(int(s) for s in volume_shape)

    @classmethod
    def stage_config(cls, cfg: dict, run_dir: Path) -> dict:
        """The run config this model (stage) trains with in ``run_dir``; unchanged by default."""
        return cfg

    @classmethod
    def upstream_identity(cls, cfg: dict) -> dict[str, Any]:
        """What earlier runs this one reads, e.g. a checkpoint's SHA-256 (part of the run's
        identity, :mod:`wdm.runs`); nothing by default."""
        return {}

    @classmethod
    def flop_share(cls, cfg: dict) -> float:
        """The share of ``training.flop_budget`` this model (stage) trains with; 1 by default
        (a staged model's stages split the budget, see :mod:`wdm.budget`)."""
        return 1.0

    def check_sampling(self, sampling: Mapping[str, Any]) -> None:
        """Raise :class:`InputError` for sampling settings this model cannot use; none by default."""

    def modules(self) -> dict[str, nn.Module]:
        raise NotImplementedError(f"model {self.name!r} must define modules()")

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of every module that require gradients, in module order."""
        return [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]

    def configure_optimizers(self, training: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """One AdamW on the trainable parameters (``training.lr``, ``training.weight_decay``)."""
        return {"main": torch.optim.AdamW(self.trainable_parameters(), lr=training["lr"],
                                          weight_decay=training["weight_decay"])}

    def loss(self, x: torch.Tensor, generator: torch.Generator,
             shard: tuple[int, int] | None = None) -> torch.Tensor:
        """The training objective on ``x`` (B, 1, D, H, W) in [-1, 1] (a scalar tensor)."""
        raise NotImplementedError(f"model {self.name!r} defines neither loss() nor training_step()")

    def training_step(self, x: torch.Tensor, generator: torch.Generator,
                      optimizers: dict[str, torch.optim.Optimizer], step: int, *,
                      shard: tuple[int, int] | None = None,
                      grad_clip: float | None = None) -> dict[str, torch.Tensor]:
        """``loss`` -> backward -> gradient clipping (``grad_clip``) -> every optimizer steps.

        ``shard``: ``(start, global_batch)`` of this process's rows under DDP, else None.
        """
        loss = self.loss(x, generator) if shard is None else self.loss(x, generator, shard=shard)
        for o in optimizers.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            params = [p for m in self.modules().values() for p in m.parameters()]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        for o in optimizers.values():
            o.step()
        return {"loss": loss.detach()}

    def set_activation_checkpointing(self, enabled: bool) -> bool:
        """Switch recomputation of U-Net activations on; False if no module supports it."""
        nets = [m for m in self.modules().values() if isinstance(m, DenoisingUNet)]
        for m in nets:
            m.set_checkpointing(enabled)
        return bool(nets)

    def activation_checkpointing(self) -> bool:
        """Whether any module recomputes its activations in the backward pass."""
        return any(m.use_checkpoint for m in self.modules().values() if isinstance(m, DenoisingUNet))

    def generate(self, n: int, generator: torch.Generator, *, sampler: str, steps: int, eta: float,
                 device: torch.device | str, progress: bool = False) -> torch.Tensor:
        """``n`` volumes (n, 1, D, H, W) in [-1, 1]."""
        raise NotImplementedError(f"model {self.name!r} must define generate()")

    def sampling_record(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        """``sampler`` and ``sampler_steps`` of a sample run (a GAN: one forward pass)."""
        return {"sampler": "one forward pass", "sampler_steps": 1}

    def sampling_network(self) -> nn.Module | None:
        """The module evaluated once per sampling step (timed by probes); None without steps."""
        return None

    def network_evaluations(self, sampling: Mapping[str, Any]) -> int:
        """Evaluations of :meth:`sampling_network` per generated batch (1 for one-pass models)."""
        return 1

    def run_info(self) -> dict[str, Any] | None:
        """JSON-able facts recorded in ``train_profile.json`` (``model_info``)."""
        return None

    @classmethod
    def for_probe(cls, cfg: dict, volume_shape: Sequence[int]) -> tuple[BenchmarkModel, list[str]]:
        """The model a memory probe measures, with notes on untrained stand-ins for parts it lacks
        (a previous stage, weights it must not download); by default the model itself."""
        return cls(cfg, volume_shape), []


def register_model(name: str, *, stage: str | None = None) -> Callable[[type], type]:
    """Class decorator: make a :class:`BenchmarkModel` subclass model ``name`` (stage ``stage``)."""
    def add(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, BenchmarkModel)):
            raise TypeError(f"model {name!r}: {cls!r} is not a subclass of wdm.model.BenchmarkModel")
        stages = _REGISTRY.setdefault(name, {})
        if stages.get(stage, cls) is not cls:
            raise ValueError(f"model {name!r} stage {stage!r} registered twice")
        if stages and (stage is None) != (None in stages):
            raise ValueError(f"model {name!r} mixes a stage-less class with staged ones")
        stages[stage] = cls
        cls.name, cls.stage = name, stage
        return cls
    return add


def model_stages(name: str) -> dict[str | None, type[BenchmarkModel]]:
    """Stage -> class of model ``name`` (``{None: cls}`` without stages), importing its package."""
    if name not in _REGISTRY:
        try:
            importlib.import_module(f"baselines.{name}")
        except ModuleNotFoundError as exc:
            raise InputError(f"unknown model {name!r}: no module baselines.{name} ({exc})") from None
    if name not in _REGISTRY:
        raise InputError(f"baselines.{name} registers no model (use @wdm.model.register_model)")
    return _REGISTRY[name]


def get_model_class(name: str, stage: str | None = None) -> type[BenchmarkModel]:
    """The class of model ``name`` at ``stage`` (None for a model without stages)."""
    stages = model_stages(name)
    if stage not in stages:
        allowed = sorted(s for s in stages if s is not None)
        raise InputError(f"{name}.stage: {stage!r} is not a stage of model {name!r}; allowed: {allowed}"
                         if allowed else f"model {name!r} has no stages, got stage {stage!r}")
    return stages[stage]


def _stage_of(cfg: Mapping[str, Any]) -> str | None:
    stages = model_stages(cfg["model"])
    return None if None in stages else (cfg.get(cfg["model"]) or {}).get("stage")


def model_class(cfg: Mapping[str, Any]) -> type[BenchmarkModel]:
    """The class of the model (and stage) a resolved run config names."""
    return get_model_class(cfg["model"], _stage_of(cfg))


def build_model(cfg: dict, volume_shape: Sequence[int]) -> BenchmarkModel:
    """The model (and stage) a resolved run config names, at ``volume_shape`` (D, H, W)."""
    return model_class(cfg)(cfg, volume_shape)


def configure_stage(cfg: dict, run_dir: str | os.PathLike, stage: str | None = None) -> dict:
    """The resolved run config of ``stage`` (default: the config's own) trained into ``run_dir``."""
    cfg = copy.deepcopy(cfg)
    if stage is not None:
        get_model_class(cfg["model"], stage)  # an unknown stage is an error naming the allowed ones
        cfg.setdefault(cfg["model"], {})["stage"] = stage
    return resolve_run_config(model_class(cfg).stage_config(cfg, Path(run_dir)))


class DiffusionModel(BenchmarkModel):
    """Gaussian diffusion on a fixed representation of the volume (shared base).

    The representation is given by three hooks a subclass may override: ``encode`` (voxels ->
    diffusion state), ``decode`` (state -> voxels) and ``clip_x0`` (projection of a predicted
    clean state onto the data range, applied when ``diffusion.wavelet_clip`` is on). The defaults
    are the voxel-space identity with clamping to [-1, 1], i.e. a plain 3D DDPM.

    Args:
        cfg: resolved run config (``network``, ``diffusion`` sections used here).
        volume_shape: (D, H, W) of the training volumes.
        state_shape: (C, d, h, w) of the diffusion state the network denoises.

    Raises:
        InputError: ``diffusion.levels`` is not 1 and the subclass has no wavelet levels
            (:attr:`wavelet_levels` is False).
    """

    #: Whether ``diffusion.levels`` means something to this model (WDM's packet transform); for the
    #: others only 1 is accepted, so a config asking for 2 is refused instead of ignored.
    wavelet_levels: bool = False

    def __init__(self, cfg: dict, volume_shape: Sequence[int], state_shape: Sequence[int]) -> None:
        levels = cfg["diffusion"]["levels"]
        if levels != 1 and not self.wavelet_levels:
            raise InputError(f"diffusion.levels: {levels} is for model wdm (its wavelet levels); model "
                             f"{cfg.get('model')!r} has no wavelet transform, set it to 1")
        super().__init__(cfg, volume_shape)
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
        """The diffusion's training error on the encoded batch (x0-prediction MSE by default; see
        :meth:`GaussianDiffusion.training_loss`). ``x``: (B, 1, D, H, W) in [-1, 1].

        ``shard``: ``(start, global_batch)`` under data-parallel training (see
        :meth:`GaussianDiffusion.training_loss`); None for a single process.
        """
        return self.diffusion.training_loss(self.network, self.encode(x), generator, shard=shard)

    def denoise(self, c_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted clean state for a (B, *state_shape) noisy one, clipped if enabled (an
        ε-predicting network's output is converted to x0 first, as Khader et al. before clipping)."""
        c0 = self.diffusion.predict_x0(c_t, t, self.network(c_t, t))
        return self.clip_x0(c0) if self.clip else c0

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator, *, sampler: str, steps: int, eta: float,
                 device: torch.device | str, progress: bool = False) -> torch.Tensor:
        """Sample ``n`` volumes: (n, 1, D, H, W) voxels in [-1, 1] (decoded at the boundary)."""
        c = get_sampler(sampler)(self.denoise, self.diffusion, (n, *self.state_shape),
                                 generator=generator, steps=steps, eta=eta, progress=progress,
                                 device=device)
        return self.decode(c).clamp(-1.0, 1.0)

    def sampling_record(self, sampling: Mapping[str, Any]) -> dict[str, Any]:
        return {"sampler": sampling["sampler"], "sampler_steps": sampling["steps"]}

    def check_sampling(self, sampling: Mapping[str, Any]) -> None:
        """``sampling.steps`` must not exceed the diffusion's T."""
        if sampling["steps"] > self.diffusion.num_timesteps:
            raise InputError(f"sampling.steps: {sampling['steps']} exceeds the "
                             f"{self.diffusion.num_timesteps} timesteps of this run's diffusion "
                             "(diffusion.timesteps)")

    def sampling_network(self) -> nn.Module:
        return self.network

    def network_evaluations(self, sampling: Mapping[str, Any]) -> int:
        """One per step of the (sub-)chain of ``sampling.steps`` timesteps, at most T."""
        return min(sampling["steps"], self.diffusion.num_timesteps)


@register_model("wdm")
class WDMModel(DiffusionModel):
    """WDM (Friedrich et al. 2024): x0-predicting Gaussian diffusion on scaled Haar coefficients.

    ``diffusion.levels`` J (1 in the paper) picks the J-level Haar packet transform
    (:func:`wdm.wavelets.dwt3d`): the state is (8^J, D/2^J, H/2^J, W/2^J), its all-low band divided
    by ``lll_scale ** J`` (:mod:`wdm.codec`), and the network has 8^J input and output channels.

    Args:
        cfg: resolved run config (``network``, ``diffusion`` sections used here).
        volume_shape: (D, H, W) of the training volumes; each side divisible by 2^J.
    """

    wavelet_levels = True

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        d, h, w = (int(s) for s in volume_shape)
        self.levels = int(cfg["diffusion"]["levels"])
        side = 2**self.levels
        if d % side or h % side or w % side:
            what = "even volume sides" if side == 2 else f"volume sides divisible by {side}"
            raise ValueError(f"WDM with diffusion.levels={self.levels} needs {what}, got {(d, h, w)}")
        self.coeff_shape = (8**self.levels, d // side, h // side, w // side)
        self.lll_scale = float(cfg["diffusion"]["lll_scale"])
        super().__init__(cfg, (d, h, w), self.coeff_shape)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) voxels -> (B, *coeff_shape) Haar coefficients, all-low band / lll_scale^J."""
        return codec.encode(x, self.lll_scale, self.levels)

    def decode(self, c: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`encode`."""
        return codec.decode(c, self.lll_scale, self.levels)

    def clip_x0(self, c0: torch.Tensor) -> torch.Tensor:
        """Wavelet clipping: decode, clamp voxels to [-1, 1], encode again."""
        return codec.wavelet_clip(c0, self.lll_scale, self.levels)

    def run_info(self) -> dict[str, Any]:
        """The representation the network was trained on (recorded in ``train_profile.json``)."""
        return {"representation": "haar3d" if self.levels == 1 else "haar3d-packet",
                "levels": self.levels, "state_shape": list(self.coeff_shape),
                "lll_scale": self.lll_scale,
                "lll_divisor": codec.lll_divisor(self.lll_scale, self.levels)}
