"""Training memory of a model that does not fit: count it instead of allocating it.

A training step's memory is dominated by (a) the parameters with their gradients and AdamW's two
moments (4 × the trainable parameter bytes) and (b) the activations autograd saves in the forward
pass for the backward pass. (b) can be counted without keeping them: the forward pass runs under
``torch.autograd.graph.saved_tensors_hooks`` whose pack hook records each saved tensor's storage
size and drops the tensor, so only the transient working set of one layer is ever resident. A 3D
DDPM at 128³ that needs more than this machine's 23 GiB can then still be given a number.

Counting rules: parameters (and tensors sharing their storage) are not activations; a storage
saved by several operations while it is alive counts once (tracked by weak references, so a freed
address reused by a later tensor counts again, as it should). The estimate leaves out the
allocator's fragmentation and the transient buffers of the backward pass, so it is a lower bound
of the real peak; ``bench/bench_train_step.py --estimate`` checks it against measured rows.

Only models trained through ``loss`` (the diffusion models) can be counted this way.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch

__all__ = ["count_training_memory"]

log = logging.getLogger(__name__)

_GB = 1e9


def _saved_bytes(forward, param_ptrs: set[int]) -> tuple[int, int]:
    """Bytes and number of the distinct storages autograd saves for backward while ``forward()``
    runs, parameters (storage pointers ``param_ptrs``) and empty storages left out; nothing is
    kept, so no backward can follow."""
    alive: dict[int, weakref.ref] = {}
    total = 0
    n_saved = 0

    def pack(t: torch.Tensor) -> tuple:
        nonlocal total, n_saved
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr in param_ptrs or storage.nbytes() == 0:
            return ()
        ref = alive.get(ptr)
        if ref is not None and ref() is not None:
            return ()  # the same live storage saved by another op
        alive[ptr] = weakref.ref(t)
        total += storage.nbytes()
        n_saved += 1
        return ()  # drop the tensor: nothing is kept for a backward pass

    def unpack(_: tuple) -> torch.Tensor:
        raise RuntimeError("count_training_memory runs no backward pass")

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        loss = forward()
    del loss
    return total, n_saved


def count_training_memory(cfg: dict, resolution: int, *, batch_size: int = 1, seed: int = 0,
                          device: str = "cpu") -> dict[str, Any]:
    """Saved-activation and optimizer-state bytes of one training step (no backward is run).

    Args:
        cfg: resolved run config of a model with a ``loss`` method (wdm, ddpm3d, ldm stage 2).
        resolution: volume side R; the batch is (batch_size, 1, R, R, R) in [-1, 1].

    Returns:
        ``saved_activations_gb``, ``param_state_gb`` (weights + grads + 2 AdamW moments),
        ``estimate_gb`` (their sum), ``n_saved`` (distinct saved storages), ``n_parameters``.
    """
    from wdm.probe import _build

    torch.manual_seed(seed)
    model, notes = _build(cfg, (resolution,) * 3)
    if not model.single_objective:
        raise ValueError(f"model {cfg['model']!r} trains with its own training_step: its saved "
                         "activations cannot be counted through loss()")
    modules = model.modules()
    for m in modules.values():
        m.to(device).train()
    note = "; ".join(notes) or None
    params = [p for m in modules.values() for p in m.parameters()]
    trainable = sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand((batch_size, 1, resolution, resolution, resolution), generator=gen,
                   device=device) * 2 - 1
    total, n_saved = _saved_bytes(lambda: model.loss(x, gen), param_ptrs)
    param_state = 4 * trainable
    out = {"saved_activations_gb": total / _GB, "param_state_gb": param_state / _GB,
           "estimate_gb": (total + param_state) / _GB, "n_saved": n_saved,
           "n_parameters": sum(p.numel() for p in params), "note": note}
    log.info("%s at %d^3: saved activations %.2f GB + parameter state %.2f GB = %.2f GB",
             cfg["model"], resolution, out["saved_activations_gb"], out["param_state_gb"],
             out["estimate_gb"])
    return out
