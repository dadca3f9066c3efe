"""LIDC-IDRI preprocessing as in the WDM paper (Friedrich et al. 2024, arXiv 2402.19043).

Per patient: the CT series with the most slices (other series, such as the DX/CR radiographs some
patients have, are skipped with a log line) is read with pydicom, its slices ordered along the
slice normal by ``ImagePositionPatient`` (so reversed file or instance order does not matter),
converted to HU with ``RescaleSlope``/``RescaleIntercept`` and checked for missing or duplicate
slices and inconsistent spacing. Already-converted NIfTI volumes (HU) are accepted instead.
Then: resample to 1 mm isotropic on a world-axis-aligned grid with cubic splines; centre-crop
or pad (with −1000 HU; recorded) to 256³; HU < −1000 -> −1000; clip above at the 99.9th percentile
of the scan; min-max to [0, 1]; average-pool for 128³.

Two switches reproduce the authors' script (pfriedri/wdm-3d ``utils/preproc_lidc-idri.py``):
``orientation`` — ``ras`` (ours: array axis 0 toward the patient's Right, 1 Anterior, 2 Superior)
or ``las`` (what ``dicom2nifti`` gives upstream: axis 0 from Right to Left, so the RAS affine's
first column points to −x; the RAS grid mirrored along axis 0, centre-cropped in its own indices);
``small_scans`` — ``pad`` (ours: pad a scan smaller than the cube and keep it) or ``drop``
(upstream's bare ``except`` skips it: here an :class:`InputError`, i.e. an exclusion).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from wdm.data.preprocess import avg_pool, check_volume, minmax, pad_or_crop, pool_affine, shift_affine
from wdm.io import InputError, load_nifti, sha256_file

__all__ = [
    "CUBE",
    "AIR_HU",
    "find_lidc_cases",
    "read_ct_series",
    "read_dicom_series",
    "isotropic_grid",
    "resample_to_grid",
    "resample_isotropic",
    "preprocess_lidc_case",
    "check_lidc_options",
    "ORIENTATIONS",
    "SMALL_SCANS",
]

log = logging.getLogger(__name__)

CUBE = 256
AIR_HU = -1000.0
CLIP_PERCENTILE = 99.9
#: Relative deviation of one slice gap from the median gap that counts as inconsistent spacing.
SPACING_TOL = 0.05
#: Slices closer than this (mm) along the normal are duplicates.
DUPLICATE_TOL_MM = 1e-2
_NIFTI = (".nii.gz", ".nii")
_NOT_DICOM = (".xml", ".txt", ".csv", ".json", ".md")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Orientations of the 1 mm grid: ``ras`` (ours) or ``las`` (dicom2nifti's, used upstream).
ORIENTATIONS: tuple[str, ...] = ("ras", "las")
#: What to do with a scan smaller than the cube: ``pad`` (ours) or ``drop`` (upstream).
SMALL_SCANS: tuple[str, ...] = ("pad", "drop")


def find_lidc_cases(source: str | os.PathLike) -> list[tuple[str, Path]]:
    """``(case_id, path)`` for each patient folder (DICOM) or NIfTI file directly under ``source``."""
    source = Path(source)
    if not source.is_dir():
        raise InputError(f"{source}: LIDC-IDRI source folder not found")
    cases = []
    for p in sorted(source.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            cases.append((p.name, p))
        elif p.name.endswith(_NIFTI):
            cases.append((p.name[: -len(".nii.gz")] if p.name.endswith(".nii.gz") else p.stem, p))
    if not cases:
        raise InputError(f"{source}: no LIDC-IDRI cases (expected LIDC-IDRI-xxxx/ folders of DICOM "
                         "series or LIDC-IDRI-xxxx.nii.gz files)")
    ids = [c for c, _ in cases]
    dup = sorted({c for c in ids if ids.count(c) > 1})
    if dup:
        raise InputError(f"{source}: cases {dup} appear both as a folder and as a NIfTI file")
    return cases


def _read_header(path: Path) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from exc


def _tag(ds: Any, name: str, path: Path) -> Any:
    val = getattr(ds, name, None)
    if val is None or (hasattr(val, "__len__") and len(val) == 0):
        raise InputError(f"{path}: DICOM tag {name} missing")
    return val


def read_ct_series(patient_dir: str | os.PathLike) -> tuple[list[Path], dict[str, Any]]:
    """Files of the CT series with the most slices under ``patient_dir`` (searched recursively).

    Non-CT series are skipped with an INFO log line; files with a non-DICOM suffix (``.xml``
    annotations etc.) are ignored; any other unreadable file is an :class:`InputError`.
    Returns ``(files, info)`` with ``info`` = SeriesInstanceUID, number of slices, skipped series.
    """
    patient_dir = Path(patient_dir)
    files = sorted(p for p in patient_dir.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and not p.name.lower().endswith(_NOT_DICOM))
    if not files:
        raise InputError(f"{patient_dir}: no DICOM files")
    series: dict[str, list[Path]] = defaultdict(list)
    modality: dict[str, str] = {}
    for f in files:
        ds = _read_header(f)
        uid = str(_tag(ds, "SeriesInstanceUID", f))
        series[uid].append(f)
        modality.setdefault(uid, str(getattr(ds, "Modality", "")))
    skipped = []
    for uid in sorted(series):
        if modality[uid] != "CT":
            log.info("%s: skipping series %s (Modality %r, %d files): not CT", patient_dir, uid,
                     modality[uid] or "missing", len(series[uid]))
            skipped.append({"series": uid, "modality": modality[uid], "files": len(series[uid])})
    ct = sorted((uid for uid in series if modality[uid] == "CT"), key=lambda u: (-len(series[u]), u))
    if not ct:
        raise InputError(f"{patient_dir}: no CT series (found modalities "
                         f"{sorted(set(modality.values()))})")
    if len(ct) > 1:
        log.info("%s: %d CT series; using %s (%d slices, the most)", patient_dir, len(ct), ct[0],
                 len(series[ct[0]]))
    return series[ct[0]], {"series": ct[0], "n_ct_series": len(ct), "skipped_series": skipped}


_Slice = tuple[Path, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _read_slice(f: Path) -> _Slice:
    """One DICOM file -> ``(file, orientation (6,), position (3,), pixel spacing (2,), HU)``.

    HU is float32 (Rows, Columns): ``stored · RescaleSlope + RescaleIntercept``.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(str(f))
        pix = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated or corrupt files
        raise InputError(f"{f}: unreadable DICOM pixel data ({type(exc).__name__}: {exc})") from exc
    if pix.ndim != 2:
        raise InputError(f"{f}: expected a 2D slice, got pixel data of shape {pix.shape}")
    iop = np.asarray(_tag(ds, "ImageOrientationPatient", f), dtype=np.float64)
    ipp = np.asarray(_tag(ds, "ImagePositionPatient", f), dtype=np.float64)
    ps = np.asarray(_tag(ds, "PixelSpacing", f), dtype=np.float64)
    if iop.shape != (6,) or ipp.shape != (3,) or ps.shape != (2,):
        raise InputError(f"{f}: malformed ImageOrientationPatient/ImagePositionPatient/PixelSpacing")
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    inter = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    hu = pix.astype(np.float32) * np.float32(slope) + np.float32(inter)
    return f, iop, ipp, ps, hu


