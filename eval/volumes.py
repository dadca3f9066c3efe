"""Reading volumes for evaluation: the real split a prepared data folder lists, generated sets,
and the [0, 1] range and shape checks every evaluated volume passes (:mod:`eval.evaluate`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from wdm.data.prepare import MANIFEST, read_manifest
from wdm.io import InputError, list_volumes, load_nifti

__all__ = ["RANGE_TOL", "real_files", "select_files", "load_checked", "stream_checked"]

#: tolerance on the [0, 1] range check of input volumes.
RANGE_TOL = 1e-3

def real_files(folder: str | os.PathLike) -> list[Path]:
    """The real volumes of ``folder``, sorted by name.

    When ``folder`` is a split of a prepared data folder (``folder/../manifest.csv`` lists files
    ``<folder name>/...``), exactly the files the manifest lists for it: a stray file beside them
    does not count and a listed file that is missing is an :class:`InputError` naming it.
    Otherwise (a plain folder) every NIfTI volume in it (:func:`wdm.io.list_volumes`).
    """
    folder = Path(folder)
    manifest = folder.parent / MANIFEST
    if not folder.is_dir() or not manifest.is_file():
        return list_volumes(folder)
    listed = [row["file"] for row in read_manifest(folder.parent)
              if Path(row["file"]).parent.name == folder.name and len(Path(row["file"]).parts) == 2]
    if not listed:
        return list_volumes(folder)
    files = sorted((folder / Path(f).name for f in listed), key=lambda p: p.name)
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: listed in {manifest} but missing, expected the prepared volume "
                             "(re-run 'wdm-bench prepare')")
    return files


def select_files(folder: str | os.PathLike, n: int | None, what: str) -> list[Path]:
    """The first ``n`` (None: all) volumes of ``folder``: :func:`real_files` for ``what`` "real",
    every NIfTI volume otherwise; InputError for ``n`` < 1 or fewer volumes than ``n``."""
    files = real_files(folder) if what == "real" else list_volumes(folder)
    if n is not None:
        if n < 1:
            raise InputError(f"n_{what} must be >= 1, got {n}")
        if len(files) < n:
            raise InputError(f"{folder}: {len(files)} volumes, fewer than n_{what}={n}")
        files = files[:n]
    return files


def _load_checked(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    vol, _ = load_nifti(path)
    lo, hi = float(vol.min()), float(vol.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise InputError(f"{path}: values in [{lo:.4g}, {hi:.4g}], expected [0, 1] "
                         f"(tolerance {RANGE_TOL})")
    if shape is not None and vol.shape != shape:
        raise InputError(f"{path}: shape {vol.shape} differs from {shape} of the other volumes")
    return np.clip(vol, 0.0, 1.0)


def load_checked(path: str | os.PathLike, shape: tuple[int, ...] | None) -> np.ndarray:
    """A volume (D, H, W) in [0, 1] (clipped within ``RANGE_TOL``); InputError naming the file
    for values outside [0, 1] or a shape other than ``shape`` (None: any)."""
    return _load_checked(Path(path), shape)


def stream_checked(files: Sequence[Path], shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    """:func:`load_checked` of each file in turn."""
    for f in files:
        yield _load_checked(f, shape)
