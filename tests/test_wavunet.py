"""Tests for ``wdm.wavunet``: the WDM WavU-Net (Friedrich et al. 2024, upstream ``WavUNetModel``)."""

from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch

from tests.conftest import TINY_RUN
from tests.test_networks import _randomize
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.io import load_nifti
from wdm.networks import NETWORK_PRESETS, build_network, count_parameters
from wdm.sample import sample
from wdm.train import train
from wdm.wavunet import FEATURE_SCALE, WaveletDownBlock, WaveletDownsample, WaveletUpBlock, WavUNet


def _tiny(**overrides: object) -> WavUNet:
    torch.manual_seed(0)
    net = build_network({"preset": "tiny-wavunet", **overrides}, in_channels=8, out_channels=8)
    assert isinstance(net, WavUNet)
    return net


def _haar(v: torch.Tensor) -> torch.Tensor:
    """Independent one-level Haar DWT by slicing: ``(B, C, D, H, W) -> (B, C, 8, D/2, H/2, W/2)``,
    band ``4 kd + 2 kh + kw`` (LLL .. HHH), low = (a + b) / sqrt2, high = (a - b) / sqrt2."""
    bands = [v]
    for dim in (2, 3, 4):  # depth, height, width: depth is the first letter
        split = []
        for t in bands:
            even = t.index_select(dim, torch.arange(0, t.shape[dim], 2))
            odd = t.index_select(dim, torch.arange(1, t.shape[dim], 2))
            split += [(even + odd) / math.sqrt(2), (even - odd) / math.sqrt(2)]
        bands = split
    return torch.stack(bands, dim=2)


# -- parameter count against upstream's layer shapes ------------------------------------------
def _conv(i: int, o: int, k: int = 3) -> int:
    return i * o * k**3 + o


def _linear(i: int, o: int) -> int:
    return i * o + o


def _res(i: int, o: int, emb: int) -> int:
    """guided-diffusion ResBlock: GN(i), conv3 i->o, Linear emb->o, GN(o), conv3 o->o, 1x1 skip."""
    return 2 * i + _conv(i, o) + _linear(emb, o) + 2 * o + _conv(o, o) + (_conv(i, o, 1) if i != o else 0)


def _upstream_wavunet_parameters(c_in: int, c_out: int, base: int, mult: tuple[int, ...],
                                 nrb: int) -> int:
    """Distinct parameters of upstream's ``WavUNetModel`` (guided_diffusion/wunet.py), layer by layer."""
    emb = 4 * base
    n = _linear(base, emb) + _linear(emb, emb)  # time_embed.0 / .2
    n += _conv(c_in, base)  # input_blocks.0
    ch, pyramid = base, c_in
    for m in mult:  # wunet.py:497-570: every level ends with a down block and a pyramid conv
        for _ in range(nrb):
            n += _res(ch, base * m, emb)
            ch = base * m
        n += _res(ch, ch, emb)  # down ResBlock (DWT inside, no parameters of its own)
        n += _conv(8 * pyramid, ch)  # WaveletDownsample: 3x3x3 conv on the 8 bands
        pyramid = ch
    n += 2 * _res(ch, ch, emb)  # middle_block
    for m in reversed(mult):  # wunet.py:615-675; the block shared by two output_blocks counts once
        for _ in range(nrb):
            n += _res(ch, base * m, emb)
            ch = base * m
        n += _res(ch, ch, emb)  # up ResBlock
    n += nrb * _res(ch, ch, emb)  # out_res
    return n + 2 * ch + _conv(base, c_out)  # out: GroupNorm, conv (not zero-initialised)


def test_wdm_128_wavunet_has_upstreams_parameter_count():
    # run.sh ours_wnet_128: --num_channels=64 --num_res_blocks=2 --channel_mult=1,2,2,4,4, 8 -> 8.
    # Per block (emb 256): res(64,64) = 128 + 110656 + 16448 + 128 + 110656 = 238016,
    # res(64,128) = 705408, res(128,128) = 918400, res(128,256) = 2754304, res(256,256) = 3606272,
    # res(256,128) = 1393920, res(128,64) = 356992.
    # time_embed 82432; encoder conv0 13888 + 3*238016 + (705408 + 2*918400) + 3*918400
    #   + (2754304 + 2*3606272) + 3*3606272 = 26811008;
    # pyramid convs 27*8*(8*64 + 64*128 + 128*128 + 128*256 + 256*256) + (64+128+128+256+256)
    #   = 26653504; middle 2*3606272 = 7212544;
    # decoder 3*3606272 + 3*3606272 + (1393920 + 2*918400) + 3*918400 + (356992 + 2*238016)
    #   = 28456576; out_res 2*238016 = 476032; out 128 + 13832 = 13960.
    expected = 82432 + 26811008 + 26653504 + 7212544 + 28456576 + 476032 + 13960
    assert expected == 89_706_056 == _upstream_wavunet_parameters(8, 8, 64, (1, 2, 2, 4, 4), 2)
    with torch.device("meta"):
        ours = build_network({"preset": "wdm-128-wavunet"}, in_channels=8, out_channels=8)
    assert count_parameters(ours) == expected
    # 368 distinct tensors; the state dict repeats the 5 shared blocks' 10 tensors (418 keys).
    assert len(list(ours.parameters())) == 368 and len(ours.state_dict()) == 418
    assert ours.downsample_factor == 32


