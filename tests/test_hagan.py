"""HA-GAN baseline (baselines/hagan): network shapes, sub-volumes, spectral norm, optimisers,
training through the generic loop, sampling and configuration checks."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from baselines.hagan import HAGAN_PRESETS, Model
from baselines.hagan.losses import downsample
from baselines.hagan.networks import Discriminator, Generator, SubEncoder
from wdm.config import resolve_run_config
from wdm.io import InputError, load_nifti
from wdm.model import get_model_class
from wdm.sample import sample
from wdm.train import train

TINY_HAGAN = {
    "model": "hagan",
    "hagan": {"preset": "tiny"},
    "training": {"steps": 2, "batch_size": 2, "checkpoint_every": 1, "log_every": 1, "keep_last": 5,
                 "device": "cpu"},
    "sampling": {"batch_size": 2, "device": "cpu"},
}


def _model(side: int = 16, **hagan) -> Model:
    cfg = resolve_run_config({**TINY_HAGAN, "hagan": {"preset": "tiny", **hagan}})
    return Model(cfg, (side,) * 3)


@pytest.mark.parametrize(("side", "sub_depth"), [(16, 4), (32, 4), (64, 8)])
def test_shapes_of_every_network(side, sub_depth):
    torch.manual_seed(0)
    m = _model(side)
    low, b = side // 4, 2
    assert m.sub_depth == sub_depth and m.n_slabs * m.slab_depth == low
    z = torch.randn(b, m.latent_dim)
    feats = m.generator.features(z)
    c2 = m.generator.feature_channels
    assert feats.shape == (b, c2, low, low, low)
    assert m.generator.low_res(feats).shape == (b, 1, low, low, low)
    sub, small = m.generator(z, slab=1)
    assert sub.shape == (b, 1, sub_depth, side, side) and small.shape == (b, 1, low, low, low)
    full, _ = m.generator(z)
    assert full.shape == (b, 1, side, side, side)
    assert full.abs().max() <= 1.0  # tanh output
    pos = torch.full((b,), 0.5)
    assert m.discriminator(sub, small, pos).shape == (b, 1)
    enc = m.encoder(sub)
    assert enc.shape == (b, c2, m.slab_depth, low, low)
    assert m.generator.high_res(enc).shape == sub.shape  # E^H inverts into G^H's input space
    x = torch.rand(b, 1, side, side, side) * 2 - 1
    vol_feats = m.encode_volume(x)
    assert vol_feats.shape == (b, c2, low, low, low)
    assert m.sub_encoder(vol_feats).shape == (b, m.latent_dim)
    assert m.generate(3, torch.Generator().manual_seed(0)).shape == (3, 1, side, side, side)


def test_paper_widths_128_and_256():
    """The paper's layer widths (upstream Model_HA_GAN_{128,256}.py) follow from the presets."""
    for side, n_high, first in [(128, 5, 32), (256, 6, 16)]:
        w = HAGAN_PRESETS[f"hagan-{side}"]
        d = Discriminator(side, w["d_channels"], w["d_low_channels"])
        assert len(d.high) == n_high and d.high[0].out_channels == first
        assert d.high[-1].out_channels == 512 and d.high_out.out_channels == 128
        assert d.fc1.in_features == 129 and d.fc1.out_features == 64
        assert [c.out_channels for c in d.low] == [32, 64, 128, 256][-(n_high - 2):]
        se = SubEncoder(side, 64, w["sub_e_channels"], 1024)
        assert se.net[0].in_channels == 64 and se.net[-1].out_channels == 1024
    g = Generator(128, 1024, 32)
    assert g.fc.out_features == 4 * 4 * 4 * 512 and g.n_up == 3
    assert [blk[0].out_channels for blk in g.trunk] == [512, 512, 256, 128, 64]
    assert g.high_head[0][0].out_channels == 32
    assert [mod.out_channels for mod in g.low_head if isinstance(mod, nn.Conv3d)] == [1]
    assert Generator(256, 16, 4).n_up == 4


def test_sub_volume_selection():
    m = _model(32)  # L = 8, slab depth 1 on the feature grid = 4 voxels = S/8
    gen = torch.Generator().manual_seed(0)
    starts = {m.sample_slab(gen) for _ in range(400)}
    assert starts == set(range(0, 8))  # uniform over every admissible start, none beyond
    x = torch.arange(32.0).view(1, 1, 32, 1, 1).expand(1, 1, 32, 32, 32)
    crop = m.crop(x, 21)  # a voxel start (upstream's crop_idx), not a slab index
    assert crop.shape == (1, 1, 4, 32, 32)
    assert crop[0, 0, :, 0, 0].tolist() == [21.0, 22.0, 23.0, 24.0]  # axial, starting at voxel 21
    assert m.encode_volume(torch.zeros(2, 1, 32, 32, 32)).shape[2] == 8  # 8 slabs tile the depth
    m64 = _model(64)
    assert {m64.sample_slab(gen) for _ in range(400)} == set(range(0, 15))  # 16 - 2 + 1 starts


def test_spectral_norm_on_every_discriminator_layer_only():
    m = _model(32)
    d_layers = [mod for mod in m.discriminator.modules() if isinstance(mod, (nn.Conv3d, nn.Linear))]
    assert len(d_layers) >= 5
    for layer in d_layers:
        assert parametrize.is_parametrized(layer, "weight")
        assert type(layer.parametrizations.weight[0]).__name__ == "_SpectralNorm"
    for net in (m.generator, m.encoder, m.sub_encoder):
        assert not any(parametrize.is_parametrized(mod) for mod in net.modules())


