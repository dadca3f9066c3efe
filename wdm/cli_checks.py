"""Checks of command-line values shared by the ``wdm-bench`` commands (:mod:`wdm.cli`).

Argument types that refuse out-of-range numbers at parse time (a usage error, exit code 2), the
torch device check, and the checks of output paths that run before a command writes anything,
so that a bad value ends in one line naming the flag or file and leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

from wdm.io import InputError, check_writable

__all__ = ["Command", "set_threads", "named_values", "OneLineParser", "at_least", "n_fake",
           "unit_interval_open", "check_device", "check_run_out", "check_not_a_volume_of", "existing_folder",
           "name_source"]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line ``PROG: error: ...`` and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see '{self.prog} --help')\n")


def at_least(least: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``least``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {least}"
    return parse


def n_fake(text: str) -> int | str:
    """``--n-fake``: a count N >= 1, ``all`` (every volume) or ``config`` (evaluation.n_samples)."""
    if text in ("all", "config"):
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a count N >= 1, 'all' or 'config', got {text!r}")
    return n


def unit_interval_open(text: str) -> float:
    """An argparse type: a float in [0, 1) (an EMA weight)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def check_device(name: str | None, flag: str = "--device") -> str | None:
    """``name`` as a torch device string (``auto`` resolved); one-line errors naming ``flag``.

    A device torch does not know, ``cuda`` on a machine (or torch build) without CUDA and a GPU
    index that does not exist are refused here, before any work, instead of failing as a
    traceback in the middle of feature extraction.
    """
    if name is None:
        return None
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"{flag} {name}: not a torch device, expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{flag} {name}: no CUDA device is available (torch {torch.__version__}"
                             f"{', built without CUDA' if torch.version.cuda is None else ''}); "
                             "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"{flag} {name}: no such GPU, {torch.cuda.device_count()} visible")
    return str(dev)


def check_run_out(out: str | os.PathLike, data: str | os.PathLike | None = None) -> None:
    """Refuse a run or samples folder ``out`` that is a file or a prepared data folder.

    ``data``: the prepared data folder the command reads; ``out`` may be neither it nor inside it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: --out exists and is not a folder, expected a folder to write into")
    check_writable(out)
    if data is not None:
        target, src = out.resolve(), Path(data).resolve()
        if target == src or src in target.parents:
            raise InputError(f"{out}: --out is the data folder {data} or inside it, expected a "
                             "folder of its own")
    if (out / "manifest.csv").is_file() or (out / "dataset.json").is_file():
        raise InputError(f"{out}: --out is a prepared data folder (it holds manifest.csv / "
                         "dataset.json), expected a run or samples folder")


def check_not_a_volume_of(out: str | os.PathLike, folders: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output named ``*.nii(.gz)`` inside one of the volume ``folders`` a command reads.

    The next run would read the metrics or features file as one more volume of that folder.
    """
    out = Path(out)
    if not out.name.endswith((".nii", ".nii.gz")):
        return
    for folder in folders:
        if folder is not None and out.resolve().parent == Path(folder).resolve():
            raise InputError(f"{out}: --out is a NIfTI name inside {folder}, which would then be read as "
                             "one of its volumes; expected a .json / .npz file elsewhere")


def existing_folder(path: str | os.PathLike, flag: str) -> Path:
    """``path`` (given as ``flag``) if it is an existing folder; else a one-line error."""
    path = Path(path)
    if path.is_file():
        raise InputError(f"{path}: {flag} is a file, expected a folder")
    if not path.is_dir():
        raise InputError(f"{path}: {flag} folder not found")
    return path


def name_source(exc: InputError, source: str | os.PathLike, paths: Iterable[str | os.PathLike | None],
                config_phrases: tuple[str, ...] = ()) -> InputError:
    """``exc`` prefixed with ``source`` when its message names none of ``paths``.

    Errors that come from a config value (``training.precision``, a device) are raised deep in
    the harness without the file they came from; this names it. A message holding one of
    ``config_phrases`` is about the config even though it names a data file (a network too deep
    for the data set's volumes): it is prefixed too.
    """
    msg = str(exc)
    names_one = any(p is not None and str(Path(p)) in msg for p in paths)
    if names_one and not any(phrase in msg for phrase in config_phrases):
        return exc
    return InputError(f"{source}: {msg}")


def set_threads(n: int | None) -> None:
    """torch CPU threads: ``n`` capped at the machine's cores (more only oversubscribes them)."""
    if n:
        import torch

        torch.set_num_threads(max(1, min(n, os.cpu_count() or n)))


class Command(NamedTuple):
    """One sub-command: its name, help line, argument declarations and implementation."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


def named_values(items: Sequence[str], flag: str) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict (an InputError names the flag on a malformed item)."""
    from wdm.io import InputError

    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise InputError(f"{flag} {item!r}: expected NAME=VALUE")
        if name in out:
            raise InputError(f"{flag} {item!r}: name {name!r} given twice, expected each once")
        out[name] = value
    return out