def _check_same_geometry(slices: list[_Slice]) -> None:
    """Every slice must share the first one's orientation, matrix size and pixel spacing."""
    f0, iop0, _, ps0, hu0 = slices[0]
    for f, iop, _, ps, hu in slices[1:]:
        if not np.allclose(iop, iop0, atol=1e-4):
            raise InputError(f"{f}: ImageOrientationPatient {iop.tolist()} differs from {f0} "
                             f"({iop0.tolist()}) in the same series")
        if hu.shape != hu0.shape or not np.allclose(ps, ps0, rtol=1e-4):
            raise InputError(f"{f}: matrix {hu.shape} / PixelSpacing {ps.tolist()} differs from {f0} "
                             f"({hu0.shape} / {ps0.tolist()})")


def _check_gaps(name: str, slices: list[_Slice], pos: np.ndarray) -> float:
    """The median slice gap in mm of slices sorted by position ``pos`` (n,) along the normal.

    Raises :class:`InputError` for duplicate slices, missing slices (a gap near a multiple of
    the median) or otherwise inconsistent spacing.
    """
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < DUPLICATE_TOL_MM)
    if dup.size:
        i = int(dup[0])
        raise InputError(f"{name}: duplicate slice at position {pos[i]:.3f} mm along the normal "
                         f"({slices[i][0].name} and {slices[i + 1][0].name}); "
                         f"{dup.size} duplicate(s) in the series")
    step = float(np.median(gaps))
    rel = gaps / step
    bad = np.flatnonzero(np.abs(rel - 1.0) > SPACING_TOL)
    if bad.size:
        i = int(bad[0])
        k = rel[i]
        if k > 1.5 and abs(k - round(k)) < 2 * SPACING_TOL:
            raise InputError(f"{name}: missing slice(s): gap of {gaps[i]:.3f} mm between "
                             f"{slices[i][0].name} and {slices[i + 1][0].name} where the spacing is "
                             f"{step:.3f} mm (about {round(k) - 1} slice(s) missing)")
        raise InputError(f"{name}: inconsistent slice spacing: gaps from {gaps.min():.3f} to "
                         f"{gaps.max():.3f} mm (median {step:.3f} mm; first outlier between "
                         f"{slices[i][0].name} and {slices[i + 1][0].name})")
    return step


