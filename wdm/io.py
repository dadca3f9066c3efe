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
    "read_text",
    "read_json",
    "read_csv",
    "check_output",
    "check_writable",
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
    return data, _checked_affine(path, img.affine)


def _checked_affine(path: Path, affine: object) -> np.ndarray:
    """The 4×4 voxel-to-world matrix of ``path``: finite, its 3×3 part invertible (float64).

    A singular or non-finite affine would pass training (which reads only the voxels) and break
    every later step that maps voxels to space (sampling writes the data set's affine).
    """
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise InputError(f"{path}: affine (voxel-to-world matrix) holds NaN/Inf or is not 4x4, "
                         "expected a finite 4x4 matrix")
    rank = int(np.linalg.matrix_rank(aff[:3, :3]))
    if rank < 3:
        raise InputError(f"{path}: singular affine (its 3x3 part has rank {rank}), expected an "
                         "invertible voxel-to-world matrix (non-zero voxel sizes)")
    return aff


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


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The text of a UTF-8 file; a missing file, a folder or other bytes are an :class:`InputError`.

    ``what`` names the expected kind of file in the messages (e.g. ``"CSV file"``).
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a {what}")
    if not path.exists():
        raise InputError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                         f"{exc.start}), expected a {what}") from None


def read_json(path: str | os.PathLike, what: str = "JSON file") -> dict[str, Any]:
    """A JSON file holding one object, as a dict; anything else is an :class:`InputError`."""
    text = read_text(path, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        detail = "empty file" if not text.strip() else f"not valid JSON ({exc})"
        raise InputError(f"{path}: {detail}, expected a {what}") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: holds a JSON {type(obj).__name__}, expected a {what} "
                         "(a JSON object)")
    return obj


def read_csv(path: str | os.PathLike, required: tuple[str, ...] = (), what: str = "CSV file",
             **kwargs: Any) -> Any:
    """A CSV file as a pandas DataFrame, with at least the columns ``required``.

    ``kwargs`` go to :func:`pandas.read_csv`. A missing, empty, non-UTF-8 or malformed file, or
    missing columns, are an :class:`InputError` naming the file and what was expected.
    """
    import io

    import pandas as pd

    text = read_text(path, what)
    try:
        df = pd.read_csv(io.StringIO(text), **kwargs)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file, expected a {what}") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise InputError(f"{path}: not a readable CSV file ({' '.join(str(exc).split())}), "
                         f"expected a {what}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing columns {missing}, expected a {what} with the columns "
                         f"{', '.join(required)} (has: {', '.join(map(str, df.columns))})")
    return df


def check_output(path: str | os.PathLike, flag: str = "--out",
                 inputs: tuple[str | os.PathLike | None, ...] = ()) -> Path:
    """Refuse an output file that is an existing folder, unwritable, or one of ``inputs``.

    ``inputs``: the files the command reads, and its other outputs. Writing onto one would
    replace what the command is reading (``compare --table X --out X``) or writing. Returns
    ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: {flag} is a folder, expected a file name")
    check_writable(path, flag)
    target = path.resolve()
    for src in inputs:
        if src is not None and Path(src).resolve() == target:
            raise InputError(f"{path}: {flag} names a file this command also reads or writes; "
                             "writing it would overwrite that file, expected a file name of its own")
    return path


def check_writable(out: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse ``out`` when its nearest existing folder (itself or an ancestor) is not writable."""
    out = Path(out)
    probe = out if out.is_dir() else out.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{out}: cannot write {flag}: permission denied on {probe}, expected a "
                         "writable location")


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
