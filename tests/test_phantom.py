"""The embedded ``phantom-brain`` data set at 16³ (fast): content, determinism, manifest, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wdm.data import phantom, phantom_dataset
from wdm.data.phantom import load_mni_templates, make_phantom
from wdm.data.phantom_dataset import make_phantom_dataset
from wdm.data.prepare import DATASETS, prepare, read_manifest, split_files, verify_manifest
from wdm.io import InputError, load_nifti, sha256_file

SIZE = 16
N_TRAIN, N_TEST = 4, 2


def _hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "data"
    return prepare("phantom-brain", out, size=SIZE, n_train=N_TRAIN, n_test=N_TEST, seed=0)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------- one volume
def test_templates_cached_and_read_only() -> None:
    a, b = load_mni_templates(SIZE), load_mni_templates(SIZE)
    assert a["t1"] is b["t1"] and a["grid"] == 2 * SIZE
    assert a["t1"].shape == (2 * SIZE,) * 3 and a["t1"].dtype == np.float32
    assert not a["t1"].flags.writeable
    assert set(a) >= {"t1", "gm", "wm", "mask", "extent_mm", "spacing_mm"}


@pytest.mark.parametrize("lesion_prob", [0.0, 1.0])
def test_make_phantom_is_a_brain(lesion_prob: float) -> None:
    for i in range(3):
        v = make_phantom(np.random.default_rng(i), SIZE, lesion_prob=lesion_prob)
        assert v.shape == (SIZE,) * 3 and v.dtype == np.float32
        assert v.min() >= 0.0 and v.max() <= 1.0 and v.max() > 0.9
        assert v.std() > 0.1
        c = SIZE // 2
        centre = v[c - 2:c + 2, c - 2:c + 2, c - 2:c + 2].mean()
        corners = np.concatenate([v[sx, sy, sz].ravel() for sx in (slice(0, 2), slice(-2, None))
                                  for sy in (slice(0, 2), slice(-2, None))
                                  for sz in (slice(0, 2), slice(-2, None))])
        assert centre > 0.3 and corners.max() < 0.02
        assert (v < 0.01).mean() > 0.3  # plenty of background around the brain


def test_make_phantom_same_rng_same_volume() -> None:
    a = make_phantom(np.random.default_rng(7), SIZE)
    b = make_phantom(np.random.default_rng(7), SIZE)
    c = make_phantom(np.random.default_rng(8), SIZE)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


# ------------------------------------------------------------------------------- the data set
def test_layout_manifest_and_metadata(data_dir: Path) -> None:
    rows = read_manifest(data_dir)
    assert [r["split"] for r in rows] == ["train"] * N_TRAIN + ["test"] * N_TEST
    assert [r["file"] for r in rows] == (
        [f"train/phantom-brain_{i:04d}.nii.gz" for i in range(N_TRAIN)]
        + [f"test/phantom-brain_{i:04d}.nii.gz" for i in range(N_TRAIN, N_TRAIN + N_TEST)])
    header = (data_dir / "manifest.csv").read_text().splitlines()[0]
    assert header == "file,split,shape,sha256"
    for r in rows:
        assert r["shape"] == f"{SIZE}x{SIZE}x{SIZE}"
        assert r["sha256"] == sha256_file(data_dir / r["file"])
    assert verify_manifest(data_dir) == rows
    assert len(split_files(data_dir, "train")) == N_TRAIN
    assert split_files(data_dir, "test") == [data_dir / r["file"] for r in rows[N_TRAIN:]]

    meta = json.loads((data_dir / "dataset.json").read_text())
    assert meta["name"] == "phantom-brain" and meta["size"] == SIZE and meta["seed"] == 0
    assert (meta["n_train"], meta["n_test"]) == (N_TRAIN, N_TEST)
    assert set(meta["template_source"]["files"]) == set(phantom.TEMPLATE_FILES.values())
    assert meta["code_version"]

    vol, affine = load_nifti(data_dir / rows[0]["file"])
    assert vol.shape == (SIZE,) * 3 and vol.dtype == np.float32
    assert 0.0 <= vol.min() and vol.max() <= 1.0
    spacing = meta["voxel_spacing_mm"][0]
    assert np.allclose(np.diag(affine)[:3], spacing)
    assert np.allclose(affine[:3, :3] @ np.full(3, (SIZE - 1) / 2) + affine[:3, 3], 0.0)
    assert not _leftovers(data_dir.parent)


def test_same_seed_byte_identical_other_seed_differs(data_dir: Path, tmp_path: Path) -> None:
    again = make_phantom_dataset(tmp_path / "again", size=SIZE, n_train=N_TRAIN, n_test=N_TEST,
                                 seed=0)
    assert _hashes(again) == _hashes(data_dir)
    assert (again / "manifest.csv").read_bytes() == (data_dir / "manifest.csv").read_bytes()
    other = make_phantom_dataset(tmp_path / "other", size=SIZE, n_train=N_TRAIN, n_test=N_TEST,
                                 seed=1)
    assert not set(_hashes(other).values()) & set(_hashes(data_dir).values())


def test_volume_does_not_depend_on_the_split_sizes(data_dir: Path, tmp_path: Path) -> None:
    """Volume i comes from its own spawned seed, whatever the total number of volumes."""
    small = make_phantom_dataset(tmp_path / "small", size=SIZE, n_train=2, n_test=0, seed=0)
    full = _hashes(data_dir)
    for name, digest in _hashes(small).items():
        assert full[name] == digest


def test_verify_manifest_catches_modified_and_missing_files(data_dir: Path,
                                                            tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    victim = copy / read_manifest(copy)[1]["file"]
    victim.write_bytes(victim.read_bytes() + b"\0")
    with pytest.raises(InputError, match="phantom-brain_0001.nii.gz"):
        verify_manifest(copy)
    victim.unlink()
    with pytest.raises(InputError, match="phantom-brain_0001.nii.gz.*missing"):
        verify_manifest(copy)


def test_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no manifest.csv"):
        read_manifest(tmp_path)
    with pytest.raises(InputError, match="no manifest.csv"):
        split_files(tmp_path, "train")
    (tmp_path / "manifest.csv").write_text("file,split\na.nii.gz,train\n")
    with pytest.raises(InputError, match="expected columns"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("file,split,shape,sha256\na.nii.gz,train,2x2x2,00\n")
    assert split_files(tmp_path, "train") == [tmp_path / "a.nii.gz"]
    with pytest.raises(InputError, match="split 'test' is empty"):
        split_files(tmp_path, "test")


# ------------------------------------------------------------------------------- errors
def test_unknown_dataset_bad_size_and_source(tmp_path: Path) -> None:
    assert DATASETS == ("phantom-brain", "brats", "lidc")
    with pytest.raises(InputError, match="allowed: phantom-brain, brats, lidc"):
        prepare("nope", tmp_path / "x")
    with pytest.raises(InputError, match=r"\[16, 32, 64, 128, 256, 512\]"):
        prepare("phantom-brain", tmp_path / "x", size=48)
    with pytest.raises(InputError, match="no source"):
        prepare("phantom-brain", tmp_path / "x", source=tmp_path)
    with pytest.raises(InputError, match="n_train"):
        make_phantom_dataset(tmp_path / "x", size=SIZE, n_train=0)
    with pytest.raises(InputError, match="lesion_prob"):
        make_phantom_dataset(tmp_path / "x", size=SIZE, lesion_prob=1.5)
    assert not any(tmp_path.iterdir())


def test_missing_nilearn_names_the_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(phantom.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install 'nilearn<0\.14'"):
        phantom._template_dir()


def test_existing_output_refused_then_overwritten(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(InputError, match="not empty"):
        prepare("phantom-brain", out, size=SIZE, n_train=2, n_test=1)
    assert (out / "keep.txt").read_text() == "old"
    prepare("phantom-brain", out, size=SIZE, n_train=2, n_test=1, overwrite=True)
    assert not (out / "keep.txt").exists()
    verify_manifest(out)
    assert _leftovers(tmp_path) == []


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = phantom_dataset.save_nifti
    calls = {"n": 0}

    def flaky_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full (simulated)")
        real_save(*args, **kwargs)

    monkeypatch.setattr(phantom_dataset, "save_nifti", flaky_save)
    with pytest.raises(OSError, match="simulated"):
        make_phantom_dataset(tmp_path / "data", size=SIZE, n_train=3, n_test=1)
    assert list(tmp_path.iterdir()) == []

    # A failed overwrite keeps the old data set intact.
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    calls["n"] = 0
    with pytest.raises(OSError, match="simulated"):
        make_phantom_dataset(old, size=SIZE, n_train=3, n_test=1, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
    assert [p.name for p in old.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_phantom_at_256_for_the_multi_level_wavelets() -> None:
    """256³ (and 512³, 72 s and 7.6 GB here, not run) are allowed: the templates stay on their
    128³ working grid and are interpolated up, so the volume is smooth, in [0, 1], reproducible."""
    a = make_phantom(np.random.default_rng(5), 256)
    assert a.shape == (256, 256, 256) and a.dtype == np.float32
    assert 0.0 <= float(a.min()) and float(a.max()) == pytest.approx(1.0)
    assert 0.05 < float((a > 0.1).mean()) < 0.6  # a brain, not an empty or full cube
    np.testing.assert_array_equal(a[::37, ::37, ::37],
                                  make_phantom(np.random.default_rng(5), 256)[::37, ::37, ::37])
