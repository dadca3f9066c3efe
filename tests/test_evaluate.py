"""Tests for eval.evaluate on tiny NIfTI folders (16³, untrained ResNet-10: no network, fast)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from eval.evaluate import PROTOCOLS, evaluate, write_metrics
from eval.features import medicalnet_resnet
from wdm.io import InputError, save_nifti, sha256_file

SIDE = 16


def _folder(path, n, seed, shape=(SIDE, SIDE, SIDE), scale=1.0):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_nifti(path / f"vol_{i:03d}.nii.gz", (rng.random(shape) * scale).astype(np.float32))
    return path


@pytest.fixture(autouse=True)
def _isolated_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("WDM_MEDICALNET_DIR", raising=False)


@pytest.fixture
def dirs(tmp_path):
    return _folder(tmp_path / "real", 4, 0), _folder(tmp_path / "fake", 4, 1, scale=0.8)


def test_evaluate_untrained_returns_finite_numbers(dirs, caplog):
    real, fake = dirs
    res = evaluate(real, fake, weights="auto", depth=10, batch_size=3)
    assert math.isfinite(res["fid"]) and res["fid"] > 0
    assert 0 < res["ms_ssim"] < 1 and math.isfinite(res["ms_ssim_std"])
    assert res["feature_extractor"] == "untrained-resnet10-seed0 (NOT MedicalNet)"
    assert "NOT a MedicalNet FID" in caplog.text
    assert res["weights_sha256"] is None and res["feature_dim"] == 512
    assert res["ms_ssim_pairs"] == 6 and res["ms_ssim_scales"] == 2 and res["ms_ssim_kernel"] == 7
    assert (res["n_real"], res["n_fake"], res["shape"]) == (4, 4, [SIDE] * 3)
    assert res["protocol"] == "wdm" and res["input_range"] == [0.0, 1.0] and res["code_version"]
    assert evaluate(real, fake, weights="none", depth=10)["fid"] == pytest.approx(res["fid"])


def test_same_folder_gives_zero_fid(dirs):
    real, _ = dirs
    assert abs(evaluate(real, real, weights="none", depth=10)["fid"]) < 1e-6


def test_hagan_protocol_changes_input_range(dirs):
    real, fake = dirs
    a = evaluate(real, fake, weights="none", depth=10, protocol="wdm")
    b = evaluate(real, fake, weights="none", depth=10, protocol="hagan")
    assert b["input_range"] == [-1.0, 1.0] and a["fid"] != b["fid"]
    assert a["ms_ssim"] == b["ms_ssim"]  # MS-SSIM is on the [0, 1] volumes either way
    assert set(PROTOCOLS) == {"wdm", "hagan"}


def test_checkpoint_file_is_used_and_hashed(dirs, tmp_path):
    real, fake = dirs
    sd = {"module." + k: v for k, v in medicalnet_resnet(10, seed=5).state_dict().items()}
    ckpt = tmp_path / "my_resnet10.pth"
    torch.save({"state_dict": sd}, ckpt)
    res = evaluate(real, fake, weights=str(ckpt), depth=10)
    assert res["weights_sha256"] == sha256_file(ckpt)
    assert res["feature_extractor"] == "resnet10-file:my_resnet10"
    assert res["fid"] != evaluate(real, fake, weights="none", depth=10)["fid"]


def test_manifest_checkpoint_with_wrong_hash_is_refused(dirs, tmp_path, monkeypatch):
    real, fake = dirs
    wdir = tmp_path / "weights"
    wdir.mkdir()
    sd = {"module." + k: v for k, v in medicalnet_resnet(10).state_dict().items()}
    torch.save({"state_dict": sd}, wdir / "resnet_10_23dataset.pth")
    monkeypatch.setenv("WDM_MEDICALNET_DIR", str(wdir))
    with pytest.raises(InputError, match="resnet_10_23dataset.pth: SHA-256 mismatch"):
        evaluate(real, fake, weights="auto:resnet_10_23dataset", depth=10)
    with pytest.raises(InputError, match="resnet10, but depth=50"):
        evaluate(real, fake, weights="auto:resnet_10_23dataset", depth=50)


def test_out_of_range_volume_is_an_error(dirs):
    real, fake = dirs
    bad = np.full((SIDE,) * 3, 0.5, np.float32)
    bad[0, 0, 0] = 1.5
    save_nifti(fake / "vol_002.nii.gz", bad)
    with pytest.raises(InputError, match=r"vol_002\.nii\.gz: values in \[0\.5, 1\.5\], expected"):
        evaluate(real, fake, weights="none", depth=10)
    save_nifti(real / "vol_001.nii.gz", bad * 2 - 1.5)  # [-1, 1]-scaled input, a common slip
    with pytest.raises(InputError, match=r"real/vol_001\.nii\.gz: values in"):
        evaluate(real, real, weights="none", depth=10)


def test_shape_mismatch_names_the_file(dirs):
    real, fake = dirs
    save_nifti(real / "vol_003.nii.gz", np.zeros((SIDE, SIDE, SIDE + 2), np.float32))
    with pytest.raises(InputError, match=r"vol_003\.nii\.gz: shape \(16, 16, 18\) differs"):
        evaluate(real, fake, weights="none", depth=10)


def test_counts_protocol_and_size_errors(dirs, tmp_path):
    real, fake = dirs
    with pytest.raises(InputError, match="fewer than n_fake=5"):
        evaluate(real, fake, weights="none", depth=10, n_fake=5)
    res = evaluate(real, fake, weights="none", depth=10, n_real=3, n_fake=3)
    assert (res["n_real"], res["n_fake"], res["ms_ssim_pairs"]) == (3, 3, 3)
    with pytest.raises(InputError, match=r"unknown protocol 'x'; allowed: \['hagan', 'wdm'\]"):
        evaluate(real, fake, protocol="x")
    tiny_r = _folder(tmp_path / "tr", 2, 0, (6, 8, 8))
    tiny_f = _folder(tmp_path / "tf", 2, 1, (6, 8, 8))
    with pytest.raises(InputError, match="smaller than the MS-SSIM kernel 7"):
        evaluate(tiny_r, tiny_f, weights="none", depth=10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI volumes"):
        evaluate(real, tmp_path / "empty", weights="none", depth=10)


def test_write_metrics_atomic_json(dirs, tmp_path):
    real, fake = dirs
    res = evaluate(real, fake, weights="none", depth=10, max_pairs=2)
    assert res["ms_ssim_pairs"] == 2
    out = tmp_path / "results" / "metrics.json"
    write_metrics(out, res, {"weights": "none", "depth": 10})
    data = json.loads(out.read_text())
    assert data["fid"] == pytest.approx(res["fid"]) and data["config"] == {"weights": "none",
                                                                          "depth": 10}
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]
