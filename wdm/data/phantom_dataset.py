"""Writing the embedded ``phantom-brain`` data set: volumes, ``manifest.csv`` and ``dataset.json``.

The volumes come from :func:`wdm.data.phantom.make_phantom` (MNI152 anatomy seen through a random
acquisition, see that module); this module draws them with one generator per volume, saves them
as NIfTI with an isotropic, origin-centred affine and builds the folder atomically (a hidden
sibling renamed into place only when complete).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from wdm.data.phantom import (
    ALLOWED_SIZES,
    DATASET_NAME,
    NILEARN_REQUIREMENT,
    load_mni_templates,
    make_phantom,
    template_sources,
)
from wdm.data.prepare import DATASET_RECORD
from wdm.io import InputError, code_version, save_nifti, sha256_file, write_json_atomic, write_text_atomic

__all__ = ["make_phantom_dataset", "phantom_affine"]

log = logging.getLogger(__name__)


def phantom_affine(size: int, extent_mm: float) -> np.ndarray:
    """4×4 affine: isotropic spacing ``extent_mm / size``, volume centre at the world origin."""
    spacing = extent_mm / size
    aff = np.diag([spacing, spacing, spacing, 1.0])
    aff[:3, 3] = -spacing * (size - 1) / 2.0
    return aff


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: folder exists and is not empty "
                         "(use overwrite=True to replace it)")


def _check_phantom_args(size: int, n_train: int, n_test: int, seed: int,
                        lesion_prob: float) -> None:
    """Refuse a size outside :data:`ALLOWED_SIZES` and non-integer or out-of-range arguments."""
    if size not in ALLOWED_SIZES:
        raise InputError(f"size must be one of {list(ALLOWED_SIZES)}, got {size!r}")
    for name, val, least in (("n_train", n_train, 1), ("n_test", n_test, 0)):
        if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < least:
            raise InputError(f"{name} must be an integer >= {least}, got {val!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    if not 0.0 <= float(lesion_prob) <= 1.0:
        raise InputError(f"lesion_prob must lie in [0, 1], got {lesion_prob}")


def _write_phantoms(tmp: Path, size: int, n_train: int, n_test: int, seed: int,
                    lesion_prob: float, templates: dict[str, Any]) -> list[tuple[str, ...]]:
    """Generate and save volumes ``0 … n_train + n_test - 1`` under ``tmp``; the manifest rows.

    Volume ``i`` is drawn with its own generator from ``SeedSequence(seed).spawn(...)[i]``; the
    first ``n_train`` go to ``train/``, the rest to ``test/``.
    """
    from tqdm import tqdm

    affine = phantom_affine(size, templates["extent_mm"])
    seeds = np.random.SeedSequence(int(seed)).spawn(n_train + n_test)
    rows = []
    for i in tqdm(range(n_train + n_test), desc=f"{DATASET_NAME} {size}³", unit="vol"):
        split = "train" if i < n_train else "test"
        vol = make_phantom(np.random.default_rng(seeds[i]), size, lesion_prob=lesion_prob,
                           templates=templates)
        rel = f"{split}/{DATASET_NAME}_{i:04d}.nii.gz"
        save_nifti(tmp / rel, vol, affine)
        rows.append((rel, split, "x".join(map(str, vol.shape)), sha256_file(tmp / rel)))
    return rows


def _phantom_record(size: int, n_train: int, n_test: int, seed: int, lesion_prob: float,
                    extent_mm: float, sources: dict[str, str]) -> dict[str, Any]:
    """The ``dataset.json`` of ``phantom-brain``: parameters, geometry, templates, code version."""
    spacing = extent_mm / size
    return {
        "name": DATASET_NAME,
        "size": size,
        "shape": [size] * 3,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "seed": int(seed),
        "lesion_prob": float(lesion_prob),
        "voxel_spacing_mm": [spacing] * 3,
        "extent_mm": extent_mm,
        "value_range": [0.0, 1.0],
        "axes": "x (left->right), y (posterior->anterior), z (inferior->superior)",
        "template_source": {"package": NILEARN_REQUIREMENT, "files": sources},
        "generator": "wdm.data.phantom.make_phantom",
        "code_version": code_version(),
    }


def make_phantom_dataset(out: str | os.PathLike, *, size: int = 32, n_train: int = 40,
                         n_test: int = 20, seed: int = 0, lesion_prob: float = 0.5,
                         overwrite: bool = False) -> Path:
    """Build the ``phantom-brain`` data set in ``out`` and return ``out``.

    Layout: ``train/phantom-brain_0000.nii.gz`` …, ``test/phantom-brain_{n_train:04d}.nii.gz`` …
    (float32 (size, size, size) in [0, 1]), ``manifest.csv`` (``file,split,shape,sha256``) and
    ``dataset.json`` (parameters, spacing, template files and their sha256, code version).
    Volume ``i`` uses its own generator from ``SeedSequence(seed).spawn(n_train + n_test)[i]``,
    so the same arguments give byte-identical files. Everything is built in a hidden sibling
    folder that is renamed to ``out`` only when complete; on failure it is removed.
    """
    _check_phantom_args(size, n_train, n_test, seed, lesion_prob)
    out = Path(out)
    _check_out(out, overwrite)

    t0 = time.perf_counter()
    templates = load_mni_templates(size)
    sources = template_sources()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        rows = _write_phantoms(tmp, size, n_train, n_test, seed, lesion_prob, templates)
        write_text_atomic(tmp / "manifest.csv", "file,split,shape,sha256\n"
                          + "".join(",".join(r) + "\n" for r in rows))
        write_json_atomic(tmp / DATASET_RECORD, _phantom_record(
            size, n_train, n_test, seed, lesion_prob, templates["extent_mm"], sources))
        _swap_into_place(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %d train + %d test volumes of %d³ in %.1f s", out, n_train, n_test, size,
             time.perf_counter() - t0)
    return out


def _swap_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder onto ``out``, replacing an old ``out`` only now."""
    _check_out(out, overwrite)  # re-check: something may have appeared while we built
    if not out.exists():
        os.replace(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "data")
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old / "data", out)  # put the old data set back
        shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
