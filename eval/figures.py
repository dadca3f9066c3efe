"""Figures: mid-slices of real and generated volumes in three planes.

``sample_grid`` draws, for each source (real first, then each model), ``n`` volumes as rows of
three panels (axial, coronal, sagittal mid-slices), all on one [0, 1] grey scale so intensities
compare across models.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wdm.io import atomic_path, list_volumes, load_nifti

__all__ = ["mid_slices", "sample_grid"]

PLANES = ("axial", "coronal", "sagittal")


def mid_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a (X, Y, Z) RAS-like volume, oriented for display."""
    x, y, z = (s // 2 for s in vol.shape)
    return [np.rot90(vol[:, :, z]), np.rot90(vol[:, y, :]), np.rot90(vol[x, :, :])]


def sample_grid(sources: Mapping[str, str | os.PathLike | Sequence[np.ndarray]], out: str | os.PathLike,
                *, n: int = 3, title: str | None = None) -> Path:
    """Save a PNG grid: per source ``n`` rows x 3 planes. Sources: folder of NIfTI or arrays."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks: list[tuple[str, list[np.ndarray]]] = []
    for label, src in sources.items():
        if isinstance(src, (str, os.PathLike)):
            vols = [load_nifti(p)[0] for p in list_volumes(src)[:n]]
        else:
            vols = [np.asarray(v) for v in list(src)[:n]]
        blocks.append((label, vols))
    rows = sum(len(v) for _, v in blocks)
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    r = 0
    for label, vols in blocks:
        for k, vol in enumerate(vols):
            for c, sl in enumerate(mid_slices(vol)):
                ax = axes[r, c]
                ax.imshow(sl, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(PLANES[c], fontsize=9)
                if c == 0:
                    ax.set_ylabel(f"{label} {k}", fontsize=8)
            r += 1
    if title:
        fig.suptitle(title, fontsize=10)
    # leave room for the title above the plane labels
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if title else None)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
