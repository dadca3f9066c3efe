"""BraTS 2023 GLI preprocessing on NIfTI case folders written here in the layout BraTS ships."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wdm.data.brats import find_brats_cases, preprocess_brats_case
from wdm.data.prepare import prepare, read_manifest, split_files, verify_manifest
from wdm.io import InputError, load_nifti, sha256_file

AFFINE = np.array([[-1.0, 0, 0, 120], [0, -1.0, 0, 120], [0, 0, 1.0, -70], [0, 0, 0, 1]])


def write_case(root: Path, case: str, vol: np.ndarray | None, *, modalities=("t1n",),
               affine: np.ndarray = AFFINE) -> Path:
    """``root/case/case-<mod>.nii.gz`` for each modality (vol + 10·k for the k-th), like BraTS."""
    d = root / case
    d.mkdir(parents=True, exist_ok=True)
    for k, mod in enumerate(modalities):
        data = vol if vol is None else vol + 10 * k
        if data is None:
            continue
        nib.save(nib.Nifti1Image(np.asarray(data), affine), str(d / f"{case}-{mod}.nii.gz"))
    return d


def smooth_case(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A brain-like blob: background 0, smooth positive values inside an ellipsoid."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = sum(x ** 2 for x in g)
    return (np.where(r < 0.8, 300 + 200 * g[0] + rng.uniform(0, 50, shape), 0)).astype(np.float32)


# ------------------------------------------------------------------------------- one case
def test_one_case_by_hand(tmp_path: Path) -> None:
    vol = np.arange(32, dtype=np.float32).reshape(4, 4, 2)  # value = 8i + 2j + k
    case = write_case(tmp_path, "BraTS-GLI-00001-000", vol)
    out, aff, rec = preprocess_brats_case(case, size=4, cube=8)
    # 0.1 / 99.9 percentiles of 0..31 (linear): 0.031 and 30.969; scale = 30.938.
    assert rec["clip"] == pytest.approx([0.031, 30.969])
    assert rec["offset"] == [2, 2, 3] and rec["padded"] and not rec["cropped"]
    # pooled voxel (1,1,1) = cube[2:4, 2:4, 2:4]: cube z=2 is padding (0), z=3 is source k=0 with
    # source values 0 (clipped to 0.031 -> 0), 2, 8, 10.
    expected = ((2 - 0.031) + (8 - 0.031) + (10 - 0.031)) / 30.938 / 8
    assert out[1, 1, 1] == pytest.approx(expected, rel=1e-5)
    assert out.shape == (4, 4, 4) and out.dtype == np.float32
    assert out[0].max() == 0 and out.max() <= 1 and out.min() >= 0
    # pooled voxel (1,1,1) is centred on cube voxel 2.5 = source voxel (0.5, 0.5, -0.5)
    assert np.allclose(aff @ [1, 1, 1, 1], AFFINE @ [0.5, 0.5, -0.5, 1])
    assert rec["source_sha256"] == sha256_file(case / "BraTS-GLI-00001-000-t1n.nii.gz")


def test_full_size_240x240x155_pads_to_256(tmp_path: Path) -> None:
    vol = smooth_case((240, 240, 155), 0)
    case = write_case(tmp_path, "BraTS-GLI-00002-000", vol)
    out, aff, rec = preprocess_brats_case(case, size=256)
    assert out.shape == (256, 256, 256) and rec["offset"] == [8, 8, 50]
    assert out[:8].max() == 0 and out[:, :, :50].max() == 0 and out[:, :, 205:].max() == 0
    assert out.max() == 1.0 and out.min() == 0.0
    lo, hi = np.percentile(vol, [0.1, 99.9])
    assert np.allclose(out[8:248, 8:248, 50:205], (np.clip(vol, lo, hi) - lo) / (hi - lo), atol=1e-6)
    assert np.allclose(aff @ [8, 8, 50, 1], AFFINE @ [0, 0, 0, 1])
    out128, aff128, _ = preprocess_brats_case(case, size=128)
    assert out128.shape == (128, 128, 128)
    assert np.allclose(out128, out.reshape(128, 2, 128, 2, 128, 2).mean((1, 3, 5)), atol=1e-6)
    assert np.allclose(np.abs(np.diag(aff128)[:3]), 2.0)


# ------------------------------------------------------------------------------- bad input
def _bad(tmp_path: Path, name: str) -> Path:
    return tmp_path / name


@pytest.mark.parametrize("kind, message", [
    ("missing", "missing modality file"),
    ("truncated", "not a readable NIfTI file"),
    ("garbage", "not a readable NIfTI file"),
    ("4d", r"expected a 3D volume, got shape \(6, 6, 4, 2\)"),
    ("2d", "expected a 3D volume"),
    ("nan", "2 NaN/Inf voxels"),
    ("constant", "constant volume"),
])
def test_bad_case_names_file_and_problem(tmp_path: Path, kind: str, message: str) -> None:
    cid = f"BraTS-GLI-9{kind}"
    good = smooth_case((6, 6, 4), 1)
    d = tmp_path / cid
    d.mkdir()
    f = d / f"{cid}-t1n.nii.gz"
    if kind == "missing":
        write_case(tmp_path, cid, good, modalities=("t1c", "t2w"))
    elif kind == "truncated":
        write_case(tmp_path, cid, good)
        f.write_bytes(f.read_bytes()[:200])
    elif kind == "garbage":
        f.write_bytes(gzip.compress(b"not nifti at all" * 40))
    elif kind == "4d":
        write_case(tmp_path, cid, np.stack([good, good], -1))
    elif kind == "2d":
        write_case(tmp_path, cid, good[:, :, 0])
    elif kind == "nan":
        bad = good.copy()
        bad[1, 1, 1], bad[2, 2, 2] = np.nan, np.inf
        write_case(tmp_path, cid, bad)
    elif kind == "constant":
        write_case(tmp_path, cid, np.full((6, 6, 4), 7.0, np.float32))
    with pytest.raises(InputError, match=message) as err:
        preprocess_brats_case(d, size=4, cube=8)
    assert f"{cid}-t1n.nii.gz" in str(err.value)


# ------------------------------------------------------------------------------- data set
@pytest.fixture()
def source(tmp_path: Path) -> Path:
    """Six good cases (t1n + t2f) and three bad ones."""
    src = tmp_path / "BraTS2023-GLI"
    for i in range(6):
        write_case(src, f"BraTS-GLI-{i:05d}-000", smooth_case((10, 9, 6), i), modalities=("t1n", "t2f"))
    write_case(src, "BraTS-GLI-00100-000", smooth_case((10, 9, 6), 9), modalities=("t2f",))  # no t1n
    write_case(src, "BraTS-GLI-00101-000", np.full((10, 9, 6), 3.0, np.float32))  # constant
    d = write_case(src, "BraTS-GLI-00102-000", smooth_case((10, 9, 6), 8))
    f = d / "BraTS-GLI-00102-000-t1n.nii.gz"
    f.write_bytes(f.read_bytes()[:150])  # truncated
    (src / "README.txt").write_text("not a case")
    return src


def test_prepare_brats_folder_split_manifest_and_exclusions(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "data" / "brats" / "8"
    prepare("brats", out, source=source, size=8, cube=16, n_test=2, seed=3, threads=2,
            progress=False)
    rows = verify_manifest(out)
    assert [r["split"] for r in rows] == ["train"] * 4 + ["test"] * 2
    assert {r["case"] for r in rows} == {f"BraTS-GLI-{i:05d}-000" for i in range(6)}
    for r in rows:
        assert r["source"] == f"{r['case']}/{r['case']}-t1n.nii.gz"
        assert r["source_sha256"] == sha256_file(source / r["source"])
        vol, aff = load_nifti(out / r["file"])
        assert vol.shape == (8, 8, 8) and 0 <= vol.min() and vol.max() <= 1 and r["shape"] == "8x8x8"
    with open(out / "excluded.csv", newline="") as f:
        excluded = {r["case"]: r["reason"] for r in csv.DictReader(f)}
    assert set(excluded) == {"BraTS-GLI-00100-000", "BraTS-GLI-00101-000", "BraTS-GLI-00102-000"}
    assert "missing modality file" in excluded["BraTS-GLI-00100-000"]
    assert "constant volume" in excluded["BraTS-GLI-00101-000"]
    assert "BraTS-GLI-00102-000-t1n.nii.gz: not a readable NIfTI" in excluded["BraTS-GLI-00102-000"]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["n_found"] == 9 and meta["n_excluded"] == 3 and meta["seed"] == 3
    assert meta["test_cases"] == sorted(r["case"] for r in rows if r["split"] == "test")
    assert len(meta["padded_cases"]) == 6 and meta["preprocessing"]["modality"] == "t1n"
    assert split_files(out, "test") == [out / r["file"] for r in rows[4:]]
    assert [p.name for p in out.parent.iterdir()] == ["8"]  # no temporary sibling left

    # The split is seeded: same seed -> same test set; excluding a case never moves another.
    again = prepare("brats", tmp_path / "again", source=source, size=8, cube=16, n_test=2, seed=3,
                    progress=False)
    assert read_manifest(again) == rows
    import shutil
    train_only = [r["case"] for r in rows if r["split"] == "train"][0]
    shutil.rmtree(source / train_only)
    fewer = prepare("brats", tmp_path / "fewer", source=source, size=8, cube=16, n_test=2, seed=3,
                    progress=False)
    assert [r["case"] for r in read_manifest(fewer) if r["split"] == "test"] == meta["test_cases"]


def test_modality_selection(tmp_path: Path, source: Path) -> None:
    out = prepare("brats", tmp_path / "t2f", source=source, size=8, cube=16, n_test=1,
                  modality="t2f", progress=False)
    rows = read_manifest(out)
    assert all(r["source"].endswith("-t2f.nii.gz") for r in rows)
    assert "BraTS-GLI-00100-000" in {r["case"] for r in rows}  # has t2f, lacks only t1n
    with pytest.raises(InputError, match="unknown BraTS modality 'flair'; allowed: t1n, t1c, t2w, t2f"):
        prepare("brats", tmp_path / "x", source=source, size=8, cube=16, modality="flair")


def test_strict_turns_exclusion_into_error_and_leaves_nothing(tmp_path: Path, source: Path) -> None:
    out = tmp_path / "strict"
    with pytest.raises(InputError, match="strict") as err:
        prepare("brats", out, source=source, size=8, cube=16, n_test=2, strict=True, threads=1,
                progress=False)
    assert "BraTS-GLI-001" in str(err.value)
    assert list(tmp_path.iterdir()) == [source]  # neither out nor a temporary sibling


def test_source_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="needs source"):
        prepare("brats", tmp_path / "x", size=4)
    with pytest.raises(InputError, match="BraTS source folder not found"):
        prepare("brats", tmp_path / "x", source=tmp_path / "nope", size=128)
    with pytest.raises(InputError, match="no BraTS case folders"):
        find_brats_cases(tmp_path)
    write_case(tmp_path / "s", "BraTS-GLI-00000-000", smooth_case((6, 6, 4), 0))
    with pytest.raises(InputError, match="size must divide the cube side 256"):
        prepare("brats", tmp_path / "x", source=tmp_path / "s", size=100)
    with pytest.raises(InputError, match="1 case.*n_test=20 needs at least 21"):
        prepare("brats", tmp_path / "x", source=tmp_path / "s", size=128)


def test_cli_prepare_brats_threads_modality_strict(tmp_path: Path, source: Path, capsys) -> None:
    from wdm.cli import main

    out = tmp_path / "cli16"
    args = ["prepare", "--dataset", "brats", "--source", str(source), "--out", str(out),
            "--size", "16", "--n-test", "2", "--threads", "2", "--no-progress"]
    assert main(args + ["--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("wdm-bench prepare: error: ") and "strict" in err and "BraTS-GLI-001" in err
    assert not out.exists()
    assert main(args + ["--modality", "t2f"]) == 0
    rows = read_manifest(out)
    assert len(rows) == 7 and all(r["shape"] == "16x16x16" for r in rows)
    assert json.loads((out / "dataset.json").read_text())["preprocessing"]["modality"] == "t2f"


# ------------------------------------------------------------------------------- workflow
def test_paper_config_dry_run_over_three_cases(tmp_path: Path) -> None:
    """`snakemake -n --configfile config/paper/brats_128.yaml` resolves the DAG over 3 cases."""
    import os
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "snakemake"
    if not exe.exists() and shutil.which("snakemake") is None:
        pytest.skip("snakemake not installed")
    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "BraTS2023"
    for i in range(3):
        write_case(src, f"BraTS-GLI-{i:05d}-000", smooth_case((12, 12, 8), i))
    work = tmp_path / "work"
    work.mkdir()
    (work / "config").symlink_to(repo / "config")  # the config's model_configs are repo-relative

    def dry(source: Path) -> subprocess.CompletedProcess:
        cmd = [str(exe) if exe.exists() else "snakemake", "-s", str(repo / "workflow" / "Snakefile"),
               "-n", "-p", "--configfile", "config/paper/brats_128.yaml", "--config",
               f'datasets={{"brats": {{"source": "{source}"}}}}', "--", "results/table1.csv"]
        env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)

    res = dry(src)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rule in ("prepare_data", "train", "sample", "evaluate", "table1"):
        assert f"rule {rule}:" in out
    assert f"--dataset brats --out data/brats/128 --source {src}" in out
    assert "--modality t1n" in out and "--size 128" in out
    assert "config/paper/models/wdm_128.yaml" in out
    missing = dry(tmp_path / "nowhere")
    assert missing.returncode != 0 and "nowhere" in missing.stdout + missing.stderr
