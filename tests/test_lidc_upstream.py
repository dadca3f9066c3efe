"""The upstream switches of data preparation (pfriedri/wdm-3d ``utils/preproc_lidc-idri.py``).

``orientation: las`` (dicom2nifti's array, axes toward Left, Anterior, Superior), ``small_scans:
drop`` (scans smaller than the cube skipped) and ``split: upstream`` (train on every case), each
against our defaults ``ras`` / ``pad`` / ``holdout``, on synthetic DICOM series (pydicom).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("pydicom")

from tests.test_brats import smooth_case, write_case  # noqa: E402
from tests.test_lidc import write_series  # noqa: E402
from wdm.cli import main  # noqa: E402
from wdm.data.lidc import preprocess_lidc_case, read_dicom_series, resample_isotropic  # noqa: E402
from wdm.data.prepare import prepare, read_manifest, split_files, verify_manifest  # noqa: E402
from wdm.io import InputError, load_nifti, sha256_file  # noqa: E402

# (slices, Rows, Columns) = LPS (z, y, x) at 1 mm; the origin puts the volume's centre at 0.
SHAPE = (16, 18, 20)
ORIGIN = (-9.5, -8.5, -7.5)
# DICOM LPS: column index -> +x = patient's LEFT, row index -> +y = POSTERIOR, slice -> +z = SUPERIOR.
MARKERS = {  # name: ((slice, row, column), HU)
    "left": ((8, 9, 17), 1000.0),
    "anterior": ((8, 2, 10), 600.0),
    "superior": ((13, 9, 10), 300.0),
}


def _marker_series(folder: Path, columns: int = SHAPE[2]) -> None:
    hu = np.full((SHAPE[0], SHAPE[1], columns), -800.0, np.float32)
    hu += 10.0 * np.arange(SHAPE[1])[:, None]  # -800 .. -630 HU: contrast under the 99.9th percentile
    for (k, r, c), v in MARKERS.values():
        hu[k, r, min(c, columns - 3)] = v
    write_series(folder, hu, origin=ORIGIN)


def _where(out: np.ndarray, hu: float) -> np.ndarray:
    """Voxel index (3,) of the marker of ``hu`` (min-max of [-1000, 1000] after the HU floor)."""
    return np.array(np.unravel_index(np.argmin(np.abs(out - (hu + 1000.0) / 2000.0)), out.shape))


def _lps_to_ras(k: int, r: int, c: int) -> np.ndarray:
    return np.array([-(ORIGIN[0] + c), -(ORIGIN[1] + r), ORIGIN[2] + k])


@pytest.mark.parametrize("orientation", ["las", "ras"])
def test_markers_land_on_the_patients_side(tmp_path: Path, orientation: str) -> None:
    """las: left / anterior / superior markers at high indices of axes 0 / 1 / 2; ras: left low."""
    _marker_series(tmp_path / "p")
    out, aff, rec = preprocess_lidc_case(tmp_path / "p", size=24, cube=24, clip_percentile=100.0,
                                         orientation=orientation)
    assert rec["orientation"] == orientation and rec["offset"] == [2, 3, 4]
    assert nib.aff2axcodes(aff) == ("L" if orientation == "las" else "R", "A", "S")
    left, ant, sup = (_where(out, MARKERS[m][1]) for m in ("left", "anterior", "superior"))
    # grid of 20 x 18 x 16 voxels padded by 2, 3, 4 to 24: column 17 -> LAS 2 + 17, RAS 2 + 2
    assert left[0] == (19 if orientation == "las" else 4)
    assert ant[1] == 3 + 17 - 2 and sup[2] == 4 + 13  # row 2 is anterior: high axis-1 index
    for name, idx in (("left", left), ("anterior", ant), ("superior", sup)):
        world = (aff @ [*idx, 1])[:3]
        assert np.allclose(world, _lps_to_ras(*MARKERS[name][0])), name
    assert (aff @ [*left, 1])[0] < 0 and (aff @ [*ant, 1])[1] > 0 and (aff @ [*sup, 1])[2] > 0


@pytest.mark.parametrize("size", [24, 12])
def test_las_is_the_ras_grid_mirrored_along_axis_0(tmp_path: Path, size: int) -> None:
    _marker_series(tmp_path / "p")
    ras, ras_aff, _ = preprocess_lidc_case(tmp_path / "p", size=size, cube=24)
    las, las_aff, _ = preprocess_lidc_case(tmp_path / "p", size=size, cube=24, orientation="las")
    if size == 24:
        assert np.array_equal(las, np.flip(ras, 0))
    else:  # average-pooled: the same blocks, summed in another order
        assert np.allclose(las, np.flip(ras, 0), atol=1e-6)
    ijk = np.array([[i, j, k, 1.0] for i in (0, 3, size - 1) for j in (0, 5) for k in (1, size - 1)])
    mirrored = ijk.copy()
    mirrored[:, 0] = size - 1 - ijk[:, 0]
    assert np.allclose(las_aff @ ijk.T, ras_aff @ mirrored.T)
    assert las_aff[0, 0] < 0 < ras_aff[0, 0]


def test_las_crops_the_mirrored_array_like_upstream(tmp_path: Path) -> None:
    """21 columns into a 16 cube: upstream crops its LAS array from (21 - 16) // 2 = 2, i.e. one
    voxel off a mirrored RAS crop; the values are the RAS grid's, flipped."""
    hu = np.full((16, 18, 21), -800.0, np.float32)
    hu[:, :, ::3] = 200.0  # stripes along x so that a one-voxel shift shows
    write_series(tmp_path / "p", hu, origin=ORIGIN)
    out, aff, rec = preprocess_lidc_case(tmp_path / "p", size=16, cube=16, clip_percentile=100.0,
                                         orientation="las")
    assert rec["offset"] == [-2, -1, 0] and rec["cropped"]
    vol, vaff, _ = read_dicom_series(sorted((tmp_path / "p").glob("*.dcm")))
    full, faff = resample_isotropic(vol, vaff)  # RAS, (21, 18, 16)
    las = np.maximum(np.flip(full, 0), -1000.0)[2:18, 1:17, 0:16]  # upstream's centre crop
    assert np.allclose(out, (las - las.min()) / (las.max() - las.min()), atol=1e-5)
    assert np.allclose(aff @ [0, 0, 0, 1], faff @ [21 - 1 - 2, 1, 0, 1])


