"""Out-of-memory errors: recognise them, and read the ``status`` that stages pass down the pipeline.

A stage that runs out of memory does not fail the whole Snakemake DAG. It writes its usual
output file with ``"status": "oom"``, ``"error"`` (one line) and null numbers, and exits 0:

- ``RUN/train_profile.json`` (training),
- ``samples/sample_profile.json`` (sampling; also when training ran out of memory, without sampling),
- ``metrics.json`` (evaluation; no features are extracted),

and the table shows ``OOM`` in the cells of that model. A successful stage writes
``"status": "ok"``; files written before this field existed count as ok.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from wdm.io import InputError

__all__ = ["STATUS_OK", "STATUS_OOM", "UpstreamOutOfMemory", "is_out_of_memory", "one_line",
           "read_status", "release_memory"]

STATUS_OK = "ok"
STATUS_OOM = "oom"

#: fragments of the messages of allocation failures that torch raises as a plain RuntimeError
#: (the CPU allocator, MPS, and CUDA in code paths that do not raise ``torch.OutOfMemoryError``).
_OOM_MESSAGES = ("can't allocate memory", "cannot allocate memory", "defaultcpuallocator",
                 "out of memory", "std::bad_alloc")

#: oneDNN (the CPU convolutions) reports a failed allocation of a primitive's JIT code buffer or
#: scratchpad as one of these bare messages; the status code is lost on the way to Python. An
#: unsupported configuration fails one step earlier, as "could not create a primitive descriptor
#: ...", which stays an error. Both were seen as the first failure of a CPU training step under an
#: address-space cap, in different runs of the same step.
_ONEDNN_ALLOCATION = ("could not create a primitive", "could not execute a primitive")


class UpstreamOutOfMemory(Exception):
    """A stage this one needs (e.g. the LDM's stage-1 VQ-GAN) is recorded as out of memory.

    Raised while a model is built; the training loop records this run as OOM too, so a two-stage
    model whose first stage did not fit becomes an OOM row instead of a failed job.
    """


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (GPU or CPU) rather than a bug or a bad input."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError, UpstreamOutOfMemory)):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return any(s in text for s in _OOM_MESSAGES) or text.strip() in _ONEDNN_ALLOCATION


def one_line(exc: BaseException, limit: int = 400) -> str:
    """``"TypeName: message"`` on one line (whitespace collapsed), cut to ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def release_memory(device: torch.device | str) -> None:
    """Give cached GPU blocks back after an out-of-memory error (a no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def read_status(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """``(status, content)`` of a profile or metrics JSON file.

    A missing file gives ``("ok", {})`` (a run folder from before profiles existed); a file
    without ``"status"`` is ok. Raises :class:`InputError` naming the file if it is not a JSON
    object or its status is neither ``"ok"`` nor ``"oom"``.
    """
    path = Path(path)
    if not path.is_file():
        return STATUS_OK, {}
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(content, dict):
        raise InputError(f"{path}: expected a JSON object, got {type(content).__name__}")
    status = content.get("status") or STATUS_OK
    if status not in (STATUS_OK, STATUS_OOM):
        raise InputError(f"{path}: field 'status' is {status!r}; allowed: "
                         f"{[STATUS_OK, STATUS_OOM]}")
    return status, content
