"""Atomic file output, NIfTI volume I/O and provenance helpers shared by every step.

Every file that a later step reads is written to a temporary name in the same folder and then
renamed (``os.replace`` is atomic on POSIX), so a killed job never leaves a file that looks valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InputError",
    "atomic_path",
    "write_text_atomic",
    "write_json_atomic",
    "sha256_file",
    "save_nifti",
    "load_nifti",
    "load_prepared_volume",
    "list_volumes",
    "code_version",
]


class InputError(ValueError):
    """Bad user input (file, field or value); the CLI turns it into a one-line error."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (``.nii.gz`` etc.) so writers that infer the format
    from the name work. On any exception the temporary file is removed and nothing is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_nifti(path: str | os.PathLike, volume: np.ndarray, affine: np.ndarray | None = None) -> None:
    """Save a (D, H, W) volume as float32 NIfTI, atomically and byte-reproducibly.

    gzip output carries no timestamp (mtime 0), so the same array gives the same bytes.
    """
    import gzip

    import nibabel as nib

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {vol.shape}")
    img = nib.Nifti1Image(vol, np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.name.endswith(".gz"):
            data = img.to_bytes()
            with open(tmp, "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
                gz.write(data)
        else:
            tmp.write_bytes(img.to_bytes())


def load_nifti(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load a 3D NIfTI volume as float32 ``(D, H, W)`` plus its 4×4 affine.

    Raises :class:`InputError` naming the file for an unreadable file, a volume that is not 3D
    (a trailing singleton axis is dropped), or non-finite voxels.
    """
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {exc})") from exc
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise InputError(f"{path}: volume holds {int((~np.isfinite(data)).sum())} NaN/Inf voxels")
    return data, np.asarray(img.affine, dtype=np.float64)


def load_prepared_volume(path: str | os.PathLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Load a prepared volume: float on disk, 3D, finite, values in [0, 1], not constant.

    ``shape`` (D, H, W), if given, must match. Every failure is an :class:`InputError` naming the
    file and the problem. Returns float32 (D, H, W).
    """
    import nibabel as nib

    vol, _ = load_nifti(path)
    dtype = nib.load(str(path)).get_data_dtype()
    if not np.issubdtype(dtype, np.floating):
        raise InputError(f"{path}: prepared volumes must be float on disk, got {dtype} "
                         "(run `wdm-bench prepare` to build a data folder)")
    if shape is not None and vol.shape != tuple(shape):
        raise InputError(f"{path}: shape {vol.shape} differs from the data set's {tuple(shape)}")
    lo, hi = float(vol.min()), float(vol.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"{path}: voxel values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    if hi - lo < 1e-6:
        raise InputError(f"{path}: constant volume (every voxel = {lo:.4g})")
    return vol


def list_volumes(folder: str | os.PathLike) -> list[Path]:
    """Sorted ``*.nii.gz`` / ``*.nii`` files in ``folder`` (not recursive); error if none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".nii.gz", ".nii")) and not
                   p.name.startswith("."))
    if not files:
        raise InputError(f"{folder}: no NIfTI volumes (*.nii.gz) found")
    return files


def code_version() -> str:
    """The git commit of the code (with ``-dirty`` if modified), or the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root,
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "wdm-bench " + version("wdm-bench")
    except PackageNotFoundError:
        return "unknown"
