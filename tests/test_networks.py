"""Tests for ``wdm.networks``: the WDM 3D U-Net (Friedrich et al. 2024; guided-diffusion U-Net)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wdm.networks import (
    NETWORK_PRESETS,
    OVERRIDABLE_KEYS,
    WDMUNet,
    build_network,
    count_parameters,
)


def _randomize(model: nn.Module, seed: int = 0, std: float = 0.05) -> nn.Module:
    """Give the zero-initialised convs random weights, so the output depends on every input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def _tiny(**overrides: object) -> WDMUNet:
    torch.manual_seed(0)
    return build_network({"preset": "tiny", **overrides}, in_channels=8, out_channels=8)


@pytest.mark.parametrize(
    ("preset", "c_in", "c_out"), [("tiny", 8, 8), ("small", 8, 8), ("tiny", 1, 1), ("tiny", 8, 2)]
)
def test_output_shape(preset: str, c_in: int, c_out: int) -> None:
    model = build_network({"preset": preset}, in_channels=c_in, out_channels=c_out)
    x = torch.randn(2, c_in, 16, 16, 16)
    with torch.no_grad():
        y = model(x, torch.tensor([3, 700]))
    assert y.shape == (2, c_out, 16, 16, 16)


def test_non_cubic_input_and_scalar_and_float_timesteps() -> None:
    model = _randomize(_tiny()).eval()
    x = torch.randn(2, 8, 4, 8, 6)
    with torch.no_grad():
        y_long = model(x, torch.tensor([5, 5]))
        y_float = model(x, torch.tensor([5.0, 5.0]))
        y_scalar = model(x, 5)
    assert y_long.shape == x.shape
    torch.testing.assert_close(y_long, y_float)
    torch.testing.assert_close(y_long, y_scalar)


def test_zero_initialised_output() -> None:
    """guided-diffusion zero-initialises the last conv: a fresh network outputs exactly zero."""
    model = _tiny()
    with torch.no_grad():
        y = model(torch.randn(1, 8, 16, 16, 16), torch.tensor([10]))
    assert torch.count_nonzero(y) == 0


def test_timestep_dependence() -> None:
    model = _randomize(_tiny()).eval()
    x = torch.randn(1, 8, 16, 16, 16).expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        y = model(x, torch.tensor([1, 900]))
    assert not torch.allclose(y[0], y[1], atol=1e-4)


def test_gradients_reach_every_parameter_and_training_reduces_loss() -> None:
    model = _tiny()
    x = torch.randn(2, 8, 16, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10, 500])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(6):
        opt.zero_grad()
        loss = (model(x, t) - x).pow(2).mean()
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None]
            assert not missing, f"parameters without gradient: {missing}"
        opt.step()
        losses.append(loss.item())
    # After a few steps the zero-initialised convs have moved: every parameter gets signal.
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, f"parameters with all-zero gradient after {len(losses)} steps: {dead}"
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("scale_shift", [False, True])
def test_checkpointing_matches(scale_shift: bool) -> None:
    plain = _randomize(_tiny(use_scale_shift_norm=scale_shift))
    ckpt = copy.deepcopy(plain)
    ckpt.set_checkpointing(True)
    assert all(b.use_checkpoint for b in ckpt.modules() if hasattr(b, "emb_layers"))
    x = torch.randn(2, 8, 16, 16, 16)
    t = torch.tensor([3, 400])
    outs, grads = [], []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_(True)
        y = model(xi, t)
        y.pow(2).mean().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for g0, g1 in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(g0, g1, atol=1e-5, rtol=1e-5)


def test_checkpointing_from_config() -> None:
    model = build_network({"preset": "tiny", "use_checkpoint": True}, 8, 8)
    assert model.use_checkpoint
    assert all(b.use_checkpoint for b in model.modules() if hasattr(b, "emb_layers"))


@pytest.mark.parametrize("shape", [(1, 8, 15, 16, 16), (1, 8, 16, 16, 9)])
def test_bad_spatial_shape(shape: tuple[int, ...]) -> None:
    model = _tiny()  # 2 levels -> sides must be multiples of 2
    with pytest.raises(ValueError, match=r"not divisible by 2.*multiple of 2") as err:
        model(torch.randn(*shape), torch.zeros(1))
    assert str(tuple(shape[2:])) in str(err.value)


