"""Compute-matched training (training.flop_budget) and samples of a run's untrained initialisation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.conftest import TINY_RUN
from tests.test_ldm import TINY_LDM
from wdm.budget import STEADY_STEP, apply_flop_budget, training_flops_per_step
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.config import resolve_run_config
from wdm.io import load_nifti
from wdm.model import build_model, configure_stage
from wdm.networks import build_network
from wdm.sample import sample
from wdm.train import train


def _conv_flops(cin: int, cout: int, k: int, n_out: int) -> int:
    """FLOPs of a dense 3D convolution: 2 multiply-adds per kernel tap, input channel and output."""
    return 2 * cin * cout * k ** 3 * n_out


def test_the_count_of_one_convolution_by_hand():
    """The counter's convention, checked on a step whose only FLOPs are one 3x3x3 conv's."""
    conv = torch.nn.Conv3d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(1, 2, 4, 4, 4, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        conv(x).sum().backward()
    # forward, and the backward's gradient w.r.t. the input and w.r.t. the weight: 3 x forward
    assert fc.get_total_flops() == 3 * _conv_flops(2, 3, 3, 4 ** 3)


def test_flops_per_step_scale_with_batch_and_leave_the_rng_alone():
    cfg = resolve_run_config(copy.deepcopy(TINY_RUN))
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    f2 = training_flops_per_step(cfg, (16, 16, 16))
    assert torch.equal(torch.random.get_rng_state(), state)
    cfg4 = resolve_run_config({**TINY_RUN, "training": {**TINY_RUN["training"], "batch_size": 4}})
    f4 = training_flops_per_step(cfg4, (16, 16, 16))
    assert f2 > 0 and f4 == 2 * f2  # every counted op is linear in the batch
    assert training_flops_per_step(cfg, (16, 16, 16)) == f2  # deterministic


def test_the_voxel_ddpm_costs_about_eight_times_wdm_per_step():
    """The same U-Net on 8x the grid points (the paper's point): between 6x and 8x the FLOPs
    (the time embedding and the 8- vs 1-channel first/last convolutions do not scale)."""
    wdm = resolve_run_config(copy.deepcopy(TINY_RUN))
    ddpm = resolve_run_config({**copy.deepcopy(TINY_RUN), "model": "ddpm3d"})
    ratio = training_flops_per_step(ddpm, (16, 16, 16)) / training_flops_per_step(wdm, (16, 16, 16))
    assert 6.0 < ratio < 8.0


def test_budget_derives_steps_and_caps_checkpoints():
    cfg = resolve_run_config(copy.deepcopy(TINY_RUN))
    per_step = training_flops_per_step(cfg, (16, 16, 16))
    budget = 7.5 * per_step
    same, rec = apply_flop_budget(cfg, (16, 16, 16))
    assert same is cfg and rec is None  # no budget: unchanged
    cfg["training"]["flop_budget"] = budget
    derived, rec = apply_flop_budget(cfg, (16, 16, 16))
    assert derived["training"]["steps"] == 7 == rec["steps"]
    assert derived["training"]["checkpoint_every"] == 3  # already below the steps
    assert rec["flops_per_step"] == per_step and rec["train_flops"] == 7 * per_step <= budget
    cfg["training"]["flop_budget"] = 0.1 * per_step  # less than one step: one step
    assert apply_flop_budget(cfg, (16, 16, 16))[0]["training"]["steps"] == 1


def test_a_budgeted_run_records_its_compute(phantom16, tmp_path):
    raw = copy.deepcopy(TINY_RUN)
    per_step = training_flops_per_step(resolve_run_config(raw), (16, 16, 16))
    raw["training"].update(flop_budget=4 * per_step, steps=1000, checkpoint_every=500)
    prof = train(raw, phantom16, tmp_path / "run", progress=False)
    assert prof["steps_trained"] == prof["steps_total"] == 4
    assert prof["flop_budget"]["train_flops"] == 4 * per_step
    saved = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert saved["step"] == 4 and saved["config"]["training"]["steps"] == 4
    assert saved["config"]["training"]["flop_budget"] == 4 * per_step
    again = train(raw, phantom16, tmp_path / "run", resume=True, progress=False)
    assert again["steps_trained"] == 4  # the same derived steps: the finished run is kept


def test_ldm_stages_split_the_budget_by_flop_share(tmp_path):
    raw = copy.deepcopy(TINY_LDM)
    raw["training"] = {**raw.get("training", {}), "flop_budget": 1e9}
    raw["ldm"]["vqgan"]["flop_share"] = 0.25
    vq = configure_stage(raw, tmp_path / "vqgan", "vqgan")
    with torch.random.fork_rng(devices=[]):
        per_step = training_flops_per_step(vq, (16, 16, 16))
    derived, rec = apply_flop_budget(vq, (16, 16, 16))
    assert rec["stage_budget"] == pytest.approx(0.25e9)
    assert derived["training"]["steps"] == max(1, math.floor(0.25e9 / per_step))


def test_the_vqgan_step_is_counted_with_its_discriminator(tmp_path):
    """Counted in the steady state: a discriminator that starts late is in the count."""
    raw = copy.deepcopy(TINY_LDM)
    raw["ldm"]["vqgan"]["disc_start"] = 10**6
    vq = configure_stage(raw, tmp_path / "vqgan", "vqgan")
    model = build_model(vq, (16, 16, 16))
    opts = model.configure_optimizers(vq["training"])
    x = torch.rand(vq["training"]["batch_size"], 1, 16, 16, 16) * 2 - 1
    counts = {}
    for step in (0, STEADY_STEP):
        with FlopCounterMode(display=False) as fc:
            model.training_step(x, torch.Generator().manual_seed(0), opts, step)
        counts[step] = fc.get_total_flops()
    assert counts[STEADY_STEP] > counts[0]
    assert training_flops_per_step(vq, (16, 16, 16)) == counts[STEADY_STEP]


def test_initial_samples_come_from_the_runs_initialisation(phantom16, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_config, phantom16, run, progress=False)
    cfg = load_checkpoint(latest_checkpoint(run))["config"]
    torch.manual_seed(cfg["training"]["seed"])  # as the training loop builds its model
    init = build_network(cfg["network"], 8, 8)
    prof = sample(run, 2, 3, tmp_path / "init", initial=True, progress=False)
    assert prof["checkpoint_step"] == 0
    trained = sample(run, 2, 3, tmp_path / "trained", progress=False)
    assert trained["provenance_key"] != prof["provenance_key"]
    a = load_nifti(tmp_path / "init" / "sample_0000.nii.gz")[0]
    b = load_nifti(tmp_path / "trained" / "sample_0000.nii.gz")[0]
    assert (a != b).any()
    # the same volumes as sampling a model holding exactly the initial weights
    from wdm.sample import _load_model

    model = _load_model(resolve_run_config(cfg), load_checkpoint(latest_checkpoint(run)),
                        torch.device("cpu"), initial=True)
    for k, v in init.state_dict().items():
        assert torch.equal(model.network.state_dict()[k], v), k
