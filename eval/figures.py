"""Figures: mid-slices of real and generated volumes in three planes.

``sample_grid`` draws, for each source (real first, then each model), ``n`` volumes as rows of
three panels (axial, coronal, sagittal mid-slices), all on one [0, 1] grey scale so intensities
compare across models. A model folder whose ``sample_profile.json`` says it ran out of memory
(:mod:`wdm.oom`) gets one row that says so instead of slices.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from eval.plotting import pyplot, save_png
from wdm.io import list_volumes, load_nifti
from wdm.oom import STATUS_OOM, read_status

__all__ = ["mid_slices", "sample_grid"]

PLANES = ("axial", "coronal", "sagittal")


def mid_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices of a (X, Y, Z) RAS-like volume, oriented for display."""
    x, y, z = (s // 2 for s in vol.shape)
    return [np.rot90(vol[:, :, z]), np.rot90(vol[:, y, :]), np.rot90(vol[x, :, :])]


def sample_grid(sources: Mapping[str, str | os.PathLike | Sequence[np.ndarray]], out: str | os.PathLike,
                *, n: int = 3, title: str | None = None) -> Path:
    """Save a PNG grid: per source ``n`` rows x 3 planes. Sources: folder of NIfTI or arrays."""
    plt = pyplot()
    blocks: list[tuple[str, list[np.ndarray]]] = []
    oom: dict[str, str] = {}  # label -> error of a source that ran out of memory
    for label, src in sources.items():
        if isinstance(src, (str, os.PathLike)):
            status, prof = read_status(Path(src) / "sample_profile.json")
            if status == STATUS_OOM:
                oom[label] = prof.get("error") or "out of memory"
                vols = []
            else:
                vols = [load_nifti(p)[0] for p in list_volumes(src)[:n]]
        else:
            vols = [np.asarray(v) for v in list(src)[:n]]
        blocks.append((label, vols))
    rows = sum(len(v) or (label in oom) for label, v in blocks)
    fig, axes = plt.subplots(rows, 3, figsize=(6, 2 * rows), squeeze=False)
    r = 0
    for label, vols in blocks:
        if label in oom and not vols:
            for c in range(3):
                axes[r, c].axis("off")
            axes[r, 1].text(0.5, 0.5, f"{label}: out of memory (OOM)", ha="center", va="center",
                            fontsize=9, transform=axes[r, 1].transAxes)
            r += 1
            continue
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
    return save_png(fig, out, dpi=100)
