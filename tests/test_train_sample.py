"""Training and sampling loops: checkpoints, exact resume, logs, reproducible resumable sampling."""

from __future__ import annotations

import copy
import csv
import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY_RUN
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.io import InputError, load_nifti
from wdm.sample import sample, sample_path
from wdm.train import batch_indices, train


def test_batch_indices_cover_each_epoch_once():
    seen = []
    for step in range(5):  # 5 steps x batch 2 = 10 items = 2 epochs of 5
        seen.extend(batch_indices(5, 2, step, seed=3))
    assert sorted(seen[:5]) == list(range(5)) and sorted(seen[5:]) == list(range(5))
    assert batch_indices(5, 2, 1, seed=3) == batch_indices(5, 2, 1, seed=3)
    assert seen != [i for s in range(5) for i in batch_indices(5, 2, s, seed=4)]


def test_train_writes_run_folder(phantom16, tiny_config, tmp_path):
    run = tmp_path / "run"
    prof = train(tiny_config, phantom16, run, progress=False)
    assert prof["steps_trained"] == 6 and prof["finished"]
    assert prof["s_per_iteration"] > 0 and prof["peak_memory_gb"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_0000003.pt", "step_0000006.pt"]
    ckpt = load_checkpoint(latest_checkpoint(run))
    assert ckpt["step"] == 6 and ckpt["config"]["network"] == {"preset": "tiny"}
    assert ckpt["data"]["shape"] == [16, 16, 16]
    with open(run / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    saved = json.loads((run / "train_profile.json").read_text())
    assert saved["steps_trained"] == 6
    assert (run / "config.yaml").read_text().count("preset: tiny") == 1
    assert not list(run.rglob(".*tmp*")), "temporary files left behind"


def test_resume_is_bit_identical(phantom16, tiny_config, tmp_path):
    full = tmp_path / "full"
    train(tiny_config, phantom16, full, progress=False)
    part = tmp_path / "part"
    train(tiny_config, phantom16, part, progress=False, max_steps=3)  # "killed" after step 3
    assert not (part / "train_profile.json").exists()
    train(tiny_config, phantom16, part, resume=True, progress=False)
    a = load_checkpoint(latest_checkpoint(full))["model"]["network"]
    b = load_checkpoint(latest_checkpoint(part))["model"]["network"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(part / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_existing_run_needs_resume_and_another_config_is_moved_aside(phantom16, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config, phantom16, run, progress=False, max_steps=3)
    with pytest.raises(InputError, match="--resume"):
        train(tiny_config, phantom16, run, progress=False)
    other = copy.deepcopy(TINY_RUN)
    other["network"] = {"preset": "tiny", "base_channels": 8}
    prof = train(other, phantom16, run, resume=True, progress=False)
    assert prof["steps_trained"] == TINY_RUN["training"]["steps"]  # a fresh run, from step 0
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and [c.name for c in sorted((aside[0] / "checkpoints").glob("*.pt"))] == [
        "step_0000003.pt"]
    with open(run / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]


def test_sample_reproducible_and_resumable(phantom16, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config, phantom16, run, progress=False)
    out = tmp_path / "s1"
    prof = sample(run, 3, 11, out, progress=False)
    files = sorted(out.glob("sample_*.nii.gz"))
    assert [f.name for f in files] == ["sample_0000.nii.gz", "sample_0001.nii.gz", "sample_0002.nii.gz"]
    vol, affine = load_nifti(files[0])
    _, real_affine = load_nifti(sorted((phantom16 / "train").glob("*.nii.gz"))[0])
    assert vol.shape == (16, 16, 16) and vol.min() >= 0 and vol.max() <= 1
    np.testing.assert_allclose(affine, real_affine)
    assert prof["s_per_volume"] > 0 and prof["sampler"] == "ddim" and prof["sampler_steps"] == 4
    assert json.loads((out / "sample_profile.json").read_text())["n"] == 3
    # Same seed -> same volumes; another seed -> different ones.
    out2 = tmp_path / "s2"
    sample(run, 3, 11, out2, progress=False)
    assert np.array_equal(load_nifti(out2 / "sample_0002.nii.gz")[0], load_nifti(files[2])[0])
    sample(run, 1, 12, tmp_path / "s3", progress=False)
    assert not np.array_equal(load_nifti(tmp_path / "s3" / "sample_0000.nii.gz")[0], vol)
    # An interrupted job: only the missing volume is written again, identical to before.
    before = {f.name: f.stat().st_mtime_ns for f in files}
    expected = load_nifti(files[2])[0]
    files[2].unlink()
    sample(run, 3, 11, out, progress=False)
    assert sample_path(out, 0).stat().st_mtime_ns == before["sample_0000.nii.gz"]
    assert np.array_equal(load_nifti(sample_path(out, 2))[0], expected)


def test_sample_ddpm_and_errors(phantom16, tiny_config, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(InputError, match="no checkpoint"):
        sample(run, 2, 0, tmp_path / "x", progress=False)
    train(tiny_config, phantom16, run, progress=False)
    prof = sample(run, 2, 0, tmp_path / "ddpm", sampler="ddpm", steps=5, progress=False)
    assert prof["sampler"] == "ddpm" and prof["sampler_steps"] == 5
    with pytest.raises(InputError, match="at least 1"):
        sample(run, 0, 0, tmp_path / "y", progress=False)