def _source(root: Path, small: int = 12) -> Path:
    """Four 20 x 18 x 16 mm cases and LIDC-IDRI-0004, only ``small`` mm along x."""
    for i in range(4):
        _marker_series(root / f"LIDC-IDRI-{i:04d}" / "st" / "se")
    _marker_series(root / "LIDC-IDRI-0004" / "st" / "se", columns=small)
    return root


def test_small_scans_drop_excludes_with_a_reason_and_pad_keeps(tmp_path: Path) -> None:
    src = _source(tmp_path / "LIDC-IDRI")
    out = prepare("lidc", tmp_path / "drop", source=src, size=8, cube=16, n_test=1,
                  small_scans="drop", progress=False)
    with open(out / "excluded.csv", newline="") as f:
        (bad,) = list(csv.DictReader(f))
    assert bad["case"] == "LIDC-IDRI-0004"
    assert bad["reason"] == (f"{src / 'LIDC-IDRI-0004'}: scan is 12x18x16 mm, smaller than 16 mm "
                             "along axis 0; small_scans: drop (as upstream)")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["preprocessing"]["small_scans"] == "drop" and meta["n_excluded"] == 1
    assert "LIDC-IDRI-0004" not in meta["cases"] and meta["padded_cases"] == []
    kept = prepare("lidc", tmp_path / "pad", source=src, size=8, cube=16, n_test=1, progress=False)
    meta = json.loads((kept / "dataset.json").read_text())
    assert meta["padded_cases"] == ["LIDC-IDRI-0004"] and meta["preprocessing"]["small_scans"] == "pad"
    with pytest.raises(InputError, match=r"LIDC-IDRI-0004: scan is 12x18x16 mm.*strict"):
        prepare("lidc", tmp_path / "strict", source=src, size=8, cube=16, n_test=1,
                small_scans="drop", strict=True, progress=False)
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("n_slices, dropped", [(10, False), (9, True)])
def test_small_scans_drop_measures_like_upstream_zoom(tmp_path: Path, n_slices: int,
                                                      dropped: bool) -> None:
    """Upstream zooms n slices of 1.6 mm to round(1.6 n) voxels: 10 -> 16 (kept, though the grid
    over the slice centres has floor(9 · 1.6) + 1 = 15 voxels: padded), 9 -> 14 (dropped)."""
    hu = np.full((n_slices, 18, 20), -800.0, np.float32)
    hu[:, 4:9, 5:15] = 100.0
    write_series(tmp_path / "p", hu, origin=ORIGIN, step=1.6)
    if dropped:
        with pytest.raises(InputError, match=r"scan is 20x18x14 mm, smaller than 16 mm along axis 2;"):
            preprocess_lidc_case(tmp_path / "p", size=16, cube=16, small_scans="drop")
    else:
        _, _, rec = preprocess_lidc_case(tmp_path / "p", size=16, cube=16, small_scans="drop")
        assert rec["resampled_shape"] == [20, 18, 15] and rec["padded"]


