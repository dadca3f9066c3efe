"""Compute-matched training: ``training.flop_budget`` -> the number of training steps.

A fair default comparison gives every model the same training compute, the comparison WDM's claim
is about (Friedrich et al., DGM4MICCAI 2024: what the wavelet buys at equal cost). The cost of one
training step is counted once per run with :class:`torch.utils.flop_counter.FlopCounterMode`
(the FLOPs of matrix multiplications and convolutions, forward and backward, as PyTorch counts
them; element-wise work, optimizer updates and data loading are not counted) on a seeded batch of
the run's shape, in a throw-away copy of the model built under a forked RNG, so the run itself is
unchanged. The count depends only on the config and the volume shape, never on the machine, so
``steps = max(1, floor(flop_budget / flops_per_step))`` is the same everywhere and a budgeted run
stays bit-identical across machines.

A step is counted in its steady state (``STEADY_STEP``): terms that switch on late in training,
such as the VQ-GAN discriminator from ``disc_start``, are included, so a budgeted run never spends
more than its budget.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from wdm.model import build_model, model_class

__all__ = ["STEADY_STEP", "training_flops_per_step", "apply_flop_budget"]

log = logging.getLogger(__name__)

#: the 0-based step index a step is counted at: past every step-gated term of the models here
STEADY_STEP = 10**9


def training_flops_per_step(cfg: dict, volume_shape: Sequence[int]) -> int:
    """FLOPs of one training step of the run config ``cfg`` on volumes ``volume_shape`` (D, H, W).

    One :meth:`~wdm.model.BenchmarkModel.training_step` on a (``training.batch_size``, 1, D, H, W)
    batch drawn uniformly from [-1, 1] with a fixed seed; the model is built and stepped under a
    forked RNG (global RNG state unchanged) and discarded.
    """
    tcfg = cfg["training"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg["seed"])
        model = build_model(copy.deepcopy(cfg), volume_shape)
        for m in model.modules().values():
            m.train()
        optimizers = model.configure_optimizers(tcfg)
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(tcfg["batch_size"], 1, *volume_shape, generator=gen) * 2.0 - 1.0
        with FlopCounterMode(display=False) as counter:
            model.training_step(x, gen, optimizers, STEADY_STEP, grad_clip=tcfg["grad_clip"])
    return int(counter.get_total_flops())


def apply_flop_budget(cfg: dict, volume_shape: Sequence[int]) -> tuple[dict, dict[str, Any] | None]:
    """The run config with ``training.steps`` derived from ``training.flop_budget``, and a record.

    Without a budget: ``(cfg, None)``, unchanged. With one: a copy whose ``training.steps`` is
    ``max(1, floor(flop_budget / flops_per_step))`` and whose ``checkpoint_every`` is at most that,
    and ``{"flop_budget", "stage_budget", "flops_per_step", "steps", "train_flops"}`` for the
    training profile (``stage_budget``: this stage's share of the model's budget).
    """
    total = cfg["training"].get("flop_budget")
    if total is None:
        return cfg, None
    budget = float(total) * model_class(cfg).flop_share(cfg)
    per_step = training_flops_per_step(cfg, volume_shape)
    if per_step <= 0:
        raise ValueError(f"model {cfg['model']!r}: the FLOP counter saw no work in a training step")
    steps = max(1, math.floor(float(budget) / per_step))
    cfg = copy.deepcopy(cfg)
    tr = cfg["training"]
    tr["steps"] = steps
    tr["checkpoint_every"] = min(tr["checkpoint_every"], steps)
    record = {"flop_budget": float(total), "stage_budget": budget, "flops_per_step": per_step,
              "steps": steps, "train_flops": steps * per_step}
    log.info("training.flop_budget: %.3g FLOPs for this stage / %.3g per step -> %d steps", budget,
             per_step, steps)
    return cfg, record
