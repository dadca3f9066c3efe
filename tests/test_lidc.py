"""LIDC-IDRI preprocessing on DICOM series written here with pydicom (realistic CT tags)."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from wdm.data.lidc import preprocess_lidc_case, read_ct_series, read_dicom_series  # noqa: E402
from wdm.data.prepare import prepare, verify_manifest  # noqa: E402
from wdm.io import InputError  # noqa: E402


def _ds(values: list[float]) -> list[str]:
    return [f"{v:.10g}" for v in values]


def write_series(folder: Path, hu: np.ndarray, *, row=(1.0, 0.0, 0.0), col=(0.0, 1.0, 0.0),
                 origin=(-100.0, -80.0, -200.0), spacing=(1.0, 1.0), step: float = 1.0,
                 positions: list[float] | None = None, slope: float = 1.0, intercept: float = -1024.0,
                 modality: str = "CT", reverse_files: bool = False, series_uid: str | None = None) -> str:
    """Write ``hu`` (n_slices, Rows, Columns) as one DICOM file per slice; return the series UID.

    Slice ``k`` lies at ``origin + positions[k]·normal`` (default ``k·step``), ``normal = row × col``;
    stored pixels are int16 ``(hu - intercept) / slope``. ``reverse_files`` numbers the files and
    InstanceNumber backwards (head-first vs feet-first order).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study = generate_uid()
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    n = hu.shape[0]
    pos = [k * step for k in range(n)] if positions is None else positions
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        idx = n - 1 - k if reverse_files else k
        path = folder / f"1-{idx + 1:03d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = folder.parts[-2] if len(folder.parts) > 1 else "LIDC-IDRI-0000"
        ds.Modality = modality
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = idx + 1
        ds.ImagePositionPatient = _ds(list(np.asarray(origin) + pos[k] * normal))
        ds.ImageOrientationPatient = _ds(list(row) + list(col))
        ds.PixelSpacing = _ds(list(spacing))
        ds.SliceThickness = f"{step:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "HU"
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[2]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.round((hu[k] - intercept) / slope).astype("<i2").tobytes()
        ds.save_as(str(path), enforce_file_format=True)
    return series_uid


# ------------------------------------------------------------------------------- by hand
HAND = np.array([
    [[-1100, -1000, -500, 0], [100, 200, 300, 400], [500, 600, 700, 1000]],
    [[-1000, -1000, -1000, -1000], [0, 0, 0, 0], [250, 250, 250, 250]],
], dtype=np.float32)  # (slices, Rows, Columns)


@pytest.mark.parametrize("reverse", [False, True])
def test_one_case_by_hand(tmp_path: Path, reverse: bool) -> None:
    write_series(tmp_path / "LIDC-IDRI-0001" / "study" / "series", HAND, reverse_files=reverse,
                 slope=2.0, intercept=-2048.0)
    out, aff, rec = preprocess_lidc_case(tmp_path / "LIDC-IDRI-0001", size=8, cube=8,
                                         clip_percentile=100.0)
    assert rec["files_reversed"] is reverse and rec["n_slices"] == 2
    # 1 mm in, 1 mm out: the cubic spline reproduces the samples. RAS flips LPS x (columns) and y
    # (rows): out[a, b, c] = HAND[c, 2 - b, 3 - a]; pad offsets (8-4)//2, (8-3)//2, (8-2)//2.
    assert rec["resampled_shape"] == [4, 3, 2] and rec["offset"] == [2, 2, 3] and rec["padded"]
    # HU -1100 -> -1000 (air), max 1000: value = (hu + 1000) / 2000, padding 0.
    assert out[2 + 0, 2 + 0, 3 + 0] == pytest.approx(1.0, abs=1e-5)  # HAND[0, 2, 3] = 1000
    assert out[2 + 3, 2 + 2, 3 + 0] == pytest.approx(0.0, abs=1e-5)  # HAND[0, 0, 0] = -1100
    assert out[2 + 1, 2 + 2, 3 + 0] == pytest.approx(0.25, abs=1e-5)  # HAND[0, 0, 2] = -500
    assert out[2 + 2, 2 + 1, 3 + 0] == pytest.approx(0.6, abs=1e-5)  # HAND[0, 1, 1] = 200
    assert out[2 + 0, 2 + 0, 3 + 1] == pytest.approx(0.625, abs=1e-5)  # HAND[1, 2, 3] = 250
    assert out[0].max() == 0 and out[:, :, 7].max() == 0
    # world position of HAND[0, 0, 0]: LPS (-100, -80, -200) -> RAS (100, 80, -200)
    assert np.allclose(aff @ [5, 4, 3, 1], [100, 80, -200, 1])


