"""training.ema: the moving average of the weights (wdm/ema.py), checkpointed, resumed bit-exactly,
part of the run identity, and the weights sampling uses (wdm/sample.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY_RUN
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.config import resolve_run_config
from wdm.ema import EMA
from wdm.io import InputError, load_nifti
from wdm.model import build_model
from wdm.sample import PROVENANCE, batch_seed, sample, sample_path
from wdm.train import train


def _cfg(ema: float | None = 0.9) -> dict:
    cfg = copy.deepcopy(TINY_RUN)
    cfg["training"]["ema"] = ema
    return cfg


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, phantom16) -> dict[str, Path]:
    """The tiny WDM run trained 6 steps with ``training.ema: 0.9`` and without EMA."""
    tmp = tmp_path_factory.mktemp("ema_runs")
    out = {"ema": tmp / "ema", "raw": tmp / "raw"}
    train(_cfg(0.9), phantom16, out["ema"], progress=False)
    train(_cfg(None), phantom16, out["raw"], progress=False)
    return out


def test_ema_averages_trainable_parameters_and_copies_the_rest():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    net[2].weight.requires_grad_(False)  # a frozen parameter is copied like a buffer
    ema = EMA({"net": net}, 0.75)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(4, 3))  # BatchNorm running statistics move
    ema.update()
    sd, now = ema.state_dict()["net"], net.state_dict()
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "2.bias"):
        torch.testing.assert_close(sd[key], 0.75 * start[key] + 0.25 * now[key])
    for key in ("1.running_mean", "1.running_var", "1.num_batches_tracked", "2.weight"):
        assert torch.equal(sd[key], now[key]), key
    assert sd["1.num_batches_tracked"].dtype == torch.int64
    other = EMA({"net": copy.deepcopy(net)}, 0.75)
    other.load_state_dict(ema.state_dict(), "test")
    assert _equal(other.state_dict()["net"], sd)
    with pytest.raises(InputError, match="EMA modules"):
        other.load_state_dict({"x": sd}, "test")


def test_resume_with_ema_is_bit_identical(runs, phantom16, tmp_path):
    part = tmp_path / "part"
    train(_cfg(0.9), phantom16, part, progress=False, max_steps=3)  # "killed" after step 3
    train(_cfg(0.9), phantom16, part, resume=True, progress=False)
    a, b = load_checkpoint(latest_checkpoint(runs["ema"])), load_checkpoint(latest_checkpoint(part))
    assert a["step"] == b["step"] == 6
    assert _equal(a["model"]["network"], b["model"]["network"])
    assert _equal(a["ema"]["network"], b["ema"]["network"])
    # the average lags the weights; without EMA the checkpoint says so
    assert not _equal(a["ema"]["network"], a["model"]["network"])
    assert load_checkpoint(latest_checkpoint(runs["raw"]))["ema"] is None
    assert _equal(a["model"]["network"], load_checkpoint(latest_checkpoint(runs["raw"]))["model"]["network"])


def test_switching_ema_makes_another_run(phantom16, tmp_path):
    run = tmp_path / "run"
    train(_cfg(0.9), phantom16, run, progress=False, max_steps=3)
    prof = train(_cfg(None), phantom16, run, resume=True, progress=False)
    assert prof["steps_trained"] == 6
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.replaced-")]
    assert len(aside) == 1 and load_checkpoint(latest_checkpoint(aside[0]))["ema"] is not None
    assert load_checkpoint(latest_checkpoint(run))["ema"] is None


def _generate(run: Path, entry: str, seed: int) -> np.ndarray:
    """Volumes of batch 0 from the checkpoint's ``entry`` state dicts, built independently."""
    ckpt = load_checkpoint(latest_checkpoint(run))
    model = build_model(resolve_run_config(ckpt["config"]), tuple(ckpt["data"]["shape"]))
    model.network.load_state_dict(ckpt[entry]["network"])
    model.network.eval()
    s = ckpt["config"]["sampling"]
    gen = torch.Generator().manual_seed(batch_seed(seed, 0))
    with torch.no_grad():
        x = model.generate(s["batch_size"], gen, sampler=s["sampler"], steps=s["steps"], eta=s["eta"],
                           device=torch.device("cpu"))
    return ((x[:, 0].float() + 1.0) / 2.0).clamp(0.0, 1.0).numpy()


def test_sampling_uses_the_ema_weights(runs, tmp_path):
    out = tmp_path / "ema"
    prof = sample(runs["ema"], 2, 5, out, progress=False)
    got = np.stack([load_nifti(sample_path(out, i))[0] for i in range(2)])
    assert np.array_equal(got, _generate(runs["ema"], "ema", 5))
    assert not np.array_equal(got, _generate(runs["ema"], "model", 5))
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["weights"] == "ema" and prof["weights"] == "ema"
    # without EMA: the raw weights, and a provenance without the field (its key as before)
    raw = sample(runs["raw"], 2, 5, tmp_path / "raw", progress=False)
    assert raw["weights"] == "raw"
    assert "weights" not in json.loads((tmp_path / "raw" / PROVENANCE).read_text())
    assert np.array_equal(np.stack([load_nifti(sample_path(tmp_path / "raw", i))[0] for i in range(2)]),
                          _generate(runs["raw"], "model", 5))


def test_initial_ignores_ema(runs, tmp_path):
    a = sample(runs["ema"], 1, 2, tmp_path / "a", initial=True, progress=False)
    sample(runs["raw"], 1, 2, tmp_path / "b", initial=True, progress=False)
    assert a["weights"] == "initial"
    assert "weights" not in json.loads((tmp_path / "a" / PROVENANCE).read_text())
    assert np.array_equal(load_nifti(sample_path(tmp_path / "a", 0))[0],
                          load_nifti(sample_path(tmp_path / "b", 0))[0])


def test_ema_config_without_ema_weights_is_an_input_error(runs, tmp_path):
    ckpt = load_checkpoint(latest_checkpoint(runs["ema"]))
    broken = tmp_path / "step_0000006.pt"
    torch.save({**ckpt, "ema": None}, broken)
    with pytest.raises(InputError, match=r"step_0000006\.pt.*no EMA weights"):
        sample(runs["ema"], 1, 0, tmp_path / "out", checkpoint=broken, progress=False)


def test_ema_on_both_ldm_stages(phantom16, tmp_path):
    from tests.test_ldm import TINY_LDM

    cfg = copy.deepcopy(TINY_LDM)
    cfg["training"]["ema"] = 0.9  # stage 2's
    cfg["ldm"]["vqgan"]["ema"] = 0.9  # stage 1's
    train(cfg, phantom16, tmp_path / "ldm" / "vqgan", stage="vqgan", progress=False)
    vq = load_checkpoint(latest_checkpoint(tmp_path / "ldm" / "vqgan"))
    assert set(vq["ema"]) == {"vqgan", "disc"}  # several networks and optimizers
    codebook = "quantizer.embeddings"  # a buffer: copied, not averaged
    assert torch.equal(vq["ema"]["vqgan"][codebook], vq["model"]["vqgan"][codebook])
    train(cfg, phantom16, tmp_path / "ldm" / "run", stage="diffusion", progress=False)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "ldm" / "run"))
    assert _equal(ckpt["ema"]["codec"], ckpt["model"]["codec"])  # frozen: the EMA is the codec
    assert not _equal(ckpt["ema"]["network"], ckpt["model"]["network"])
    prof = sample(tmp_path / "ldm" / "run", 1, 3, tmp_path / "s", progress=False)
    assert prof["weights"] == "ema" and prof["status"] == "ok"