def _series_lps_affine(row: np.ndarray, col: np.ndarray, ps: np.ndarray,
                       slices: list[_Slice]) -> np.ndarray:
    """4×4 voxel-to-LPS affine of sorted ``slices`` stacked as (Columns, Rows, n_slices)."""
    lps = np.eye(4)
    lps[:3, 0] = row * ps[1]  # along a row: next column, spacing PixelSpacing[1]
    lps[:3, 1] = col * ps[0]  # down a column: next row, spacing PixelSpacing[0]
    lps[:3, 2] = (slices[-1][2] - slices[0][2]) / (len(slices) - 1)
    lps[:3, 3] = slices[0][2]
    return lps


def read_dicom_series(files: list[Path], name: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read one DICOM series into HU with its RAS affine.

    Slices are sorted by the projection of ``ImagePositionPatient`` on the slice normal
    ``n = row × col`` (``ImageOrientationPatient``), so any file or instance order works and
    oblique (rotated) series are placed exactly; a gantry tilt shows up as a sheared affine.

    Returns:
        ``(volume, affine, info)``: float32 ``(Columns, Rows, n_slices)`` in HU
        (``stored · RescaleSlope + RescaleIntercept``), the 4×4 voxel-to-RAS affine, and a record
        (slice spacing, pixel spacing, whether the files were in reverse order).

    Raises:
        InputError: naming the series (or file) for unreadable/truncated pixel data, a missing tag,
        mixed orientation or matrix size, duplicate slices, missing slices or inconsistent spacing.
    """
    name = name or str(Path(files[0]).parent)
    slices = [_read_slice(f) for f in files]
    if len(slices) < 2:
        raise InputError(f"{name}: a series of {len(slices)} slice(s) is not a 3D volume")
    _check_same_geometry(slices)
    iop0, ps0 = slices[0][1], slices[0][3]
    row, col = iop0[:3], iop0[3:]
    normal = np.cross(row, col)
    pos = np.array([s[2] @ normal for s in slices])
    order = np.argsort(pos, kind="stable")
    reversed_files = bool(pos[0] > pos[-1])
    slices = [slices[i] for i in order]
    step = _check_gaps(name, slices, pos[order])
    vol = np.stack([s[4] for s in slices], axis=-1).transpose(1, 0, 2)  # (Columns, Rows, slices)
    lps = _series_lps_affine(row, col, ps0, slices)
    info = {
        "n_slices": len(slices),
        "pixel_spacing_mm": ps0.tolist(),
        "slice_spacing_mm": step,
        "files_reversed": reversed_files,
        "oblique": bool(not np.allclose(np.abs(iop0), np.round(np.abs(iop0)), atol=1e-3)),
    }
    return np.ascontiguousarray(vol), _LPS_TO_RAS @ lps, info


def isotropic_grid(shape: tuple[int, ...], affine: np.ndarray, spacing: float = 1.0
                   ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The world-axis-aligned grid of ``spacing`` mm covering a volume's voxel centres.

    Returns ``(shape, affine)``: the grid has the identity orientation (RAS: array axes = x, y, z,
    scaled by ``spacing``) and starts at the bounding box's lowest corner; for an axis-aligned
    input that is the input's corner voxel, so a 1 mm input maps onto itself.
    """
    affine = np.asarray(affine, dtype=np.float64)
    n = np.asarray(shape, dtype=np.float64) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, n[0]) for j in (0, n[1]) for k in (0, n[2])])
    world = (affine @ corners.T)[:3]
    lo, hi = world.min(1), world.max(1)
    out_shape = tuple(int(s) for s in np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1)
    out_aff = np.diag([spacing] * 3 + [1.0])
    out_aff[:3, 3] = lo
    return out_shape, out_aff  # type: ignore[return-value]


