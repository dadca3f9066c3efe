"""Checkpoints of a run folder: ``RUN/checkpoints/step_NNNNNNN.pt``, written atomically and rotated.

A checkpoint is a dict with ``step``, ``model`` (state dict per module name), ``optimizer`` (per
optimizer name), ``ema`` (the weights' moving average, a state dict per module name, or None when
``training.ema`` is off; :mod:`wdm.ema`), ``generator`` (RNG state), ``config`` (the resolved run
config), ``data`` (volume shape, affine, data folder), ``best`` (the step and interval loss of the
best checkpoint so far) and ``code_version``. Anything read back goes through
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from wdm.io import InputError, atomic_path

__all__ = ["CHECKPOINT_GLOB", "checkpoint_path", "latest_checkpoint", "best_checkpoint",
           "load_checkpoint", "save_checkpoint", "remove_partial_checkpoints"]

CHECKPOINT_GLOB = "step_*.pt"
_REQUIRED = {"step", "model", "config", "data", "best"}


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    """``RUN/checkpoints/step_NNNNNNN.pt`` of ``step``."""
    return Path(run_dir) / "checkpoints" / f"step_{int(step):07d}.pt"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``RUN/checkpoints``, or None."""
    ckpts = sorted((Path(run_dir) / "checkpoints").glob(CHECKPOINT_GLOB))
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a corrupt file is an :class:`InputError`."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = _REQUIRED - set(ckpt) if isinstance(ckpt, dict) else {"all"}
    if missing:
        raise InputError(f"{path}: not a wdm-bench checkpoint (missing {sorted(missing)})")
    return ckpt


def best_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The kept checkpoint with the lowest interval loss (as recorded by the latest one)."""
    last = latest_checkpoint(run_dir)
    if last is None:
        return None
    return checkpoint_path(run_dir, load_checkpoint(last)["best"]["step"])


def save_torch_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically, byte-reproducibly.

    Through an open file, not the temporary path: given a path, ``torch.save`` names the archive's
    root folder after the file's stem, here the random temporary name, so two identical saves
    differed in their bytes and their sha256.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(run_dir: str | os.PathLike, state: dict, keep_last: int) -> Path:
    """Write ``step_NNNNNNN.pt`` atomically; keep the last ``keep_last`` and the best one.

    "Best" is the checkpoint with the lowest mean training loss since the previous checkpoint
    (``state['best']['step']``), so a long run cannot fill the disk and never loses its best.
    """
    path = checkpoint_path(run_dir, state["step"])
    try:
        save_torch_atomic(state, path)
    except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
        if isinstance(exc, RuntimeError) and "write" not in str(exc).lower():
            raise
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else " ".join(str(exc).split())[:200]
        raise InputError(f"{path}: could not write the checkpoint ({reason}); is the disk full? The "
                         "earlier checkpoints are intact; free space and rerun with --resume") from exc
    best = checkpoint_path(run_dir, state["best"]["step"])
    for old in sorted(path.parent.glob(CHECKPOINT_GLOB))[:-keep_last]:
        if old != best:
            old.unlink(missing_ok=True)
    return path


def remove_partial_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of a job killed while saving; returns what was removed."""
    stale = sorted((Path(run_dir) / "checkpoints").glob(".step_*"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
