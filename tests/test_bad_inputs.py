"""A corpus of bad inputs: each gives exit code 1, one line naming the file and the problem,
and leaves no partial output."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import TINY_RUN
from wdm.cli import main
from wdm.data.prepare import split_files
from wdm.io import save_nifti
from wdm.train import train


def _run(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, f"exit code {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith(f"wdm-bench {argv[0]}: error: "), err
    return err[0]


def _nifti(path: Path, arr: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(path))


def _write_raw(content: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(content)


def _truncated(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


def _gz_not_nifti(p: Path) -> None:
    with gzip.open(p, "wb") as f:
        f.write(b"this is a text file, not a NIfTI volume" * 20)


def _arr(a: np.ndarray) -> Callable[[Path], None]:
    return lambda p: _nifti(p, a)


def _nan(p: Path) -> None:
    a = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    a[3, 4, 5] = np.nan
    _nifti(p, a)


def _inf(p: Path) -> None:
    a = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
    a[0, 0, 0] = np.inf
    _nifti(p, a)


# (id, corruption of the FIRST training volume, words the message must contain)
VOLUME_CASES = [
    ("truncated", _truncated, "not a readable NIfTI"),
    ("not-nifti", _gz_not_nifti, "not a readable NIfTI"),
    ("empty-file", _write_raw(b""), "not a readable NIfTI"),
    ("2d", _arr(np.random.default_rng(0).random((16, 16)).astype(np.float32)), "3D"),
    ("4d", _arr(np.random.default_rng(0).random((16, 16, 16, 2)).astype(np.float32)), "3D"),
    ("nan", _nan, "NaN"),
    ("inf", _inf, "NaN/Inf"),
    ("constant", _arr(np.full((16, 16, 16), 0.5, np.float32)), "constant"),
    ("int16", _arr(np.random.default_rng(0).integers(0, 2, (16, 16, 16)).astype(np.int16)), "float"),
    ("uint8-bool", _arr((np.random.default_rng(0).random((16, 16, 16)) > 0.5).astype(np.uint8)),
     "float"),
    ("out-of-range", _arr(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32) * 3),
     "[0, 1]"),
    ("other-shape", _arr(np.random.default_rng(0).random((16, 16, 14)).astype(np.float32)), "shape"),
]


@pytest.fixture()
def data_copy(phantom16, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(phantom16, dst)
    return dst


@pytest.mark.parametrize("case, corrupt, needle", VOLUME_CASES, ids=[c[0] for c in VOLUME_CASES])
def test_bad_training_volume(case, corrupt, needle, data_copy, tiny_config, tmp_path, capsys):
    # "other-shape" must not be the first file (the first one defines the data set's shape).
    victim = split_files(data_copy, "train")[1 if case == "other-shape" else 0]
    corrupt(victim)
    out = tmp_path / "run"
    msg = _run(capsys, ["train", "--config", str(tiny_config), "--data", str(data_copy),
                        "--out", str(out)])
    assert victim.name in msg and needle in msg, msg
    assert not out.exists()


def _uniform_data(tmp_path: Path, shape: tuple[int, int, int]) -> Path:
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    rows = ["file,split,shape,sha256"]
    for i in range(3):
        f = data / "train" / f"v{i}.nii.gz"
        save_nifti(f, np.random.default_rng(i).random(shape).astype(np.float32))
        rows.append(f"train/v{i}.nii.gz,train,{'x'.join(map(str, shape))},0")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    return data


@pytest.mark.parametrize("shape, needle", [((15, 15, 15), "even"), ((2, 2, 2), "divisible")],
                         ids=["odd", "tiny"])
def test_bad_shapes(shape, needle, tmp_path, tiny_config, capsys):
    data = _uniform_data(tmp_path, shape)
    out = tmp_path / "run"
    msg = _run(capsys, ["train", "--config", str(tiny_config), "--data", str(data), "--out", str(out)])
    assert "v0.nii.gz" in msg and needle in msg, msg
    assert not out.exists()


def test_empty_data_folder(tmp_path, tiny_config, capsys):
    (tmp_path / "empty").mkdir()
    msg = _run(capsys, ["train", "--config", str(tiny_config), "--data", str(tmp_path / "empty"),
                        "--out", str(tmp_path / "run")])
    assert "empty" in msg and "manifest" in msg
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("raw, needle", [
    ({"trainig": {"steps": 3}}, "'trainig' was unexpected"),
    ({"training": {"steps": "many"}}, "training.steps"),
], ids=["unknown-key", "wrong-type"])
def test_bad_config(raw, needle, phantom16, tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    msg = _run(capsys, ["train", "--config", str(cfg), "--data", str(phantom16),
                        "--out", str(tmp_path / "run")])
    assert "bad.yaml" in msg and needle in msg
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def _trained_once(phantom16, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    train(TINY_RUN, phantom16, run, progress=False)
    return run


@pytest.fixture()
def trained_run(_trained_once, tmp_path) -> Path:
    """A private copy of one trained tiny run (the tests damage it)."""
    return Path(shutil.copytree(_trained_once, tmp_path / "trained"))


def test_corrupt_checkpoint(trained_run, tmp_path, capsys):
    ckpt = sorted((trained_run / "checkpoints").glob("step_*.pt"))[-1]
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    msg = _run(capsys, ["sample", "--run", str(trained_run), "--n", "1", "--seed", "0",
                        "--out", str(tmp_path / "s")])
    assert ckpt.name in msg and "not a readable checkpoint" in msg
    assert not (tmp_path / "s").exists()


def test_checkpoint_of_another_configuration(trained_run, phantom16, tmp_path, capsys):
    other = dict(TINY_RUN, network={"preset": "tiny", "base_channels": 8})
    cfg = tmp_path / "other.yaml"
    cfg.write_text(yaml.safe_dump(other))
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    msg = _run(capsys, ["train", "--config", str(cfg), "--data", str(phantom16),
                        "--out", str(trained_run), "--resume"])
    assert "step_" in msg and "network" in msg
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before


def test_foreign_checkpoint_file_is_not_a_wdm_checkpoint(trained_run, tmp_path, capsys):
    ckpt = sorted((trained_run / "checkpoints").glob("step_*.pt"))[-1]
    torch.save({"state_dict": {}}, ckpt)
    msg = _run(capsys, ["sample", "--run", str(trained_run), "--n", "1", "--seed", "0",
                        "--out", str(tmp_path / "s")])
    assert ckpt.name in msg and "not a wdm-bench checkpoint" in msg


def _eval_argv(phantom16: Path, out: Path, *extra: str) -> list[str]:
    return ["evaluate", "--real", str(phantom16 / "train"), "--fake", str(phantom16 / "test"),
            "--out", str(out), "--depth", "10", *extra]


def test_medicalnet_wrong_hash(phantom16, tmp_path, capsys):
    w = tmp_path / "resnet_10_23dataset.pth"  # a released name: its manifest hash is checked
    torch.save({"state_dict": {}}, w)
    msg = _run(capsys, _eval_argv(phantom16, tmp_path / "m.json", "--weights", str(w)))
    assert "resnet_10_23dataset.pth" in msg and "SHA-256" in msg
    assert not (tmp_path / "m.json").exists()


def test_medicalnet_wrong_keys(phantom16, tmp_path, capsys):
    from eval.features import medicalnet_resnet

    sd = {f"module.{k.replace('conv1', 'convA')}": v for k, v in medicalnet_resnet(10).state_dict().items()}
    w = tmp_path / "my_resnet10.pth"
    torch.save({"state_dict": sd}, w)
    msg = _run(capsys, _eval_argv(phantom16, tmp_path / "m.json", "--weights", str(w)))
    assert "my_resnet10.pth" in msg and "convA" in msg
    assert not (tmp_path / "m.json").exists()


def test_fewer_samples_than_asked(phantom16, tmp_path, capsys):
    msg = _run(capsys, _eval_argv(phantom16, tmp_path / "m.json", "--weights", "none",
                                  "--n-fake", "10"))
    assert str(phantom16 / "test") in msg and "fewer" in msg
    assert not (tmp_path / "m.json").exists()


def _make_read_only(folder: Path) -> Callable[[], None]:
    """Make ``folder`` unwritable, even for root (immutable flag); return the undo function."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)],
                                                        capture_output=True).returncode != 0:
        pytest.skip("running as root without a working chattr: cannot make a folder read-only")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_read_only_output_folder(phantom16, tiny_config, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    undo = _make_read_only(ro)
    try:
        msg = _run(capsys, ["train", "--config", str(tiny_config), "--data", str(phantom16),
                            "--out", str(ro / "run")])
        assert str(ro / "run") in msg and ("ermission" in msg or "not permitted" in msg), msg
        assert not (ro / "run").exists()
    finally:
        undo()