def test_bad_channels_rank_and_timesteps() -> None:
    model = _tiny()
    with pytest.raises(ValueError, match="8 input channels"):
        model(torch.randn(1, 3, 16, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        model(torch.randn(8, 16, 16, 16), torch.zeros(1))
    with pytest.raises(ValueError, match="timesteps"):
        model(torch.randn(2, 8, 16, 16, 16), torch.zeros(3))


def test_paper_preset_sizes_and_layout() -> None:
    with torch.device("meta"):
        m128 = build_network({"preset": "wdm-128"}, 8, 8)
        m256 = build_network({"preset": "wdm-256"}, 8, 8)
    n128 = count_parameters(m128)
    assert abs(n128 - 58e6) / 58e6 < 0.15, n128
    assert count_parameters(m256) > n128
    assert m128.downsample_factor == 16 and m256.downsample_factor == 32
    # Upstream layout: conv + 5 levels x 2 res blocks + 4 down blocks; 5 x 3 decoder blocks.
    assert len(m128.input_blocks) == 15 and len(m128.output_blocks) == 15
    keys = set(m128.state_dict())
    for key in (
        "time_embed.0.weight",
        "time_embed.2.weight",
        "input_blocks.0.0.weight",
        "input_blocks.1.0.in_layers.2.weight",
        "input_blocks.1.0.emb_layers.1.weight",
        "input_blocks.4.0.skip_connection.weight",
        "middle_block.1.out_layers.3.weight",
        "output_blocks.2.1.in_layers.2.weight",  # up-sampling block of the deepest level
        "out.0.weight",
        "out.2.weight",
    ):
        assert key in keys, key
    # Without scale-shift norm the timestep projection has the block's width (upstream default).
    assert m128.state_dict()["input_blocks.1.0.emb_layers.1.weight"].shape == (64, 256)


def test_small_and_tiny_presets() -> None:
    small = build_network({"preset": "small"}, 8, 8)
    tiny = build_network({"preset": "tiny"}, 8, 8)
    assert small.base_channels == 32 and small.channel_mult == (1, 2, 2)
    assert tiny.num_groups == 8
    assert 1e6 < count_parameters(small) < 3e6
    assert count_parameters(tiny) < count_parameters(small)


def test_overrides_apply() -> None:
    model = build_network(
        {"preset": "small", "base_channels": 16, "channel_mult": [1, 2], "num_groups": 8}, 1, 1
    )
    assert model.base_channels == 16 and model.channel_mult == (1, 2)
    assert model.hparams()["channel_mult"] == [1, 2]
    rebuilt = WDMUNet(**model.hparams())
    assert count_parameters(rebuilt) == count_parameters(model)


def test_unknown_preset_and_key() -> None:
    with pytest.raises(ValueError, match="allowed presets") as err:
        build_network({"preset": "huge"}, 8, 8)
    assert all(name in str(err.value) for name in NETWORK_PRESETS)
    with pytest.raises(ValueError, match="allowed presets"):
        build_network({}, 8, 8)
    with pytest.raises(ValueError, match="allowed keys") as err:
        build_network({"preset": "tiny", "attention": True}, 8, 8)
    assert "attention" in str(err.value)
    assert all(key in str(err.value) for key in OVERRIDABLE_KEYS)


def test_invalid_hyperparameters() -> None:
    with pytest.raises(ValueError, match=r"num_groups=32 must divide.*\[16\]"):
        build_network({"preset": "tiny", "num_groups": 32}, 8, 8)
    with pytest.raises(ValueError, match="channel_mult"):
        build_network({"preset": "tiny", "channel_mult": "1,2"}, 8, 8)
    with pytest.raises(ValueError, match="channel_mult"):
        build_network({"preset": "tiny", "channel_mult": []}, 8, 8)
    with pytest.raises(ValueError, match="dropout"):
        build_network({"preset": "tiny", "dropout": 1.5}, 8, 8)
    with pytest.raises(ValueError, match="num_res_blocks"):
        build_network({"preset": "tiny", "num_res_blocks": 0}, 8, 8)


def test_wdm_512_preset_is_wdm_256_with_64_channels() -> None:
    """Two packet levels at 512^3 give 64 channels on 128^3: the wdm-256 network, wider at both ends.

    Only ``input_blocks.0.0`` (3x3x3 conv C_in -> 64) and ``out.2`` (3x3x3 conv 64 -> C_out, with a
    bias per output channel) depend on the channels: going from 8 to 64 adds
    (64 - 8) * 64 * 27 = 96,768 weights in and (64 - 8) * 64 * 27 + (64 - 8) = 96,824 out.
    """
    with torch.device("meta"):
        m512 = build_network({"preset": "wdm-512"}, 64, 64)
        m256 = build_network({"preset": "wdm-256"}, 8, 8)
    assert count_parameters(m512) - count_parameters(m256) == 96_768 + 96_824 == 193_592
    assert count_parameters(m256) == 83_158_728 and count_parameters(m512) == 83_352_320
    s512, s256 = m512.state_dict(), m256.state_dict()
    assert list(s512) == list(s256)
    differ = [k for k in s512 if s512[k].shape != s256[k].shape]
    assert differ == ["input_blocks.0.0.weight", "out.2.weight", "out.2.bias"]
    assert m512.downsample_factor == m256.downsample_factor == 32