def test_wdm_256_wavunet_has_upstreams_parameter_count():
    expected = _upstream_wavunet_parameters(8, 8, 64, (1, 2, 2, 4, 4, 4), 2)
    assert expected == 125_499_720
    with torch.device("meta"):
        ours = build_network({"preset": "wdm-256-wavunet"}, in_channels=8, out_channels=8)
    assert count_parameters(ours) == expected and ours.downsample_factor == 64


def test_tiny_preset_count_matches_the_formula_too():
    net = _tiny()
    assert count_parameters(net) == _upstream_wavunet_parameters(8, 8, 16, (1, 2), 2)


# -- forward, backward, layout ----------------------------------------------------------------
@pytest.mark.parametrize(("c_in", "c_out", "shape"),
                         [(8, 8, (8, 8, 8)), (1, 1, (4, 8, 12)), (8, 2, (8, 4, 8))])
def test_forward_shape(c_in: int, c_out: int, shape: tuple[int, int, int]):
    net = build_network({"preset": "tiny-wavunet"}, in_channels=c_in, out_channels=c_out)
    with torch.no_grad():
        y = net(torch.randn(2, c_in, *shape), torch.tensor([3, 700]))
    assert y.shape == (2, c_out, *shape) and torch.isfinite(y).all()
    with torch.no_grad():  # a scalar timestep is broadcast
        torch.testing.assert_close(net(torch.ones(2, c_in, *shape), 5),
                                   net(torch.ones(2, c_in, *shape), torch.tensor([5, 5])))


def test_bad_spatial_shape_names_the_factor():
    net = _tiny()  # 2 levels, each down-samples -> sides must be multiples of 4
    with pytest.raises(ValueError, match=r"not divisible by 4 = 2\*\*len\(channel_mult\).*multiple of 4"):
        net(torch.randn(1, 8, 8, 8, 6), torch.zeros(1))


