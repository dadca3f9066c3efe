"""One writer per output folder: an advisory lock file beside it (``.NAME.lock``) held while a
stage writes the folder ``NAME``.

The lock sits beside the folder, not inside, so a stage may move the folder aside and build a new
one while it holds the lock. ``fcntl.flock`` locks are released by the kernel when the process
ends, however it ends (SIGKILL included), so a killed job never leaves a stale lock; the file
stays and records the pid of its last holder, for the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from wdm.io import InputError

__all__ = ["lock_path", "folder_lock"]


def lock_path(folder: str | os.PathLike) -> Path:
    """``PARENT/.NAME.lock`` of the folder ``PARENT/NAME``."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block (creating its parent), or raise
    :class:`InputError` naming the folder and the pid of the process that holds it. ``what``: the
    stage, for the message (e.g. "training")."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(f"{folder}: another process (pid {holder}) is {what} into this folder; "
                             "wait for it to finish or choose another folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
