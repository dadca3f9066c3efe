"""Shared plumbing of the benchmarks in ``bench/``: timing with repeats, a printed table, a CSV.

Every benchmark runs all its variants in one process, repeats each measurement at least
:data:`MIN_REPEATS` times, reports medians (and the minimum) and ratios against a named anchor, and
writes ``results/bench/<name>.csv`` atomically. Import as ``from bench.common import ...`` with the
repository root on ``sys.path`` (``python -m bench.bench_x`` or ``python bench/bench_x.py``; both
work, see :func:`repo_on_path`).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MIN_REPEATS", "BENCH_DIR", "repo_on_path", "time_repeats", "summarize", "write_rows",
           "print_rows", "setup_logging"]

MIN_REPEATS = 3
REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "results" / "bench"

log = logging.getLogger("bench")


def repo_on_path() -> None:
    """Put the repository root on ``sys.path`` (for ``python bench/bench_x.py``)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def time_repeats(fn: Callable[[], Any], repeats: int = MIN_REPEATS, warmup: int = 1,
                 sync: Callable[[], None] | None = None) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read so asynchronous
    devices are timed to completion.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, minimum and maximum of a list of timings, and how many there were."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times)}


def write_rows(rows: list[dict[str, Any]], name_or_path: str | os.PathLike) -> Path:
    """Write ``rows`` as CSV to ``results/bench/<name>.csv`` (or the given path), atomically."""
    import pandas as pd

    from wdm.io import atomic_path

    out = Path(name_or_path)
    if out.suffix != ".csv":
        out = BENCH_DIR / f"{out}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False, float_format="%.6g")
    log.info("wrote %s", out)
    return out


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a CSV written by :func:`write_rows`, empty cells as None (``--plot-from``)."""
    import pandas as pd

    return pd.read_csv(path).astype(object).where(lambda d: d.notna(), None).to_dict("records")


def print_rows(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The rows as an aligned text table (printed to stdout and returned)."""
    import pandas as pd

    df = pd.DataFrame(rows)
    if columns:
        df = df[[c for c in columns if c in df.columns]]
    text = df.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    sys.stdout.write(text + "\n")
    return text


def peak_gb_suffix(row: dict) -> str:
    """`` 5.19 GB`` for a measured row's ``peak_memory_gb`` (status ok), else ``""``."""
    ok = row.get("status") == "ok" and row.get("peak_memory_gb")
    return f" {row['peak_memory_gb']:.2f} GB" if ok else ""