def test_small_scans_drop_names_every_short_axis(tmp_path: Path) -> None:
    vol = np.full((10, 20, 12), -500.0, np.float32)
    vol[5, 10, 6] = 400.0
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "LIDC-IDRI-0009.nii.gz"))
    with pytest.raises(InputError, match=r"LIDC-IDRI-0009.nii.gz: scan is 10x20x12 mm, smaller than "
                                         r"16 mm along axes 0, 2; small_scans: drop \(as upstream\)"):
        preprocess_lidc_case(tmp_path / "LIDC-IDRI-0009.nii.gz", size=16, cube=16, small_scans="drop")
    with pytest.raises(InputError, match="unknown LIDC small_scans 'skip'; allowed: pad, drop"):
        preprocess_lidc_case(tmp_path / "LIDC-IDRI-0009.nii.gz", size=16, cube=16, small_scans="skip")


def test_split_upstream_trains_on_every_case_and_copies_the_test_cases(tmp_path: Path) -> None:
    src = _source(tmp_path / "LIDC-IDRI", small=20)
    held = prepare("lidc", tmp_path / "holdout", source=src, size=8, cube=16, n_test=2, seed=1,
                   orientation="las", progress=False)
    out = prepare("lidc", tmp_path / "upstream", source=src, size=8, cube=16, n_test=2, seed=1,
                  orientation="las", split="upstream", progress=False)
    rows = verify_manifest(out)
    train = {r["case"]: r for r in rows if r["split"] == "train"}
    test = {r["case"]: r for r in rows if r["split"] == "test"}
    assert sorted(train) == [f"LIDC-IDRI-{i:04d}" for i in range(5)] and len(rows) == 7
    held_test = sorted(r["case"] for r in read_manifest(held) if r["split"] == "test")
    assert sorted(test) == held_test  # the same seeded test cases, now also trained on
    for case, r in test.items():
        assert r["sha256"] == train[case]["sha256"] == sha256_file(out / r["file"])
        assert (out / r["file"]).read_bytes() == (out / train[case]["file"]).read_bytes()
    assert [p.name for p in split_files(out, "train")] == [f"{c}.nii.gz" for c in sorted(train)]
    assert len(split_files(out, "test")) == 2
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["split"] == "upstream" and meta["test_in_train"] is True
    assert "not a held-out comparison" in meta["split_note"] and meta["n_train"] == 5
    assert meta["preprocessing"]["orientation"] == "las"
    assert all(c["orientation"] == "las" for c in meta["cases"].values())
    hmeta = json.loads((held / "dataset.json").read_text())
    assert hmeta["split"] == "holdout" and hmeta["test_in_train"] is False and hmeta["n_train"] == 3
    capped = prepare("lidc", tmp_path / "capped", source=src, size=8, cube=16, n_test=2, seed=1,
                     n_train=3, split="upstream", progress=False)
    cmeta = json.loads((capped / "dataset.json").read_text())
    assert set(cmeta["test_cases"]) < {r["case"] for r in read_manifest(capped) if r["split"] == "train"}
    assert cmeta["n_train"] == 3 and cmeta["n_unused"] == 2
    with pytest.raises(InputError, match="split upstream: n_train=1 must be null .* >= n_test=2"):
        prepare("lidc", tmp_path / "few", source=src, size=8, cube=16, n_test=2, n_train=1,
                split="upstream", progress=False)


