"""Devices, runtime and memory measurement shared by training, sampling, probes and benchmarks.

Peak memory is measured inside the process (Snakemake's ``benchmark:`` samples too coarsely: every
0.5 s, then every 30 s): on CUDA ``torch.cuda.max_memory_allocated``; on CPU the peak resident set
size (``resource.getrusage``, which includes the interpreter and libraries: an upper bound).
"""

from __future__ import annotations

import functools
import platform
import resource
import statistics
import sys
from collections.abc import Iterable

import torch

from wdm.io import InputError

__all__ = ["resolve_device", "reset_peak_memory", "peak_memory_gb", "peak_memory_kind", "max_rss_gb",
           "rusage_max_rss_gb", "current_rss_gb", "median_seconds", "cpu_model", "model_name_in_cpuinfo",
           "device_description"]


def resolve_device(name: str, index: int | None = None) -> torch.device:
    """'auto' -> CUDA if available else CPU; 'cuda' without a GPU is an :class:`InputError`.

    ``index``: the GPU of this process (torchrun's LOCAL_RANK) under data-parallel training.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    if name == "cuda" and index is not None:
        if index >= torch.cuda.device_count():
            raise InputError(f"process LOCAL_RANK {index} has no GPU: {torch.cuda.device_count()} "
                             "visible; start at most one process per GPU")
        return torch.device("cuda", index)
    return torch.device(name)


def peak_memory_kind(device: torch.device | str) -> str:
    """What :func:`peak_memory_gb` measures on ``device`` (recorded beside every peak)."""
    return "cuda_max_allocated" if torch.device(device).type == "cuda" else "process_peak_rss"


def reset_peak_memory(device: torch.device | str) -> None:
    """Reset the CUDA peak counter (the CPU peak RSS cannot be reset; it is process-wide)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device | str) -> float:
    """Peak memory in GB (1e9 bytes): CUDA allocations, or the process's peak RSS on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return max_rss_gb()


def rusage_max_rss_gb(usage: resource.struct_rusage) -> float:
    """``ru_maxrss`` of a ``getrusage``/``wait4`` result in GB (it is KiB on Linux, bytes on macOS)."""
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024) / 1e9


def max_rss_gb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident set size of this process (or of its waited-for children) in GB."""
    return rusage_max_rss_gb(resource.getrusage(who))


def current_rss_gb() -> float | None:
    """Current resident set size of this process in GB (``VmRSS``); None where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def median_seconds(times: list[float], skip: int = 0) -> float | None:
    """Median of ``times`` after dropping the first ``skip`` (warm-up); None if nothing is left."""
    kept = times[skip:] if len(times) > skip else times
    return statistics.median(kept) if kept else None


def model_name_in_cpuinfo(lines: Iterable[str]) -> str | None:
    """The first non-empty ``model name`` (x86), ``Model`` or ``Hardware`` (ARM) in cpuinfo lines."""
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return " ".join(value.split())
    return None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str | None:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), or None where that cannot be read.

    Read once and cached. The model matters to a number's protocol: oneDNN and MKL pick kernels by
    instruction set, so the same seed gives bit-identical results on the same CPU model and a
    different rounding on another.
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return model_name_in_cpuinfo(f)
    except (OSError, MemoryError):  # also called after an out-of-memory error
        return None


def device_description(device: torch.device | str) -> str:
    """A short human description: GPU name, or CPU architecture, model and thread count.

    ``platform.machine()`` (``os.uname``), not ``platform.processor()``, which on Linux runs
    ``uname -p`` in a subprocess: this is also called after an out-of-memory error, when a fork
    can fail. E.g. ``"x86_64 CPU (Intel(R) Xeon(R) Processor), 2 threads"``.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    model = cpu_model()
    name = f"{platform.machine()} CPU" + (f" ({model})" if model else "")
    return f"{name}, {torch.get_num_threads()} threads"
