"""J-level 3D Haar packet transform (``diffusion.levels``), its codec scaling and WDM on it.

Level J applies the one-level orthonormal Haar step of WDM (Friedrich et al. 2024, Sec. 2) to
every sub-band of level J - 1: 8^J channels, channel ``sum_l 8^(J-l) b_l`` (level 1 first). The
reference here is built independently: the 1D Haar pair (a +- b) / sqrt(2), its Kronecker cube
(one level) and the J-fold Kronecker product of that acting on the voxels of a (2^J)^3 block.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from tests.conftest import TINY_RUN
from wdm import codec
from wdm.config import resolve_run_config
from wdm.io import InputError, load_nifti
from wdm.wavelets import BANDS, LEVELS, dwt3d, idwt3d, packet_bands

HAAR_1D = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2.0)


def block_matrix(levels: int) -> torch.Tensor:
    """(8^J, 8^J) matrix: rows = packet channels, columns = voxels of a (2^J)^3 block in C order."""
    m = torch.kron(torch.kron(HAAR_1D, HAAR_1D), HAAR_1D)  # one level: rows/cols (d, h, w) bits
    k = m
    for _ in range(levels - 1):
        k = torch.kron(k, m)  # columns indexed sum_l 8^(J-l) A_l, A_l = level-l parity bits
    side = 2**levels
    cols = torch.zeros(side, side, side, dtype=torch.long)
    for pd in range(side):
        for ph in range(side):
            for pw in range(side):
                bits = [4 * (pd >> (lv - 1) & 1) + 2 * (ph >> (lv - 1) & 1) + (pw >> (lv - 1) & 1)
                        for lv in range(1, levels + 1)]
                cols[pd, ph, pw] = sum(b * 8 ** (levels - lv) for lv, b in enumerate(bits, 1))
    return k[:, cols.flatten()]  # column of voxel (pd, ph, pw) in C order


def blockwise_reference(x: torch.Tensor, levels: int) -> torch.Tensor:
    """(B, C, D, H, W) -> (B, 8^J C, D/s, H/s, W/s) by the explicit block matrix, s = 2^J."""
    s, nb = 2**levels, 8**levels
    b, c, dd, hh, ww = x.shape
    blocks = x.reshape(b, c, dd // s, s, hh // s, s, ww // s, s).permute(0, 1, 2, 4, 6, 3, 5, 7)
    out = blocks.reshape(b, c, -1, nb) @ block_matrix(levels).T  # (b, c, nblocks, nb)
    return out.permute(0, 1, 3, 2).reshape(b, c * nb, dd // s, hh // s, ww // s)


def test_band_names_and_order():
    assert LEVELS == (1, 2, 3) and packet_bands(1) == BANDS
    names = packet_bands(2)
    assert len(names) == 64 and names[0] == "LLL.LLL" and names[1] == "LLL.LLH"
    assert names[8 * 4 + 1] == "HLL.LLH" and names[63] == "HHH.HHH"
    assert len(packet_bands(3)) == 512 and packet_bands(3)[8 * 8 * 7 + 8 * 0 + 4] == "HHH.LLL.HLL"


@pytest.mark.parametrize("levels", [2, 3])
def test_matches_the_explicit_block_matrix(levels):
    s = 2**levels
    x = torch.randn(2, 2, 2 * s, s, 3 * s, generator=torch.Generator().manual_seed(levels),
                    dtype=torch.float64)
    c = dwt3d(x, levels)
    assert c.shape == (2, 2 * 8**levels, 2, 1, 3) and c.is_contiguous()
    torch.testing.assert_close(c, blockwise_reference(x, levels), atol=1e-12, rtol=0)


@pytest.mark.parametrize("levels", [2, 3])
def test_equals_the_one_level_transform_applied_to_every_band(levels):
    x = torch.randn(3, 1, 16, 8, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = x
    for _ in range(levels):
        ref = dwt3d(ref)
    torch.testing.assert_close(dwt3d(x, levels), ref, atol=1e-12, rtol=0)


def test_hand_checked_level2_values():
    # One 4x4x4 block, v[d, h, w] = 16 d + 4 h + w (0..63).
    x = torch.arange(64, dtype=torch.float64).reshape(1, 1, 4, 4, 4)
    c = dwt3d(x, 2)[0, :, 0, 0, 0]
    assert c[0].item() == pytest.approx(x.sum().item() / 8)  # block sum / (2 sqrt 2)^2
    # LLL.HLL: depth halves of the block, (top - bottom) / 8 = (-32 per voxel * 32 voxels) / 8
    assert c[4].item() == pytest.approx(-32 * 32 / 8)
    # HLL.LLL: even minus odd depth planes, -16 per voxel pair: (-16 * 32) / 8
    assert c[32].item() == pytest.approx(-16 * 32 / 8)
    assert c[1].item() == pytest.approx(-2 * 32 / 8) and c[8].item() == pytest.approx(-1 * 32 / 8)
    mixed = [k for k in range(64) if k not in (0, 1, 2, 4, 8, 16, 32)]
    assert c[mixed].abs().max().item() < 1e-12  # a linear ramp has no mixed or second differences


@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8, 8), (1, 1, 8, 16, 24), (3, 2, 32, 8, 16)])
def test_inverse_is_exact_float32(levels, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    c = dwt3d(x, levels)
    s = 2**levels
    assert c.shape == (shape[0], 8**levels * shape[1], shape[2] // s, shape[3] // s, shape[4] // s)
    assert (idwt3d(c, levels) - x).abs().max().item() < 1e-5


@pytest.mark.parametrize("scratch_bytes", [1 << 20, 2_000, 300])
@pytest.mark.parametrize("levels", [2, 3])
def test_fused_cpu_kernel_matches_the_reference(monkeypatch, levels, scratch_bytes):
    # 32 KiB volumes (float64, 16x8x32); small scratches force runs of block columns, one column.
    from wdm import haar_cpu, wavelets

    monkeypatch.setattr(wavelets, "KERNEL_BYTES", 0)
    monkeypatch.setattr(haar_cpu, "SCRATCH_BYTES", scratch_bytes)
    x = torch.randn(3, 2, 16, 8, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c = dwt3d(x, levels)
    torch.testing.assert_close(c, blockwise_reference(x, levels), atol=1e-12, rtol=0)
    assert (idwt3d(c, levels) - x).abs().max().item() < 1e-12


@pytest.mark.parametrize("levels", [2, 3])
def test_gradients_are_the_adjoint(levels):
    s = 2**levels
    x = torch.randn(1, 1, s, s, 2 * s, dtype=torch.float64, requires_grad=True)
    c = torch.randn(1, 8**levels, 1, 1, 2, dtype=torch.float64, requires_grad=True)
    fast = levels == 3  # 1024 inputs: random projections instead of the full Jacobian
    assert torch.autograd.gradcheck(lambda t: dwt3d(t, levels), (x,), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda t: idwt3d(t, levels), (c,), fast_mode=fast)
    assert torch.autograd.gradgradcheck(lambda t: dwt3d(t, levels), (x,), fast_mode=True)
    # <W x, c> == <x, W^T c> and W^T = W^-1
    lhs = (dwt3d(x, levels) * c).sum()
    rhs = (x * idwt3d(c, levels)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-12)


@pytest.mark.parametrize("levels", [2, 3])
def test_orthonormal_exactly(levels):
    s = 2**levels
    eye = torch.eye(s**3, dtype=torch.float64).view(s**3, 1, s, s, s)
    t = dwt3d(eye, levels).view(s**3, 8**levels)  # row i: the transform of basis voxel i
    torch.testing.assert_close(t @ t.T, torch.eye(s**3, dtype=torch.float64), atol=1e-12, rtol=0)


def test_white_noise_stays_white_level2():
    x = torch.randn(8, 1, 32, 32, 32, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    c = dwt3d(x, 2)  # (8, 64, 8, 8, 8): 4096 samples per channel
    samples = c.transpose(0, 1).reshape(64, -1)
    n = samples.shape[1]
    assert torch.allclose((c**2).sum(), (x**2).sum())  # Parseval
    var = samples.var(dim=1)
    assert (var - 1).abs().max().item() < 6 * math.sqrt(2 / n)  # unit variance in every band
    corr = torch.corrcoef(samples)
    off = corr - torch.diag(torch.diag(corr))
    assert off.abs().max().item() < 6 / math.sqrt(n)  # no correlation between bands
    lag = (c[..., 1:] * c[..., :-1]).mean(dim=(0, 2, 3, 4))  # nor between neighbouring blocks
    assert lag.abs().max().item() < 6 / math.sqrt(n)


@pytest.mark.parametrize("bad", [0, 4, True, 2.0, "2"])
def test_levels_are_validated(bad):
    with pytest.raises(ValueError, match=r"levels must be one of \[1, 2, 3\]"):
        dwt3d(torch.zeros(1, 1, 8, 8, 8), bad)


def test_sides_and_channels_are_checked():
    with pytest.raises(ValueError, match="divisible by 4"):
        dwt3d(torch.zeros(1, 1, 8, 8, 6), 2)
    with pytest.raises(ValueError, match="even"):
        dwt3d(torch.zeros(1, 1, 8, 8, 5))
    with pytest.raises(ValueError, match="multiple of 64"):
        idwt3d(torch.zeros(1, 8, 2, 2, 2), 2)
    assert dwt3d(torch.zeros(2, 1, 0, 8, 8), 2).shape == (2, 64, 0, 2, 2)


def test_codec_level1_is_unchanged():
    x = torch.rand(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    scale = torch.ones(8)
    scale[0] = 1.0 / 3.0
    expected = dwt3d(x) * scale.view(1, -1, 1, 1, 1)
    assert torch.equal(codec.encode(x), expected) and torch.equal(codec.encode(x, 3.0, 1), expected)
    assert codec.lll_divisor(3.0, 1) == 3.0


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_codec_constant_volume_and_clipping(levels):
    v = 0.7
    x = torch.full((2, 1, 8, 8, 8), v, dtype=torch.float64)
    c = codec.encode(x, 3.0, levels)
    assert c.shape[1] == 8**levels and codec.lll_divisor(3.0, levels) == 3.0**levels
    expected = v * (2 * math.sqrt(2)) ** levels / 3**levels
    torch.testing.assert_close(c[:, 0], torch.full_like(c[:, 0], expected))
    assert c[:, 1:].abs().max().item() < 1e-12
    torch.testing.assert_close(codec.decode(c, 3.0, levels), x, atol=1e-12, rtol=0)
    y = torch.linspace(-2, 2, 2 * 512, dtype=torch.float64).reshape(2, 1, 8, 8, 8)
    clipped = codec.decode(codec.wavelet_clip(codec.encode(y, 3.0, levels), 3.0, levels), 3.0, levels)
    torch.testing.assert_close(clipped, y.clamp(-1, 1), atol=1e-12, rtol=0)


def _wdm_cfg(levels: int) -> dict:
    return resolve_run_config({"model": "wdm", "network": {"preset": "tiny"},
                               "diffusion": {"timesteps": 10, "levels": levels}})


def test_config_levels_default_and_range():
    assert resolve_run_config({"model": "wdm"})["diffusion"]["levels"] == 1
    with pytest.raises(InputError, match="diffusion.levels"):
        resolve_run_config({"model": "wdm", "diffusion": {"levels": 4}})


def test_wdm_model_state_network_and_codec_follow_levels():
    from wdm.model import WDMModel

    m = WDMModel(_wdm_cfg(2), (16, 16, 32))
    assert m.state_shape == (64, 4, 4, 8)
    sd = m.network.state_dict()
    assert sd["input_blocks.0.0.weight"].shape[1] == 64 and sd["out.2.weight"].shape[0] == 64
    x = torch.rand(1, 1, 16, 16, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    c = m.encode(x)
    assert c.shape == (1, 64, 4, 4, 8)
    assert (m.decode(c) - x).abs().max().item() < 1e-5
    assert (m.clip_x0(c) - c).abs().max().item() < 1e-5  # in range: clipping leaves it alone
    info = m.run_info()
    assert info["levels"] == 2 and info["state_shape"] == [64, 4, 4, 8] and info["lll_divisor"] == 9.0
    assert WDMModel(_wdm_cfg(1), (16, 16, 16)).state_shape == (8, 8, 8, 8)
    with pytest.raises(ValueError, match="divisible by 4"):
        WDMModel(_wdm_cfg(2), (16, 16, 18))


def test_converter_refuses_other_levels(tmp_path):
    from wdm.convert import write_converted_run

    cfg = {"model": "wdm", "network": {"preset": "tiny"}, "diffusion": {"levels": 2}}
    with pytest.raises(InputError, match="diffusion.levels is 2"):
        write_converted_run(tmp_path / "none.pt", tmp_path / "run", cfg, size=16)


def test_level2_run_trains_and_samples(phantom16, tmp_path):
    from wdm.checkpoints import latest_checkpoint, load_checkpoint
    from wdm.sample import sample
    from wdm.train import train

    cfg = copy.deepcopy(TINY_RUN)
    cfg["diffusion"]["levels"] = 2  # 16^3 volumes -> a 4^3 grid of 64 bands; tiny halves it once
    cfg["training"].update(steps=2, checkpoint_every=2)
    cfg["sampling"].update(steps=2, batch_size=1)
    run = tmp_path / "run"
    prof = train(cfg, phantom16, run, progress=False)
    assert prof["steps_trained"] == 2 and prof["finished"]
    saved = json.loads((run / "train_profile.json").read_text())
    assert saved["model_info"]["levels"] == 2 and saved["model_info"]["state_shape"] == [64, 4, 4, 4]
    net = load_checkpoint(latest_checkpoint(run))["model"]["network"]
    assert net["input_blocks.0.0.weight"].shape[1] == 64
    sample(run, 1, 3, tmp_path / "samples", progress=False)
    vol, _ = load_nifti(tmp_path / "samples" / "sample_0000.nii.gz")
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all() and vol.min() >= 0 and vol.max() <= 1


@pytest.mark.parametrize("levels", [2, 3])
def test_whole_tensor_path_matches(monkeypatch, levels):
    # The path taken off the CPU (one gather and J batched GEMMs), forced here on the CPU.
    from wdm import wavelets

    monkeypatch.setattr(wavelets, "_fused_kernel", lambda t: None)
    x = torch.randn(2, 2, 16, 8, 32, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    c = dwt3d(x, levels)
    torch.testing.assert_close(c, blockwise_reference(x, levels), atol=1e-12, rtol=0)
    x_before = x.clone()
    assert (idwt3d(c, levels) - x).abs().max().item() < 1e-12 and torch.equal(x, x_before)
    single = torch.randn(1, 1, 2**levels, 2**levels, 2**levels, dtype=torch.float64)  # blocks = a view
    assert (idwt3d(dwt3d(single, levels), levels) - single).abs().max().item() < 1e-12
