"""What every figure of the suite shares: matplotlib on the non-interactive Agg backend, and a PNG
written atomically (temporary file, then rename) with the figure closed afterwards."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wdm.io import atomic_path

__all__ = ["pyplot", "save_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: plotting is optional work)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, out: str | os.PathLike, dpi: int) -> Path:
    """Write ``fig`` to the PNG ``out`` atomically at ``dpi`` and close it; returns ``out``."""
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    pyplot().close(fig)
    return out
