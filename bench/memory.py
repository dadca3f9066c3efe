"""Peak resident memory of a block of code, for the benchmarks in ``bench/``.

``resource.getrusage(...).ru_maxrss`` is a process-wide peak that cannot be reset, so it cannot
attribute memory to one variant when several run in one process. :class:`PeakRSS` instead polls
the resident set size (``VmRSS`` in ``/proc/self/status``, Linux) from a background thread while
the block runs and reports the peak above the level at entry. Polling every 5 ms costs a few
microseconds per poll (the GIL is released inside torch kernels); a peak shorter than the period
can be missed, so the value is a lower bound. Where ``/proc`` is absent the values are NaN.
"""

from __future__ import annotations

import threading
from types import TracebackType

__all__ = ["rss_mb", "PeakRSS"]


def rss_mb() -> float:
    """Current resident set size of this process in MiB (NaN where ``/proc`` is unavailable)."""
    from wdm.profiling import current_rss_gb

    gb = current_rss_gb()
    return float("nan") if gb is None else gb * 1e9 / 2**20


class PeakRSS:
    """Context manager: ``with PeakRSS() as m: ...`` then ``m.peak_mb`` (absolute, MiB) and
    ``m.delta_mb`` (peak minus the RSS at entry, MiB)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.start_mb = float("nan")
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> PeakRSS:
        self.start_mb = self.peak_mb = rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())

    @property
    def delta_mb(self) -> float:
        """Peak RSS above the level at entry, MiB."""
        return self.peak_mb - self.start_mb
