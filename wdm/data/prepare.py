"""Prepare a named data set into a folder of NIfTI volumes with a checksummed manifest.

Every prepared folder holds ``train/`` and ``test/`` volumes (float32, [0, 1]), ``manifest.csv``
with columns ``file,split,shape,sha256`` (``file`` relative to the folder, ``shape`` like
``32x32x32``) and ``dataset.json`` with the parameters and provenance.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from wdm.io import InputError, sha256_file

__all__ = [
    "DATASETS",
    "MANIFEST",
    "MANIFEST_COLUMNS",
    "prepare",
    "read_manifest",
    "verify_manifest",
    "split_files",
]

DATASETS: tuple[str, ...] = ("phantom-brain",)
MANIFEST = "manifest.csv"
MANIFEST_COLUMNS: tuple[str, ...] = ("file", "split", "shape", "sha256")


def prepare(dataset: str, out: str | os.PathLike, *, source: str | os.PathLike | None = None,
            size: int = 32, seed: int = 0, n_train: int = 40, n_test: int = 20,
            overwrite: bool = False) -> Path:
    """Prepare ``dataset`` at ``size``³ into ``out`` and return ``out``.

    Args:
        dataset: one of :data:`DATASETS`.
        out: the folder to create (refused if it exists and is not empty, unless ``overwrite``).
        source: the raw data folder; must be None for ``phantom-brain`` (built from the MNI152
            template that nilearn ships).
        size, seed, n_train, n_test: volume side and the generator's seed and split sizes.
        overwrite: replace an existing non-empty ``out`` once the new data set is complete.
    """
    if dataset not in DATASETS:
        raise InputError(f"unknown data set {dataset!r}; allowed: {', '.join(DATASETS)}")
    if dataset == "phantom-brain":
        if source is not None:
            raise InputError("phantom-brain takes no source: it is built from the MNI152 template "
                             f"packaged with nilearn (got source={str(source)!r})")
        from wdm.data.phantom import make_phantom_dataset

        return make_phantom_dataset(out, size=size, n_train=n_train, n_test=n_test, seed=seed,
                                    overwrite=overwrite)
    raise AssertionError(f"unhandled data set {dataset!r}")  # pragma: no cover


def read_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of ``data_dir/manifest.csv`` as dicts with keys :data:`MANIFEST_COLUMNS`, in order."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise InputError(f"{data_dir}: no {MANIFEST} (not a prepared data folder?)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise InputError(f"{path}: expected columns {','.join(MANIFEST_COLUMNS)}, "
                             f"got {','.join(reader.fieldnames or ())}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if any(not row.get(col) for col in MANIFEST_COLUMNS):
                raise InputError(f"{path}:{line}: empty field in {row}")
            rows.append({col: row[col] for col in MANIFEST_COLUMNS})
    if not rows:
        raise InputError(f"{path}: the manifest lists no files")
    return rows


def verify_manifest(data_dir: str | os.PathLike) -> list[dict[str, str]]:
    """Check that every file in the manifest exists and matches its sha256; return the rows.

    Raises :class:`InputError` naming the first missing or modified file.
    """
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    for row in rows:
        path = data_dir / row["file"]
        if not path.is_file():
            raise InputError(f"{path}: listed in {MANIFEST} but missing")
        digest = sha256_file(path)
        if digest != row["sha256"]:
            raise InputError(f"{path}: sha256 {digest} does not match {MANIFEST} "
                             f"({row['sha256']}); the file was modified or corrupted")
    return rows


def split_files(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Paths of the files of one split (``train`` / ``test``), in manifest order."""
    data_dir = Path(data_dir)
    rows = read_manifest(data_dir)
    files = [data_dir / r["file"] for r in rows if r["split"] == split]
    if not files:
        splits = sorted({r["split"] for r in rows})
        raise InputError(f"{data_dir}: split {split!r} is empty; the manifest has {splits}")
    return files