def _blob_series(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Air with a soft 'nodule' (+400 HU) at pixel (row 12, col 6), slice 9; returns (hu, where)."""
    hu = np.full((n, 20, 16), -900.0, np.float32)
    r, c, k = np.meshgrid(np.arange(20), np.arange(16), np.arange(n), indexing="ij")
    d2 = ((r - 12) * 1.0) ** 2 + ((c - 6) * 1.0) ** 2 + ((k - 9) * 1.0) ** 2
    hu += (1300.0 * np.exp(-d2 / 4.0)).transpose(2, 0, 1)
    return hu, np.array([12, 6, 9])


def test_oblique_series_lands_in_the_right_place(tmp_path: Path) -> None:
    """A series rotated 30° about z, 0.8 mm pixels, 1.5 mm slices: the nodule keeps its world spot."""
    hu, (r0, c0, k0) = _blob_series()
    th = np.deg2rad(30)
    row, col = (np.cos(th), np.sin(th), 0.0), (-np.sin(th), np.cos(th), 0.0)
    origin = np.array([-10.0, 5.0, 40.0])
    write_series(tmp_path / "p", hu, row=row, col=col, origin=origin, spacing=(0.8, 0.8), step=1.5)
    vol, aff, info = read_dicom_series(sorted((tmp_path / "p").glob("*.dcm")))
    assert info["oblique"] and vol.shape == (16, 20, 20)
    # by hand: LPS = origin + col_index·0.8·row + row_index·0.8·col + slice·1.5·normal
    lps = origin + c0 * 0.8 * np.array(row) + r0 * 0.8 * np.array(col) + k0 * 1.5 * np.array([0, 0, 1.0])
    ras = lps * [-1, -1, 1]
    assert np.allclose(aff @ [c0, r0, k0, 1], list(ras) + [1])
    out, oaff, rec = preprocess_lidc_case(tmp_path / "p", size=32, cube=32, clip_percentile=100.0)
    peak = np.array(np.unravel_index(np.argmax(out), out.shape))
    assert np.linalg.norm((oaff @ [*peak, 1])[:3] - ras) < 1.0  # within a voxel of 1 mm
    assert np.allclose(np.abs(np.diag(oaff)[:3]), 1.0) and not rec["cropped"]


def test_several_series_most_ct_slices_wins_non_ct_skipped(tmp_path: Path, caplog) -> None:
    hu, _ = _blob_series(6)
    p = tmp_path / "LIDC-IDRI-0002"
    small = write_series(p / "s1" / "a", hu[:3])
    big = write_series(p / "s1" / "b", hu)
    dx = write_series(p / "s2" / "c", hu[:1].repeat(8, 0), modality="DX")
    (p / "s1" / "b" / "069.xml").write_text("<LidcReadMessage/>")
    with caplog.at_level(logging.INFO, logger="wdm.data.lidc"):
        files, info = read_ct_series(p)
    assert info["series"] == big and len(files) == 6 and info["n_ct_series"] == 2
    assert info["skipped_series"] == [{"series": dx, "modality": "DX", "files": 8}]
    assert f"skipping series {dx} (Modality 'DX'" in caplog.text and small not in info["series"]


def test_nifti_input_is_accepted(tmp_path: Path) -> None:
    hu, _ = _blob_series(10)
    vol = hu.transpose(2, 1, 0)[::-1, ::-1].copy()
    aff = np.diag([0.7, 0.7, 2.0, 1.0])
    nib.save(nib.Nifti1Image(vol, aff), str(tmp_path / "LIDC-IDRI-0003.nii.gz"))
    out, oaff, rec = preprocess_lidc_case(tmp_path / "LIDC-IDRI-0003.nii.gz", size=16, cube=32)
    # floor(15·0.7) + 1, floor(19·0.7) + 1, 9·2 + 1
    assert rec["resampled_shape"] == [11, 14, 19] and out.shape == (16, 16, 16)
    assert out.min() == 0 and 0.5 < out.max() <= 1


def test_separable_resampling_equals_scipy_affine_transform() -> None:
    """The axis-by-axis matrix path is scipy's 3D cubic spline (flipped, anisotropic grid)."""
    from scipy import ndimage as ndi

    from wdm.data.lidc import isotropic_grid, resample_to_grid

    rng = np.random.default_rng(0)
    vol = ndi.gaussian_filter(rng.normal(0, 300, (23, 19, 11)), 1).astype(np.float32)
    aff = np.diag([-0.7, -0.8, 2.5, 1.0])
    aff[:3, 3] = [10, 20, -30]
    shape, oaff = isotropic_grid(vol.shape, aff)
    assert shape == (16, 15, 26)  # floor(22·0.7) + 1, floor(18·0.8) + 1, 10·2.5 + 1
    m = np.linalg.inv(aff) @ oaff
    ref = ndi.affine_transform(vol, m[:3, :3], offset=m[:3, 3], output_shape=shape, order=3,
                               mode="constant", cval=-1000.0, output=np.float32)
    assert np.abs(resample_to_grid(vol, aff, shape, oaff) - ref).max() < 1e-2


def test_crop_resamples_only_the_window_with_the_same_values(tmp_path: Path) -> None:
    from wdm.data.lidc import resample_isotropic
    from wdm.data.preprocess import pad_or_crop

    hu, _ = _blob_series(20)
    write_series(tmp_path / "p", hu, spacing=(0.9, 0.9), step=1.3)
    out, aff, rec = preprocess_lidc_case(tmp_path / "p", size=8, cube=8, clip_percentile=100.0)
    assert rec["cropped"] and not rec["padded"] and rec["resampled_shape"] == [14, 18, 25]
    vol, vaff, _ = read_dicom_series(sorted((tmp_path / "p").glob("*.dcm")))
    full, faff = resample_isotropic(vol, vaff)
    box, off = pad_or_crop(full, 8, -1000.0)
    assert rec["offset"] == off.tolist() == [-3, -5, -8]
    box = np.maximum(box, -1000.0)
    assert np.allclose(out, (box - box.min()) / (box.max() - box.min()), atol=1e-5)
    assert np.allclose(aff @ [0, 0, 0, 1], faff @ [3, 5, 8, 1])


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kind, message", [
    ("missing", r"missing slice\(s\): gap of 2.000 mm between 1-003.dcm and 1-004.dcm .*\(about 1 slice"),
    ("duplicate", "duplicate slice at position"),
    ("spacing", "inconsistent slice spacing"),
    ("truncated", "unreadable DICOM pixel data"),
    ("garbage", "not a readable DICOM file"),
    ("no_ct", r"no CT series \(found modalities \['MR'\]\)"),
    ("constant", "constant volume"),
    ("single", "is not a 3D volume"),
])
def test_bad_series_names_the_problem(tmp_path: Path, kind: str, message: str) -> None:
    hu, _ = _blob_series(6)
    p = tmp_path / "LIDC-IDRI-0009" / "x" / "y"
    positions = {"missing": [0, 1, 2, 4, 5, 6], "duplicate": [0, 1, 2, 2, 3, 4],
                 "spacing": [0, 1, 2, 3.3, 4, 5]}.get(kind)
    write_series(p, {"constant": np.full_like(hu, 40.0), "single": hu[:1]}.get(kind, hu),
                 positions=positions, modality="MR" if kind == "no_ct" else "CT")
    victim = sorted(p.glob("*.dcm"))[0]
    if kind == "truncated":
        victim.write_bytes(victim.read_bytes()[:-300])
    elif kind == "garbage":
        victim.write_bytes(b"\0" * 50)
    with pytest.raises(InputError, match=message) as err:
        preprocess_lidc_case(tmp_path / "LIDC-IDRI-0009", size=8, cube=8)
    assert "LIDC-IDRI-0009" in str(err.value)
    if kind in ("truncated", "garbage"):
        assert victim.name in str(err.value)