def _interp_matrix(n_in: int, n_out: int, scale: float, offset: float, order: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1D spline interpolation: ``out[j] = spline(in)(scale·j + offset)``.

    Built by interpolating the identity with scipy, so it is scipy's own 1D spline (prefilter and
    evaluation, 'constant' boundary with value 0); outside the input it gives 0.
    """
    eye = np.eye(n_in, dtype=np.float64)
    w = ndi.affine_transform(eye, np.array([scale, 1.0]), offset=np.array([offset, 0.0]),
                             output_shape=(n_out, n_in), order=order, mode="constant", cval=0.0)
    return w.astype(np.float32)


def resample_to_grid(vol: np.ndarray, affine: np.ndarray, out_shape: tuple[int, ...],
                     out_affine: np.ndarray, *, order: int = 3, cval: float = AIR_HU) -> np.ndarray:
    """Spline-interpolate ``vol`` (voxel-to-world ``affine``) at the voxels of another grid.

    When the grids are axis-aligned with each other (any flips; the usual CT case) the
    tensor-product spline is applied one axis at a time as three matrix products (BLAS; ~20×
    faster than ``scipy.ndimage.affine_transform`` at 512²×160 -> 256³). Oblique grids (rotated
    orientation or gantry tilt) go through ``affine_transform`` with the full matrix. Points
    outside the input get ``cval``. Returns float32 of ``out_shape``.
    """
    m = np.linalg.inv(np.asarray(affine, dtype=np.float64)) @ np.asarray(out_affine, dtype=np.float64)
    mat, off = m[:3, :3], m[:3, 3]
    src = vol.astype(np.float32, copy=False)
    if not np.allclose(mat, np.diag(np.diag(mat)), atol=1e-9):
        return ndi.affine_transform(src, mat, offset=off, output_shape=tuple(out_shape), order=order,
                                    mode="constant", cval=cval, output=np.float32)
    out = src - np.float32(cval)  # interpolate the offset from cval: outside -> 0 -> cval
    for axis in range(3):
        w = _interp_matrix(src.shape[axis], int(out_shape[axis]), float(mat[axis, axis]),
                           float(off[axis]), order)
        out = np.moveaxis(np.tensordot(w, out, axes=([1], [axis])), 0, axis)
    out += np.float32(cval)
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_isotropic(vol: np.ndarray, affine: np.ndarray, spacing: float = 1.0, *,
                       order: int = 3, cval: float = AIR_HU) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``vol`` onto its :func:`isotropic_grid` with cubic splines; ``(volume, affine)``."""
    shape, out_aff = isotropic_grid(vol.shape, affine, spacing)
    return resample_to_grid(vol, affine, shape, out_aff, order=order, cval=cval), out_aff