def test_backward_gives_finite_gradients_to_every_parameter():
    net = _tiny()
    x = torch.randn(2, 8, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    (net(x, torch.tensor([10, 500])) - x).pow(2).mean().backward()
    bad = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, bad
    # Once the zero-initialised convs are non-zero, every parameter is on the path to the output.
    net = _randomize(_tiny())
    net(x, torch.tensor([10, 500])).pow(2).mean().backward()
    dead = [n for n, p in net.named_parameters() if not p.grad.any()]
    assert not dead, dead


def test_upstream_layout_and_shared_decoder_block():
    net = _tiny()
    kinds = [type(b[0]).__name__ for b in net.input_blocks]
    assert kinds == ["Conv3d", "ResBlock", "ResBlock", "WaveletDownBlock", "WaveletDownsample",
                     "ResBlock", "ResBlock", "WaveletDownBlock", "WaveletDownsample"]
    assert len(net.output_blocks) == 6 and len(net.out_res) == 2
    for level in range(2):  # (R0), (R1), (R1, Up): R1 is one module used twice (wunet.py:649)
        r1, pair = net.output_blocks[3 * level + 1], net.output_blocks[3 * level + 2]
        assert pair[0] is r1[0] and isinstance(pair[1], WaveletUpBlock)
    keys = net.state_dict()
    assert "output_blocks.1.0.in_layers.2.weight" in keys and "output_blocks.2.0.in_layers.2.weight" in keys
    assert keys["input_blocks.4.0.conv.weight"].shape == (16, 64, 3, 3, 3)  # pyramid: 8 bands x 8 ch
    calls = []
    net.output_blocks[1][0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        net(torch.randn(1, 8, 8, 8, 8), 1)
    assert len(calls) == 2
    assert not any(p.any() for p in net.input_blocks[1][0].out_layers[3].parameters())
    assert net.out[2].weight.any()  # upstream's WavU-Net output conv is not zero-initialised


def test_down_sampling_is_a_haar_dwt():
    """First down block: skip = high bands of its in_layers output, LLL / 3 goes on (residual path
    too); with the block's last conv at its zero init the output is exactly LLL(DWT(x)) / 3."""
    net = _tiny()
    down = net.input_blocks[3][0]
    assert isinstance(down, WaveletDownBlock)
    x = torch.randn(2, 16, 8, 8, 8)
    emb = torch.randn(2, 64)
    seen = {}
    down.in_layers.register_forward_hook(lambda _m, _i, out: seen.setdefault("h", out))
    with torch.no_grad():
        out, skip = down(x, emb)
    assert out.shape == (2, 16, 4, 4, 4) and skip.shape == (2, 16, 7, 4, 4, 4)
    assert seen["h"].shape == (2, 16, 8, 8, 8)  # conv at full resolution, then the DWT
    torch.testing.assert_close(skip, _haar(seen["h"])[:, :, 1:])
    torch.testing.assert_close(out, _haar(x)[:, :, 0] / FEATURE_SCALE)


def test_input_pyramid_sees_the_bands_band_major():
    step = _tiny().input_blocks[4][0]
    assert isinstance(step, WaveletDownsample)
    x = torch.randn(1, 8, 8, 8, 8)
    seen = {}
    step.conv.register_forward_hook(lambda _m, inp, _o: seen.setdefault("in", inp[0]))
    with torch.no_grad():
        step(x)
    expected = _haar(x).transpose(1, 2).flatten(1, 2) / FEATURE_SCALE  # all LLL, then all LLH, ...
    torch.testing.assert_close(seen["in"], expected)


def test_up_sampling_is_the_inverse_dwt_of_3x_and_the_skip():
    up = _tiny().output_blocks[2][1]
    v = torch.randn(1, 32, 4, 4, 4)
    bands = _haar(v)
    with torch.no_grad():  # fresh block: the h branch ends in a zero conv, the residual path remains
        y = up(bands[:, :, 0] / FEATURE_SCALE, torch.randn(1, 64), bands[:, :, 1:])
    torch.testing.assert_close(y, v)


def test_checkpointing_matches_and_hparams_rebuild():
    plain = _randomize(_tiny())
    ckpt = copy.deepcopy(plain)
    ckpt.set_checkpointing(True)
    blocks = [m for m in ckpt.modules() if hasattr(m, "emb_layers")]
    assert ckpt.use_checkpoint and all(b.use_checkpoint for b in blocks)
    x, t = torch.randn(2, 8, 8, 8, 8), torch.tensor([3, 400])
    results = []
    for model in (plain, ckpt):
        y = model(x, t)
        y.pow(2).mean().backward()
        results.append([y.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert count_parameters(WavUNet(**plain.hparams())) == count_parameters(plain)


def test_invalid_settings():
    with pytest.raises(ValueError, match="num_res_blocks=1 needs one width"):
        build_network({"preset": "tiny-wavunet", "num_res_blocks": 1}, 8, 8)
    assert count_parameters(build_network(  # one width: the shared block fits twice
        {"preset": "tiny-wavunet", "num_res_blocks": 1, "channel_mult": [1, 1]}, 8, 8)) > 0
    with pytest.raises(ValueError, match="num_groups=32 must divide"):
        build_network({"preset": "tiny-wavunet", "num_groups": 32}, 8, 8)


def test_unknown_arch_lists_the_allowed(monkeypatch):
    monkeypatch.setitem(NETWORK_PRESETS, "odd", {"arch": "transformer"})
    with pytest.raises(ValueError, match=r"allowed: \['unet', 'wavunet'\]"):
        build_network({"preset": "odd"}, 8, 8)


# -- a whole WDM run ------------------------------------------------------------------------------
def test_wdm_run_with_the_wavunet_trains_and_samples(phantom16, tmp_path):
    cfg = copy.deepcopy(TINY_RUN)
    cfg["network"] = {"preset": "tiny-wavunet"}
    cfg["training"].update(steps=2, checkpoint_every=2)
    run = tmp_path / "run"
    prof = train(cfg, phantom16, run, progress=False)
    assert prof["steps_trained"] == 2 and prof["finished"]
    with open(run / "loss.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    state = load_checkpoint(latest_checkpoint(run))["model"]["network"]
    assert "output_blocks.2.0.in_layers.2.weight" in state  # shared block saved under both names
    sample(run, 1, 3, tmp_path / "samples", progress=False)
    vol, _ = load_nifti(tmp_path / "samples" / "sample_0000.nii.gz")
    assert vol.shape == (16, 16, 16) and np.isfinite(vol).all() and 0 <= vol.min() <= vol.max() <= 1


def test_xs_wavunet_preset_builds_and_runs_on_the_64_cubed_wavelet_grid():
    # xs's widths (base 16, (1, 2, 2), GroupNorm 8) as a WavU-Net: 3 DWT halvings, 32^3 -> 4^3.
    torch.manual_seed(0)
    net = build_network({"preset": "xs-wavunet"}, in_channels=8, out_channels=8)
    assert isinstance(net, WavUNet) and net.downsample_factor == 8 and net.num_res_blocks == 2
    assert count_parameters(net) == _upstream_wavunet_parameters(8, 8, 16, (1, 2, 2), 2)
    with torch.no_grad():
        y = net(torch.randn(1, 8, 32, 32, 32), torch.tensor([500]))
    assert y.shape == (1, 8, 32, 32, 32) and torch.isfinite(y).all()
