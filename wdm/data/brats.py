"""BraTS 2023 GLI preprocessing as in the WDM paper (Friedrich et al. 2024, arXiv 2402.19043).

BraTS ships one folder per case, ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz`` (and
``-t1c``, ``-t2w``, ``-t2f``, ``-seg``), each volume 240×240×155 at 1 mm. Per case, for one
modality (T1n in the paper): clip to the volume's 0.1 and 99.9 percentiles, min-max to [0, 1],
zero-pad to 256³ (8/8, 8/8, 50/51 voxels, as in the authors' loader), average-pool by 2 for 128³.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from wdm.data.preprocess import avg_pool, minmax, pad_or_crop, percentile_clip, pool_affine, shift_affine
from wdm.io import InputError, load_nifti, sha256_file

__all__ = ["MODALITIES", "CUBE", "find_brats_cases", "modality_file", "preprocess_brats_case"]

log = logging.getLogger(__name__)

MODALITIES: tuple[str, ...] = ("t1n", "t1c", "t2w", "t2f")
#: Side of the padded cube (voxels at 1 mm) that the 128³ and 256³ outputs are made from.
CUBE = 256
CLIP_PERCENTILES: tuple[float, float] = (0.1, 99.9)


def find_brats_cases(source: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(case_id, case_folder)`` for every case folder under ``source``, sorted by id.

    A case folder is a sub-folder holding at least one ``*.nii.gz`` / ``*.nii`` file; whether it
    holds the wanted modality is checked per case (a missing file is an exclusion, not a crash).
    """
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: BraTS source folder not found")
    cases = []
    for d in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(f.name.endswith((".nii.gz", ".nii")) for f in d.iterdir()):
            cases.append((d.name, d))
    if not cases:
        raise InputError(f"{source}: no BraTS case folders (expected BraTS-GLI-xxxxx-xxx/ folders "
                         "holding BraTS-GLI-xxxxx-xxx-t1n.nii.gz etc.)")
    return cases


def modality_file(case_dir: str | os.PathLike, modality: str) -> Path:
    """The ``{case}-{modality}.nii.gz`` (or ``.nii``) file of a case; :class:`InputError` if absent."""
    if modality not in MODALITIES:
        raise InputError(f"unknown BraTS modality {modality!r}; allowed: {', '.join(MODALITIES)}")
    case_dir = Path(case_dir)
    for suffix in (".nii.gz", ".nii"):
        path = case_dir / f"{case_dir.name}-{modality}{suffix}"
        if path.is_file():
            return path
    present = sorted(p.name for p in case_dir.iterdir() if p.name.endswith((".nii.gz", ".nii")))
    raise InputError(f"{case_dir / (case_dir.name + '-' + modality + '.nii.gz')}: missing modality "
                     f"file (the case folder holds {', '.join(present) or 'no NIfTI files'})")


def preprocess_brats_case(case_dir: str | os.PathLike, *, modality: str = "t1n", size: int = 128,
                          cube: int = CUBE,
                          percentiles: tuple[float, float] = CLIP_PERCENTILES
                          ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Preprocess one BraTS case; pure (reads the case's files, writes nothing).

    Args:
        case_dir: the case folder (``BraTS-GLI-00000-000/``).
        modality: which scan (``t1n`` in the paper).
        size: output side; ``cube`` must be divisible by it (256 -> 128 pools by 2).
        cube: side of the zero-padded cube (256 for the paper; smaller in tests).
        percentiles: the low and high clipping percentiles of the volume.

    Returns:
        ``(volume, affine, record)``: float32 ``(size, size, size)`` in [0, 1] (background 0), its
        4×4 affine (the source affine shifted by the padding and scaled by the pooling), and a
        JSON-able record (source file, its sha256 and shape, clip values, pad/crop offsets).

    Raises:
        InputError: naming the file: missing modality, unreadable/truncated file, not 3D, NaN/Inf
        voxels, constant volume.
    """
    if size < 1 or cube % size:
        raise InputError(f"output size {size} must divide the cube side {cube}")
    path = modality_file(case_dir, modality)
    vol, affine = load_nifti(path)  # InputError for unreadable, non-3D, NaN/Inf
    lo_q, hi_q = percentiles
    lo, hi = (float(v) for v in np.percentile(vol, [lo_q, hi_q]))
    clipped = percentile_clip(vol, lo_q, hi_q)
    norm = minmax(clipped, name=f"{path} (after clipping to the {lo_q}/{hi_q} percentiles)")
    padded, offset = pad_or_crop(norm, cube, pad_value=0.0)
    aff = shift_affine(affine, offset)
    factor = cube // size
    out = avg_pool(padded, factor)
    aff = pool_affine(aff, factor)
    record = {
        "source": str(path),
        "source_sha256": sha256_file(path),
        "source_shape": list(vol.shape),
        "source_spacing_mm": [float(s) for s in np.linalg.norm(affine[:3, :3], axis=0)],
        "clip": [lo, hi],
        "offset": offset.tolist(),
        "padded": bool((offset > 0).any()),
        "cropped": bool((offset < 0).any()),
        "pool": factor,
    }
    if record["cropped"]:
        log.warning("%s: shape %s is larger than %d³ along some axis; centre-cropped (offset %s)",
                    path, tuple(vol.shape), cube, offset.tolist())
    return out, aff, record