def _series_digest(files: list[Path]) -> str:
    """sha256 over the sorted (file name, file sha256) pairs of a DICOM series."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def _read_case(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(volume in HU, voxel-to-RAS affine, record)`` of a patient folder or a NIfTI file.

    The record holds the source digest and file count, and for DICOM the series record of
    :func:`read_ct_series` and :func:`read_dicom_series`.
    """
    if path.is_dir():
        files, info = read_ct_series(path)
        vol, affine, sinfo = read_dicom_series(files, name=f"{path} (series {info['series']})")
        info.update(sinfo)
        info["source_sha256"] = _series_digest(files)
        info["source_files"] = len(files)
    else:
        vol, affine = load_nifti(path)
        info = {"source_sha256": sha256_file(path), "source_files": 1}
    return vol, affine, info


def check_lidc_options(orientation: str, small_scans: str) -> None:
    """:class:`InputError` listing the allowed values for an unknown ``orientation``/``small_scans``."""
    for name, val, allowed in (("orientation", orientation, ORIENTATIONS),
                               ("small_scans", small_scans, SMALL_SCANS)):
        if val not in allowed:
            raise InputError(f"unknown LIDC {name} {val!r}; allowed: {', '.join(allowed)}")


def _las_from_ras(n0: int) -> np.ndarray:
    """4×4 map from LAS grid voxels to RAS grid voxels of ``n0`` voxels along axis 0.

    LAS voxel ``(i, j, k)`` is RAS voxel ``(n0 - 1 - i, j, k)``: the same world-aligned grid
    mirrored along axis 0, so ``ras_affine @ _las_from_ras(n0)`` is the LAS grid's affine (its
    first column points to −x, the patient's left; ``nibabel.aff2axcodes`` gives L, A, S).
    """
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1.0, n0 - 1.0
    return flip


def _check_small_scan(name: str, shape: tuple[int, ...], affine: np.ndarray, cube: int,
                      spacing: float, small_scans: str) -> None:
    """With ``small_scans="drop"``, :class:`InputError` for a scan smaller than ``cube`` voxels.

    Upstream resamples with ``scipy.ndimage.zoom`` to ``round(n · voxel size)`` voxels per axis,
    centre-crops a smaller scan to less than 256³, fails its shape assertion and skips the scan
    in a bare ``except``. The same measure here: the scan's extent along each world axis
    (``|affine| @ shape``, voxel edges included; n · voxel size for an axis-aligned series),
    rounded to whole ``spacing`` voxels; a case below ``cube`` on any axis is excluded.
    """
    extent = np.abs(np.asarray(affine, dtype=np.float64)[:3, :3]) @ np.asarray(shape, dtype=np.float64)
    n_up = [int(round(e / spacing)) for e in extent]
    small = [ax for ax, n in enumerate(n_up) if n < cube]
    if small_scans != "drop" or not small:
        return
    axes = f"axis {small[0]}" if len(small) == 1 else f"axes {', '.join(map(str, small))}"
    raise InputError(f"{name}: scan is {'x'.join(f'{n * spacing:g}' for n in n_up)} mm, smaller "
                     f"than {cube * spacing:g} mm along {axes}; small_scans: drop (as upstream)")


