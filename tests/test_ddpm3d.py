"""Voxel-space 3D DDPM baseline (baselines/ddpm3d): interface, clipping, training and sampling."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.ddpm3d import Model
from tests.conftest import TINY_RUN
from wdm.config import resolve_run_config
from wdm.io import load_nifti
from wdm.model import DiffusionModel, WDMModel, get_model_class
from wdm.sample import sample
from wdm.train import train

REPO = Path(__file__).resolve().parents[1]


def _cfg(**training) -> dict:
    return resolve_run_config({**TINY_RUN, "model": "ddpm3d",
                               "training": {**TINY_RUN["training"], **training}})


def test_registered_and_voxel_space():
    assert get_model_class("ddpm3d") is Model
    m = Model(_cfg(), (16, 16, 16))
    assert m.state_shape == (1, 16, 16, 16)
    first_conv = m.network.input_blocks[0][0]
    assert first_conv.in_channels == 1 and m.network.out[-1].out_channels == 1
    x = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    assert torch.equal(m.encode(x), x) and torch.equal(m.decode(x), x)
    # No wavelet code anywhere in the baseline's source.
    src = (REPO / "baselines" / "ddpm3d" / "__init__.py").read_text()
    assert "wavelet" not in src.split('"""')[2] and "codec" not in src


def test_shares_wdm_diffusion_code():
    """ddpm3d and WDM share one implementation of loss/denoise/generate (no copy)."""
    assert issubclass(Model, DiffusionModel) and issubclass(WDMModel, DiffusionModel)
    for name in ("loss", "denoise", "generate"):
        assert name not in vars(Model) and name not in vars(WDMModel)


def test_rejects_sides_not_divisible_by_unet_factor():
    with pytest.raises(ValueError, match="divisible by 2"):
        Model(_cfg(), (16, 16, 15))


def test_x0_clamped_to_data_range_when_clipping():
    m = Model(_cfg(), (16, 16, 16))
    m.network = lambda x, t: 5.0 * torch.ones_like(x)  # noqa: E731 - a denoiser far off range
    c = torch.zeros(1, 1, 16, 16, 16)
    assert m.denoise(c, torch.zeros(1, dtype=torch.long)).max().item() == 1.0
    m.clip = False
    assert m.denoise(c, torch.zeros(1, dtype=torch.long)).max().item() == 5.0


def test_two_steps_and_one_sample_16cubed(phantom16, tmp_path):
    cfg = _cfg(steps=2, checkpoint_every=2)
    prof = train(cfg, phantom16, tmp_path / "run", progress=False)
    assert prof["finished"] and prof["steps_trained"] == 2 and prof["model"] == "ddpm3d"
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "step_0000002.pt", weights_only=True)
    assert set(ckpt["model"]) == {"network"}
    sprof = sample(tmp_path / "run", 1, 0, tmp_path / "samples", steps=2, progress=False)
    vol, _ = load_nifti(tmp_path / "samples" / "sample_0000.nii.gz")
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all()
    assert vol.min() >= 0.0 and vol.max() <= 1.0
    assert sprof["s_per_volume"] > 0
    with open(tmp_path / "run" / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["1", "2"]


def test_loss_decreases_on_constant_volumes():
    torch.manual_seed(0)
    m = Model(_cfg(), (16, 16, 16))
    opt = torch.optim.AdamW(m.network.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.full((1, 1, 16, 16, 16), 0.4)
    losses = []
    for _ in range(15):
        loss = m.loss(x, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses



def test_refuses_wavelet_levels():
    """diffusion.levels is WDM's; the voxel-space model refuses 2 instead of ignoring it."""
    from wdm.io import InputError

    with pytest.raises(InputError, match=r"diffusion.levels: 2 is for model wdm.*'ddpm3d'"):
        Model(resolve_run_config({**TINY_RUN, "model": "ddpm3d", "diffusion": {"levels": 2}}), (16, 16, 16))
    wdm2 = WDMModel(resolve_run_config({**TINY_RUN, "diffusion": {"levels": 2}}), (16, 16, 16))
    assert wdm2.state_shape == (64, 4, 4, 4)
