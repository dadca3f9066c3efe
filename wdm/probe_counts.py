"""Optional counts of a probe (:mod:`wdm.probe`): FLOPs, the allocator's peak, the counted need.

The counts are additive fields of a probe's result, made in its untimed warm-up. ``count_flops``
runs it under :class:`torch.utils.flop_counter.FlopCounterMode` (``flops_per_it``: the FLOPs of that
training step or ``generate`` call, recomputation under checkpointing included; in a training step
the counter raises the peak RSS, by 13 % without and 67 % with checkpointing in a 128^3 check, so do
not count FLOPs in a probe whose training memory matters); ``count_alloc`` records the CPU
allocator's events under ``torch.profiler`` (``profile_memory``): ``alloc_peak_gb``, the peak of
bytes allocated and not yet freed during the warm-up plus the parameters, buffers and batch that
existed before it, the CPU counterpart of ``torch.cuda.max_memory_allocated`` (training: plus the
optimizer state the warm-up creates, which every later step holds throughout). ``count_memory`` (the
child only, after the peak has been recorded) adds
:func:`wdm.activation_memory.count_training_memory` of the row (``count_*`` fields; train mode; with
checkpointing also ``count_no_ckpt_gb``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["allocation_peak_bytes", "warmup_counts", "count_memory"]

_GB = 1e9


def allocation_peak_bytes(prof: Any) -> int:
    """Peak of the running sum of the allocator's allocations minus frees recorded by ``prof`` (a
    finished ``torch.profiler.profile(profile_memory=True)``), in bytes above the level at its start."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    now = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        now += e.nbytes()
        peak = max(peak, now)
    return peak


@contextlib.contextmanager
def warmup_counts(res: dict[str, Any], counts: tuple[bool, bool], modules: dict[str, Any],
                   *existing: torch.Tensor, optimizers: dict[str, Any] | None = None) -> Iterator[None]:
    """``counts = (flops, alloc)``: FLOPs (``flops_per_it``) and the allocation peak
    (``alloc_peak_gb``) of the block into ``res``. The peak adds the bytes of the modules' parameters
    and buffers, of the ``existing`` tensors and of the state the ``optimizers`` hold after the
    block (a first step creates it after its memory peak; every later step holds it throughout)."""
    count_flops, count_alloc = counts
    if not (count_flops or count_alloc):
        yield
        return
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    held = [t for m in modules.values() for t in (*m.parameters(), *m.buffers())] + list(existing)
    held_bytes = sum(t.untyped_storage().nbytes() for t in held)
    flops = FlopCounterMode(display=False) if count_flops else contextlib.nullcontext()
    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True) if count_alloc else None
    with flops, prof or contextlib.nullcontext():
        yield
    if count_flops:
        res["flops_per_it"] = int(flops.get_total_flops())
    if prof is not None:
        state = sum(v.untyped_storage().nbytes() for o in (optimizers or {}).values()
                    for st in o.state.values() for v in st.values() if getattr(v, "dim", lambda: 0)())
        res.update(alloc_optimizer_state_gb=state / _GB,
                   alloc_peak_gb=(allocation_peak_bytes(prof) + held_bytes + state) / _GB)


def count_memory(cfg: dict, resolution: int, res: dict[str, Any], batch_size: int) -> None:
    """``count_*`` fields: :func:`~wdm.activation_memory.count_training_memory` of the probed row
    (saved activations + 4x parameter bytes), and without checkpointing for a checkpointed row."""
    import copy

    from wdm.activation_memory import count_training_memory
    from wdm.config import resolve_run_config

    cfg = resolve_run_config(copy.deepcopy(cfg))
    ckpt = bool(res.get("options", {}).get("checkpointing"))
    cfg["network"]["use_checkpoint"] = ckpt
    out = count_training_memory(cfg, resolution, batch_size=batch_size)
    res.update(count_saved_activations_gb=out["saved_activations_gb"],
               count_param_state_gb=out["param_state_gb"], count_gb=out["estimate_gb"])
    if ckpt:
        cfg["network"]["use_checkpoint"] = False
        res["count_no_ckpt_gb"] = count_training_memory(cfg, resolution,
                                                        batch_size=batch_size)["estimate_gb"]