def _resample_into_cube(vol: np.ndarray, affine: np.ndarray, full: tuple[int, ...],
                        grid_aff: np.ndarray, cube: int, hu_min: float, orientation: str
                        ) -> tuple[np.ndarray, np.ndarray, tuple[slice, ...], np.ndarray]:
    """Resample the centre window of ``vol`` that survives the crop and pad it to ``cube``³.

    ``full``, ``grid_aff``: the RAS :func:`isotropic_grid`. With ``orientation="las"`` the window
    is chosen in the mirrored grid's own indices (as upstream crops dicom2nifti's LAS array),
    resampled on the RAS grid and flipped along axis 0, so the values are exactly the RAS ones.
    Returns ``(box, affine, content, offset)``: float32 (cube, cube, cube) in HU padded with
    ``hu_min``, its affine, the slices of ``box`` holding resampled data, and the offset (3,) int
    (output voxel j = voxel j - offset of the full grid in ``orientation``).
    """
    start = np.array([max((n - cube) // 2, 0) for n in full])
    win = tuple(min(n, cube) for n in full)
    ras_start, out_aff = start.copy(), grid_aff
    if orientation == "las":
        ras_start[0] = full[0] - start[0] - win[0]  # the same window, counted from the other end
        out_aff = grid_aff @ _las_from_ras(full[0])
    iso = resample_to_grid(vol, affine, win, shift_affine(grid_aff, -ras_start), order=3, cval=hu_min)
    if orientation == "las":
        iso = np.ascontiguousarray(iso[::-1])
    box, pad = pad_or_crop(iso, cube, pad_value=hu_min)
    offset = pad - start
    content = tuple(slice(int(p), int(p) + n) for p, n in zip(pad, win, strict=True))
    return box, shift_affine(out_aff, offset), content, offset


def preprocess_lidc_case(path: str | os.PathLike, *, size: int = 128, cube: int = CUBE,
                         spacing: float = 1.0, hu_min: float = AIR_HU,
                         clip_percentile: float = CLIP_PERCENTILE, orientation: str = "ras",
                         small_scans: str = "pad") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Preprocess one LIDC-IDRI case; pure (reads the case's files, writes nothing).

    Args:
        path: a patient folder of DICOM files (any nesting) or a NIfTI volume in HU.
        size: output side; ``cube`` must be divisible by it.
        cube: side of the 1 mm cube (256 in the paper; smaller in tests).
        spacing: the isotropic resampling grid in mm (1 in the paper).
        hu_min: lower HU bound (−1000: air); also the padding value.
        clip_percentile: the upper clip, a percentile of the scan inside the cube (pad excluded).
        orientation: ``ras`` (array axes toward Right, Anterior, Superior) or ``las`` (toward
            Left, Anterior, Superior: dicom2nifti's orientation, which upstream uses as it is).
        small_scans: ``pad`` a scan smaller than the cube along an axis, or ``drop`` it (an
            :class:`InputError`: excluded, as upstream skips it).

    Returns:
        ``(volume, affine, record)``: float32 ``(size, size, size)`` in [0, 1], its voxel-to-RAS
        affine and a JSON-able record (series, spacing, orientation, resampled shape, pad/crop
        offsets in the grid of ``orientation``, clip value).
    """
    if size < 1 or cube % size:
        raise InputError(f"output size {size} must divide the cube side {cube}")
    check_lidc_options(orientation, small_scans)
    path = Path(path)
    vol, affine, info = _read_case(path)
    vol = check_volume(vol, str(path))
    if vol.min() == vol.max():
        raise InputError(f"{path}: constant volume (every voxel is {float(vol.min()):g} HU)")
    _check_small_scan(str(path), vol.shape, affine, cube, spacing, small_scans)
    full, grid_aff = isotropic_grid(vol.shape, affine, spacing)
    box, aff, content, offset = _resample_into_cube(vol, affine, full, grid_aff, cube, hu_min,
                                                    orientation)
    np.maximum(box, hu_min, out=box)
    top = float(np.percentile(box[content], clip_percentile))
    np.minimum(box, top, out=box)
    norm = minmax(box, name=f"{path} (after HU clipping to [{hu_min:g}, {top:g}])")
    factor = cube // size
    padded = any(n < cube for n in full)  # also a pad of 1 voxel, all after (offset 0)
    if padded:
        log.info("%s: %s mm scan is smaller than %d mm along some axis; padded with %g HU "
                 "(offset %s), not dropped", path, "x".join(map(str, full)), cube, hu_min,
                 offset.tolist())
    info.update({
        "source": str(path),
        "source_shape": list(vol.shape),
        "resampled_shape": list(full),
        "orientation": orientation,
        "clip": [hu_min, top],
        "offset": offset.tolist(),
        "padded": padded,
        "cropped": any(n > cube for n in full),
        "pool": factor,
    })
    return avg_pool(norm, factor), pool_affine(aff, factor), info
