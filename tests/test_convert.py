"""Converting the WDM authors' released checkpoints (pfriedri/wdm-3d) into our network and a run folder.

The upstream state dicts here are built from upstream's key names and shapes, enumerated by
:func:`upstream_state_shapes` from the constructor of ``UNetModel`` in
github.com/pfriedri/wdm-3d ``guided_diffusion/unet.py`` (commit 430bfd6) with ``run.sh``'s
``ours_unet_128`` settings: ``additive_skips=True``, ``resblock_updown=True``, no attention,
``use_scale_shift_norm=False``, ``learn_sigma=False``. It does not use our network's code.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import nibabel as nib
import pytest
import torch
import torch.nn.functional as F
import yaml

from wdm.checkpoints import load_checkpoint
from wdm.cli import main
from wdm.convert import convert_wdm_checkpoint, write_converted_run
from wdm.io import InputError
from wdm.networks import build_network, count_parameters, timestep_embedding

RELEASED_FILE_BYTES = 231_809_874  # brats_unet_128_1200k.pt (Hugging Face LFS pointer)
SMALL_NET = {"preset": "wdm-128", "base_channels": 16, "num_groups": 8}  # upstream layout, 1/4 width


def upstream_state_shapes(mc: int = 64, mult: tuple[int, ...] = (1, 2, 2, 4, 4), nrb: int = 2,
                          cin: int = 8, cout: int = 8) -> dict[str, tuple[int, ...]]:
    """Key -> shape of upstream ``UNetModel.state_dict()`` (WDM settings; see module docstring)."""
    emb = 4 * mc
    shapes: dict[str, tuple[int, ...]] = {
        "time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,),
        "input_blocks.0.0.weight": (mc, cin, 3, 3, 3), "input_blocks.0.0.bias": (mc,),
    }

    def resblock(prefix: str, ch: int, out: int) -> None:
        shapes.update({
            f"{prefix}.in_layers.0.weight": (ch,), f"{prefix}.in_layers.0.bias": (ch,),
            f"{prefix}.in_layers.2.weight": (out, ch, 3, 3, 3), f"{prefix}.in_layers.2.bias": (out,),
            f"{prefix}.emb_layers.1.weight": (out, emb), f"{prefix}.emb_layers.1.bias": (out,),
            f"{prefix}.out_layers.0.weight": (out,), f"{prefix}.out_layers.0.bias": (out,),
            f"{prefix}.out_layers.3.weight": (out, out, 3, 3, 3), f"{prefix}.out_layers.3.bias": (out,),
        })
        if out != ch:
            shapes[f"{prefix}.skip_connection.weight"] = (out, ch, 1, 1, 1)
            shapes[f"{prefix}.skip_connection.bias"] = (out,)

    chans, ch, idx = [mc], mc, 1
    for level, m in enumerate(mult):
        for _ in range(nrb):
            resblock(f"input_blocks.{idx}.0", ch, m * mc)
            ch = m * mc
            chans.append(ch)
            idx += 1
        if level != len(mult) - 1:  # resblock_updown: a down-sampling residual block
            resblock(f"input_blocks.{idx}.0", ch, ch)
            chans.append(ch)
            idx += 1
    resblock("middle_block.0", ch, ch)  # bottleneck_attention=False: no AttentionBlock between
    resblock("middle_block.1", ch, ch)
    idx = 0
    for level in reversed(range(len(mult))):
        for i in range(nrb + 1):
            chans.pop()
            mid = chans[-1] if chans else mc  # additive skips: the width of the next skip
            resblock(f"output_blocks.{idx}.0", ch, mid)
            ch = mid
            if level and i == nrb:
                resblock(f"output_blocks.{idx}.1", ch, ch)  # up-sampling residual block
            idx += 1
    shapes.update({"out.0.weight": (ch,), "out.0.bias": (ch,),
                   "out.2.weight": (cout, mc, 3, 3, 3), "out.2.bias": (cout,)})
    return shapes


def upstream_state_dict(seed: int = 0, **kw) -> OrderedDict[str, torch.Tensor]:  # noqa: ANN003
    """Seeded random tensors in upstream's layout (an ``OrderedDict``, as ``torch.save`` wrote)."""
    g = torch.Generator().manual_seed(seed)
    shapes = upstream_state_shapes(**kw)
    return OrderedDict((k, 0.05 * torch.randn(s, generator=g)) for k, s in shapes.items())


def test_released_128_layout_is_ours():
    ups = upstream_state_shapes()
    with torch.device("meta"):
        ours = build_network({"preset": "wdm-128"}, 8, 8)
    assert list(ups) == list(ours.state_dict())  # same names, same order
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == ups
    n = sum(torch.Size(s).numel() for s in ups.values())
    assert n == count_parameters(ours) == 57_914_824 and len(ups) == 368
    # float32 tensors + ~400 bytes of pickle per tensor: the size of the released file
    assert 0 < RELEASED_FILE_BYTES - 4 * n < 1000 * len(ups)


