"""Data-parallel training (torch DDP) for :mod:`wdm.train`, launched by ``torchrun``.

``torchrun --standalone --nproc_per_node N -m wdm.cli train ...`` starts N processes and sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in each; :func:`context_from_env` reads them (absent:
one process, no process group). Every rank builds the same model from the same seed, loads the same
checkpoint and keeps the same ``torch.Generator``; the global batch ``training.batch_size`` is split
into equal contiguous shards (:func:`shard_bounds`), and the diffusion timesteps and noise are drawn
for the whole global batch on every rank, each rank using its rows (``shard`` argument of
:meth:`wdm.diffusion.GaussianDiffusion.training_loss`). DDP averages the gradients of the per-rank
mean losses, which is the gradient of the global mean (equal shards), so N processes follow the
loss curve of one process with the same global batch up to floating-point summation order.

Backends: NCCL when training on CUDA (rank r on ``cuda:LOCAL_RANK``), gloo on the CPU.
Only the single-objective path (``model.loss``) is supported: models with their own
``training_step`` (HA-GAN, the ldm VQ-GAN stage) update several networks in alternation and would
need each of them wrapped and their noise sharded; they are refused with a clear error.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wdm.io import InputError

__all__ = ["DistContext", "context_from_env", "shard_bounds", "init", "shutdown", "wrap_ddp",
           "all_reduce_mean", "check_ddp_support", "wrap_trained"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a data-parallel job (``world_size == 1``: plain single process)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file of the run folder."""
        return self.rank == 0


def context_from_env(environ: dict[str, str] | None = None) -> DistContext:
    """The context from torchrun's ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (defaults 1, 0, 0)."""
    env = os.environ if environ is None else environ
    try:
        ctx = DistContext(int(env.get("WORLD_SIZE", 1)), int(env.get("RANK", 0)),
                          int(env.get("LOCAL_RANK", env.get("RANK", 0))))
    except ValueError as exc:
        raise InputError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers ({exc})") from None
    if ctx.world_size < 1 or not 0 <= ctx.rank < ctx.world_size:
        raise InputError(f"invalid torchrun environment: WORLD_SIZE={ctx.world_size}, RANK={ctx.rank}")
    return ctx


def shard_bounds(global_batch: int, ctx: DistContext) -> tuple[int, int]:
    """Rows ``[start, stop)`` of the global batch this rank trains on (equal contiguous shards).

    Raises :class:`InputError` if ``global_batch`` is not divisible by the world size.
    """
    if global_batch % ctx.world_size:
        raise InputError(
            f"training.batch_size {global_batch} (the global batch) is not divisible by the world "
            f"size {ctx.world_size} (torchrun --nproc_per_node / training.gpus); choose a batch size "
            f"that is a multiple of {ctx.world_size} or another number of processes")
    per_rank = global_batch // ctx.world_size
    return ctx.rank * per_rank, (ctx.rank + 1) * per_rank


def check_ddp_support(model: Any, ctx: DistContext) -> None:
    """Refuse models whose training DDP does not handle yet (not ``single_objective``: a custom
    ``training_step``) or whose ``loss`` takes no ``shard`` argument."""
    if not ctx.enabled:
        return
    name = model.name
    if not model.single_objective:
        raise InputError(
            f"model {name!r} trains with its own "
            f"training_step (several networks updated in alternation), which multi-process (DDP) "
            f"training does not support yet; train it in one process (training.gpus: 1, plain "
            f"'wdm-bench train'). DDP works for wdm, ddpm3d and the ldm diffusion stage")
    if "shard" not in inspect.signature(model.loss).parameters:
        raise InputError(f"model {name!r}: its loss(x, generator) takes no 'shard' argument, which "
                         "multi-process (DDP) training needs (see wdm.model); use training.gpus: 1")


def init(ctx: DistContext, device: torch.device, timeout_min: float = 30.0) -> None:
    """Join the process group (``env://`` rendezvous set up by torchrun): NCCL on CUDA, else gloo."""
    if not ctx.enabled or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend=backend, world_size=ctx.world_size, rank=ctx.rank,
                                         timeout=datetime.timedelta(minutes=timeout_min))
    log.info("rank %d/%d joined the %s process group on %s", ctx.rank, ctx.world_size, backend, device)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``DistributedDataParallel`` around a trained module (its state dict stays the inner one's)."""
    if device.type == "cuda":
        return nn.parallel.DistributedDataParallel(module, device_ids=[device.index],
                                                   output_device=device.index)
    return nn.parallel.DistributedDataParallel(module)


def all_reduce_mean(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, torch.Tensor]:
    """Average scalar tensors over the ranks (the global-batch mean for equal shards).

    ``values``: name -> 0-d tensor on this rank's device; returns the same keys, detached.
    """
    if not ctx.enabled:
        return {k: v.detach() for k, v in values.items()}
    names = list(values)
    stacked = torch.stack([values[k].detach().float() for k in names])
    torch.distributed.all_reduce(stacked, op=torch.distributed.ReduceOp.SUM)
    stacked /= ctx.world_size
    return dict(zip(names, stacked, strict=True))


def wrap_trained(model: Any, modules: dict[str, nn.Module], wrap: Callable[[nn.Module], nn.Module]) -> None:
    """Replace each trained module of ``model`` (one with parameters that require gradients) by
    ``wrap(module)`` (DDP, bf16 autocast), so that ``model.loss`` runs through the wrapper.

    ``modules`` (``model.modules()`` taken before) keeps the unwrapped modules: they are what is
    checkpointed, with the same state-dict keys as a single-process run. The model must keep each
    module under the attribute of its name (``model.network`` for ``"network"``).
    """
    for name, m in modules.items():
        if not any(p.requires_grad for p in m.parameters()):
            continue  # frozen (the ldm codec)
        wrapped = wrap(m)
        if wrapped is m:
            continue
        if vars(model).get(name) is not m:
            raise InputError(f"model {model.name!r} keeps its module {name!r} under "
                             "another attribute; bf16 or DDP training cannot wrap it")
        setattr(model, name, wrapped)