def test_split_upstream_for_brats(tmp_path: Path) -> None:
    src = tmp_path / "BraTS"
    for i in range(3):
        write_case(src, f"BraTS-GLI-{i:05d}-000", smooth_case((10, 9, 6), i))
    out = prepare("brats", tmp_path / "b", source=src, size=8, cube=16, n_test=1, split="upstream",
                  progress=False)
    rows = verify_manifest(out)
    assert [r["split"] for r in rows] == ["train"] * 3 + ["test"]
    (t,) = (r for r in rows if r["split"] == "test")
    vol, _ = load_nifti(out / t["file"])
    assert np.array_equal(vol, load_nifti(out / "train" / Path(t["file"]).name)[0])
    assert json.loads((out / "dataset.json").read_text())["test_in_train"] is True


def test_options_refused_where_they_do_not_apply(tmp_path: Path, capsys) -> None:
    with pytest.raises(InputError, match=r"split 'upstream' applies to brats and lidc only"):
        prepare("phantom-brain", tmp_path / "p", split="upstream")
    with pytest.raises(InputError, match=r"orientation applies to lidc only \(got 'las' for brats\)"):
        prepare("brats", tmp_path / "b", source=tmp_path, orientation="las")
    with pytest.raises(InputError, match=r"small_scans applies to lidc only .*phantom-brain"):
        prepare("phantom-brain", tmp_path / "p", small_scans="drop")
    assert not (tmp_path / "p").exists()
    code = main(["prepare", "--dataset", "phantom-brain", "--out", str(tmp_path / "c"),
                 "--split", "upstream"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "split 'upstream' applies to brats and lidc" in err[0]


def test_half_millimetre_grid_for_512_configs(tmp_path: Path) -> None:
    """spacing_mm and cube (the 512^3 LIDC configuration at test scale): a 0.5 mm grid in a 32
    cube is the same 16 mm field as 1 mm in a 16 cube, recorded in dataset.json, and the CLI
    passes both through; phantom-brain refuses spacing_mm in one line."""
    src = _source(tmp_path / "LIDC-IDRI")
    out = tmp_path / "half"
    main(["prepare", "--dataset", "lidc", "--source", str(src), "--out", str(out), "--size", "16",
          "--cube", "32", "--spacing-mm", "0.5", "--n-test", "1", "--no-progress"])
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["preprocessing"]["spacing_mm"] == 0.5
    vol, affine = load_nifti(sorted((out / "train").glob("*.nii.gz"))[0])
    assert vol.shape == (16, 16, 16)
    np.testing.assert_allclose(np.abs(np.diag(affine)[:3]), 1.0)  # 0.5 mm, pooled by 2
    with pytest.raises(InputError, match="spacing_mm applies to lidc only"):
        prepare("phantom-brain", tmp_path / "p", size=16, spacing_mm=0.5, progress=False)