def test_convert_loads_strictly_and_keeps_every_tensor(tmp_path):
    sd = upstream_state_dict(mc=16)
    src = tmp_path / "brats_unet_128_1200k.pt"
    torch.save(sd, src)  # the upstream container: a raw state dict
    out = convert_wdm_checkpoint(src, SMALL_NET)
    net = build_network(SMALL_NET, 8, 8)
    net.load_state_dict(out, strict=True)
    assert list(out) == list(sd)
    for k in ("time_embed.0.weight", "input_blocks.0.0.weight", "input_blocks.4.0.skip_connection.weight",
              "middle_block.1.out_layers.3.weight", "output_blocks.2.1.in_layers.2.weight", "out.2.weight"):
        assert torch.equal(net.state_dict()[k], sd[k]), k
    # End to end through our modules, against the upstream tensors applied by hand.
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(1, 8, 16, 16, 16, generator=g), torch.tensor([500])
    def lin(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(h, sd[f"{name}.weight"], sd[f"{name}.bias"])

    def conv(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv3d(h, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def norm_act(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.silu(F.group_norm(h, 8, sd[f"{name}.weight"], sd[f"{name}.bias"]))

    with torch.no_grad():
        emb = lin(F.silu(lin(timestep_embedding(t, 16), "time_embed.0")), "time_embed.2")
        torch.testing.assert_close(net.time_embed(timestep_embedding(t, 16)), emb)
        h0 = conv(x, "input_blocks.0.0")
        torch.testing.assert_close(net.input_blocks[0](x, emb), h0)
        blk = "input_blocks.1.0"  # first residual block: 16 -> 16 channels, identity skip
        h = conv(norm_act(h0, f"{blk}.in_layers.0"), f"{blk}.in_layers.2")
        h = h + lin(F.silu(emb), f"{blk}.emb_layers.1")[:, :, None, None, None]
        h = conv(norm_act(h, f"{blk}.out_layers.0"), f"{blk}.out_layers.3")
        torch.testing.assert_close(net.input_blocks[1](h0, emb), h0 + h)
        y = net(x, t)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_containers_and_module_prefix_convert_the_same(tmp_path):
    sd = upstream_state_dict(mc=16)
    ref = convert_wdm_checkpoint(sd, SMALL_NET)
    for wrapped in ({"model": OrderedDict(("module." + k, v) for k, v in sd.items())},
                    {"state_dict": sd, "step": 3}):
        path = tmp_path / "wrapped.pt"
        torch.save(wrapped, path)
        out = convert_wdm_checkpoint(path, SMALL_NET)
        assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_errors_list_missing_unexpected_and_mismatched_keys(tmp_path):
    sd = upstream_state_dict(mc=16)
    del sd["out.2.bias"]
    sd["label_emb.weight"] = torch.zeros(2, 64)
    sd["time_embed.0.weight"] = torch.zeros(64, 32)
    with pytest.raises(InputError) as err:
        convert_wdm_checkpoint(sd, SMALL_NET)
    msg = str(err.value)
    assert "1 missing key(s): out.2.bias" in msg and "1 unexpected key(s): label_emb.weight" in msg
    assert "time_embed.0.weight (64, 32) vs ours (64, 16)" in msg
    # The full-size network against a quarter-width checkpoint: a shape error, not a crash.
    with pytest.raises(InputError, match="shape mismatch"):
        convert_wdm_checkpoint(upstream_state_dict(mc=16), {"preset": "wdm-128"})
    bad = tmp_path / "bad.pt"
    torch.save({"optimizer": {"lr": 1.0}}, bad)
    with pytest.raises(InputError, match="not a state dict"):
        convert_wdm_checkpoint(bad)
    with pytest.raises(InputError, match="not found"):
        convert_wdm_checkpoint(tmp_path / "nope.pt")


def test_converted_run_folder_samples_with_the_cli(tmp_path):
    cfg = {"model": "wdm", "network": {"preset": "tiny"}, "diffusion": {"timesteps": 50},
           "sampling": {"sampler": "ddim", "steps": 2, "batch_size": 1, "device": "cpu"}}
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    src = tmp_path / "brats_unet_128_1200k.pt"
    torch.save(upstream_state_dict(mc=16, mult=(1, 2), nrb=1), src)
    run = tmp_path / "run"
    argv = ["convert-checkpoint", "--src", str(src), "--out", str(run), "--config", str(cfg_path),
            "--size", "16"]
    assert main(argv) == 0
    ckpt = load_checkpoint(run / "checkpoints" / "step_1200000.pt")  # weights_only=True
    assert ckpt["data"]["shape"] == [16, 16, 16] and ckpt["step"] == 1_200_000
    assert ckpt["converted_from"]["released_file"] is None  # random weights, not the release
    profile = json.loads((run / "train_profile.json").read_text())
    assert profile["finished"] and profile["converted_from"]["sha256"] == ckpt["converted_from"]["sha256"]
    assert main(argv) == 1  # refuses to overwrite without --overwrite
    out = tmp_path / "samples"
    assert main(["sample", "--run", str(run), "--n", "1", "--seed", "0", "--out", str(out),
                 "--no-progress"]) == 0
    vol = nib.load(out / "sample_0000.nii.gz").get_fdata()
    assert vol.shape == (16, 16, 16) and 0.0 <= vol.min() and vol.max() <= 1.0
    # A wrong width in the run config is reported with the keys that differ.
    with pytest.raises(InputError, match="shape mismatch"):
        write_converted_run(src, tmp_path / "run2", {**cfg, "network": {"preset": "small"}}, size=16)