def test_optimizers_as_in_the_paper():
    m = _model(16)
    opts = m.configure_optimizers({})
    assert set(opts) == {"g", "d", "e", "sub_e"}
    lrs = {k: o.param_groups[0]["lr"] for k, o in opts.items()}
    assert lrs == {"g": 1e-4, "d": 4e-4, "e": 1e-4, "sub_e": 1e-4}
    for o in opts.values():
        assert isinstance(o, torch.optim.Adam) and o.param_groups[0]["betas"] == (0.0, 0.999)
    owned = {k: {id(p) for p in o.param_groups[0]["params"]} for k, o in opts.items()}
    assert owned["g"] == {id(p) for p in m.generator.parameters()}
    assert owned["d"] == {id(p) for p in m.discriminator.parameters()}


def test_training_step_updates_each_network_by_its_own_loss():
    torch.manual_seed(0)
    m = _model(16)
    opts = m.configure_optimizers({})
    before = {k: [p.detach().clone() for p in mod.parameters()] for k, mod in m.modules().items()}
    out = m.training_step(torch.rand(2, 1, 16, 16, 16) * 2 - 1, torch.Generator().manual_seed(0),
                          opts, 0)
    assert list(out)[0] == "loss" and set(out) == {"loss", "d_real", "d_fake", "g", "e", "sub_e"}
    assert all(torch.isfinite(v) for v in out.values())
    for k, mod in m.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], mod.parameters(), strict=True)), k
    assert all(p.requires_grad for mod in m.modules().values() for p in mod.parameters())


def test_downsample_modes():
    x = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 4, 4).contiguous()
    assert downsample(x, 4, "nearest")[0, 0, :, 0, 0].tolist() == [0.0, 4.0]
    assert downsample(x, 4, "area")[0, 0, :, 0, 0].tolist() == [1.5, 5.5]
    with pytest.raises(ValueError, match="allowed"):
        downsample(x, 4, "cubic")


@pytest.mark.parametrize("crop", ["upstream", "aligned"])
def test_two_steps_one_sample_and_exact_resume(phantom16, tmp_path, crop):
    cfg = resolve_run_config({**TINY_HAGAN, "hagan": {"preset": "tiny", "crop": crop}})
    assert cfg["hagan"]["crop"] == crop
    prof = train(cfg, phantom16, tmp_path / "run", progress=False)
    assert prof["finished"] and prof["steps_trained"] == 2
    with open(tmp_path / "run" / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "loss", "d_real", "d_fake", "g", "e", "sub_e", "s_per_it"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "step_0000002.pt", weights_only=True)
    assert set(ckpt["model"]) == {"generator", "discriminator", "encoder", "sub_encoder"}
    assert set(ckpt["optimizer"]) == {"g", "d", "e", "sub_e"}
    # Interrupted after step 1 and resumed: bit-identical weights.
    train(cfg, phantom16, tmp_path / "run2", progress=False, max_steps=1)
    train(cfg, phantom16, tmp_path / "run2", progress=False, resume=True)
    ckpt2 = torch.load(tmp_path / "run2" / "checkpoints" / "step_0000002.pt", weights_only=True)
    for name, sd in ckpt["model"].items():
        for key, val in sd.items():
            assert torch.equal(val, ckpt2["model"][name][key]), (name, key)
    sprof = sample(tmp_path / "run", 1, 0, tmp_path / "samples", progress=False)
    vol, _ = load_nifti(tmp_path / "samples" / "sample_0000.nii.gz")
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all() and 0 <= vol.min() <= vol.max() <= 1
    assert sprof["s_per_volume"] > 0


def test_reconstruction_losses_decrease_on_constant_volumes():
    torch.manual_seed(0)
    m = _model(16)
    opts = m.configure_optimizers({})
    for o in opts.values():  # faster than the paper's rates, to see learning in a few steps
        o.param_groups[0]["lr"] *= 10
    gen = torch.Generator().manual_seed(0)
    x = torch.full((2, 1, 16, 16, 16), 0.4)
    hist = [m.training_step(x, gen, opts, i) for i in range(20)]
    for key in ("e", "sub_e"):
        vals = [float(h[key]) for h in hist]
        assert np.mean(vals[-5:]) < 0.8 * np.mean(vals[:5]), (key, vals)


def test_config_validation_and_shape_errors():
    cfg = resolve_run_config({"model": "hagan"})
    assert cfg["hagan"]["preset"] == "small" and cfg["hagan"]["betas"] == [0.0, 0.999]
    assert cfg["hagan"]["crop"] == "upstream"  # as the authors ran it (see test_hagan_crop.py)
    assert (cfg["hagan"]["lr_g"], cfg["hagan"]["lr_d"], cfg["hagan"]["lr_e"]) == (1e-4, 4e-4, 1e-4)
    with pytest.raises(InputError, match=r"hagan\.preset"):
        resolve_run_config({"model": "hagan", "hagan": {"preset": "huge"}})
    with pytest.raises(InputError, match="hagan"):
        resolve_run_config({"model": "hagan", "hagan": {"lr_gen": 1e-3}})
    with pytest.raises(ValueError, match="cubic"):
        _model().__class__(resolve_run_config(TINY_HAGAN), (16, 16, 32))
    with pytest.raises(ValueError, match="power-of-two"):
        _model(24)
    assert get_model_class("hagan") is Model
    m = _model(16, g_channels=4, latent_dim=8)  # explicit widths override the preset
    assert m.latent_dim == 8 and m.generator.channels == 4
