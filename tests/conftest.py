"""Shared fixtures: a tiny phantom data set and a tiny WDM run config (16^3 volumes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

TINY_RUN = {
    "model": "wdm",
    "network": {"preset": "tiny"},
    "diffusion": {"timesteps": 100},
    "training": {"steps": 6, "batch_size": 2, "checkpoint_every": 3, "log_every": 1,
                 "keep_last": 5, "device": "cpu"},
    "sampling": {"sampler": "ddim", "steps": 4, "batch_size": 2, "device": "cpu"},
}


@pytest.fixture(scope="session")
def phantom16(tmp_path_factory) -> Path:
    """A prepared phantom-brain folder: 6 train + 3 test volumes of 16^3."""
    from wdm.data.prepare import prepare

    out = tmp_path_factory.mktemp("data") / "phantom16"
    return prepare("phantom-brain", out, size=16, n_train=6, n_test=3, seed=0)


@pytest.fixture()
def tiny_config(tmp_path) -> Path:
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_RUN))
    return path


@pytest.fixture()
def isolated_hub(tmp_path, monkeypatch) -> None:
    """No real MedicalNet weights or hub cache leak into a test (``usefixtures("isolated_hub")``)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("WDM_MEDICALNET_DIR", raising=False)
