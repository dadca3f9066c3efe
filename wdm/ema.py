"""Exponential moving average (EMA) of the trained modules' weights (``training.ema``).

Polyak averaging (Polyak & Juditsky 1992) as diffusion models use it for sampling (Ho et al. 2020,
rate 0.9999; Khader et al. 2023, "Medical Diffusion", rate 0.995): after every optimizer step

    ema <- rate * ema + (1 - rate) * w

for every trainable parameter ``w`` (``requires_grad``) of every module in
:meth:`wdm.model.BenchmarkModel.modules`. Everything else in a module's state dict (buffers such
as BatchNorm statistics or a VQ-GAN's EMA codebook, and frozen parameters) is not averaged but
copied as it is at each update, so an EMA state dict loads into its module like the raw one. The
average is kept in float32 beside the weights (on their device), starts at the initial weights and
is checkpointed (:meth:`EMA.state_dict`), so a resumed run continues it bit-identically.

Khader et al.'s trainer updates its EMA only every 10th step and, before step 2000, copies the
weights into it instead (``update_ema_every``, ``step_start_ema``): ``training.ema_every`` and
``training.ema_start`` (:meth:`EMA.after_step`); 1 and 0, every step from the start, by default.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from wdm.io import InputError

__all__ = ["EMA"]

log = logging.getLogger(__name__)


class EMA:
    """The EMA of ``modules``' trainable parameters (and a copy of the rest of their state).

    Args:
        modules: the unwrapped trained modules by name (their state-dict keys are the EMA's keys).
        rate: the decay in (0, 1); the weight of the new parameters per update is ``1 - rate``.
        every: :meth:`after_step` acts on 0-based steps divisible by this.
        start: :meth:`after_step` copies the weights (no averaging) before this 0-based step.
    """

    def __init__(self, modules: dict[str, nn.Module], rate: float, every: int = 1,
                 start: int = 0) -> None:
        if not 0.0 < rate < 1.0:
            raise ValueError(f"EMA rate must lie in (0, 1), got {rate}")
        if every < 1 or start < 0:
            raise ValueError(f"EMA every must be >= 1 and start >= 0, got {every}, {start}")
        self.rate, self.every, self.start = float(rate), int(every), int(start)
        self.modules = modules
        self.shadow: dict[str, dict[str, torch.Tensor]] = {}
        self.averaged: dict[str, set[str]] = {}  # per module: the state-dict keys averaged
        for name, module in modules.items():
            state = module.state_dict(keep_vars=True)
            self.averaged[name] = {k for k, t in state.items() if isinstance(t, nn.Parameter)
                                   and t.requires_grad and t.is_floating_point()}
            self.shadow[name] = {k: t.detach().float().clone() if t.is_floating_point()
                                 else t.detach().clone() for k, t in state.items()}
        n_avg = sum(len(keys) for keys in self.averaged.values())
        n_all = sum(len(sd) for sd in self.shadow.values())
        log.info("EMA of the weights at rate %g (every %d step(s), from step %d): %d tensors "
                 "averaged, %d copied", self.rate, self.every, self.start, n_avg, n_all - n_avg)

    def after_step(self, step: int) -> None:
        """The EMA's action after the optimizer step of 0-based ``step``: nothing unless ``step``
        is divisible by ``every``; then a copy of the weights before ``start``, else :meth:`update`."""
        if step % self.every:
            return
        if step < self.start:
            self.reset()
        else:
            self.update()

    @torch.no_grad()
    def reset(self) -> None:
        """Set the EMA to the modules' current state (weights and buffers)."""
        for name, module in self.modules.items():
            shadow = self.shadow[name]
            for key, t in module.state_dict().items():
                shadow[key].copy_(t)

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step from the modules' current weights (call after every optimizer step).

        ``ema + (1 - rate) * (w - ema)`` with ``torch._foreach_lerp_`` (one fused call over all
        tensors), equal to ``rate * ema + (1 - rate) * w`` up to rounding; deterministic, so a
        resumed run reproduces it bit for bit. The modules' state dicts are read afresh each time
        (a buffer a module reassigns is followed).
        """
        ema: list[torch.Tensor] = []
        live: list[torch.Tensor] = []
        for name, module in self.modules.items():
            shadow, keys = self.shadow[name], self.averaged[name]
            for key, t in module.state_dict().items():
                if key in keys:
                    ema.append(shadow[key])
                    live.append(t.float())  # float32 weights: the tensors themselves
                else:
                    shadow[key].copy_(t)
        if ema:
            torch._foreach_lerp_(ema, live, 1.0 - self.rate)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{module name: EMA state dict}``: the checkpoint's ``"ema"`` entry."""
        return {name: dict(sd) for name, sd in self.shadow.items()}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]], source: str) -> None:
        """Continue from a checkpoint's ``"ema"`` entry; ``source`` names it in errors.

        Raises :class:`InputError` when its modules or keys differ from the live modules'.
        """
        if set(state) != set(self.shadow):
            raise InputError(f"{source}: the checkpoint's EMA modules {sorted(state)} differ from "
                             f"the model's {sorted(self.shadow)}")
        for name, sd in self.shadow.items():
            if set(state[name]) != set(sd):
                diff = sorted(set(state[name]) ^ set(sd))[:3]
                raise InputError(f"{source}: the checkpoint's EMA of {name!r} does not match the "
                                 f"module (keys {diff} differ)")
            for key, t in sd.items():
                t.copy_(state[name][key])