def test_prepare_lidc_pads_small_scans_and_records_exclusions(tmp_path: Path) -> None:
    src = tmp_path / "LIDC-IDRI"
    hu, _ = _blob_series(12)
    for i in range(4):
        write_series(src / f"LIDC-IDRI-{i:04d}" / "st" / "se", hu + 10 * i, step=1.25,
                     reverse_files=bool(i % 2))
    write_series(src / "LIDC-IDRI-0004" / "st" / "se", hu, positions=[0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12])
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0).copy(), np.eye(4)), str(src / "LIDC-IDRI-0005.nii.gz"))
    out = prepare("lidc", tmp_path / "data" / "lidc" / "16", source=src, size=16, cube=32, n_test=2,
                  threads=2, progress=False)
    rows = verify_manifest(out)
    assert len(rows) == 5 and sum(r["split"] == "test" for r in rows) == 2
    assert {r["source"] for r in rows} >= {"LIDC-IDRI-0000", "LIDC-IDRI-0005.nii.gz"}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["padded_cases"] == sorted(r["case"] for r in rows)  # all smaller than 32 mm: padded
    assert (meta["split"], meta["test_in_train"]) == ("holdout", False)  # the defaults: ours
    assert (meta["preprocessing"]["orientation"], meta["preprocessing"]["small_scans"]) == ("ras", "pad")
    assert meta["cases"]["LIDC-IDRI-0000"]["resampled_shape"] == [16, 20, 14]  # 11·1.25 mm -> 14
    with open(out / "excluded.csv", newline="") as f:
        (bad,) = list(csv.DictReader(f))
    assert bad["case"] == "LIDC-IDRI-0004" and "missing slice(s)" in bad["reason"]
    with pytest.raises(InputError, match="LIDC-IDRI-0004.*missing slice.*strict"):
        prepare("lidc", tmp_path / "strict", source=src, size=16, cube=32, n_test=2, strict=True,
                progress=False)
    assert not (tmp_path / "strict").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LIDC-IDRI", "data"]
