"""Data-parallel training: torch DDP under torchrun, gloo on the CPU, 16^3 volumes.

Two processes with a global batch of 4 (2 per process) must follow the loss curve of one process
with a batch of 4, end on the same weights and write the same run folder (rank 0 only).
"""

from __future__ import annotations

import copy
import csv
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_RUN
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.diffusion import GaussianDiffusion, linear_beta_schedule
from wdm.distributed import DistContext, context_from_env, shard_bounds
from wdm.io import InputError
from wdm.train import train

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, name: str, **training) -> Path:
    cfg = copy.deepcopy(TINY_RUN)
    cfg["training"].update({"batch_size": 4, "checkpoint_every": 2, "keep_last": 10, "gpus": 2})
    cfg["training"].update(training)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _torchrun(config: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "wdm.cli", "train", "--config", str(config), "--data", str(data), "--out", str(out),
           "--no-progress", "--threads", "2", *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _losses(run: Path) -> dict[int, float]:
    with open(run / "loss.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt)["model"]["network"]


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()  # the unwrapped state dict: no "module." prefixes
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6), k


@pytest.fixture(scope="module")
def reference(phantom16, tmp_path_factory) -> Path:
    """One process, global batch 4, 6 steps (checkpoints at 2, 4, 6)."""
    tmp = tmp_path_factory.mktemp("ref")
    run = tmp / "run"
    train(_config(tmp, "ref", steps=6), phantom16, run, progress=False)
    return run


def test_context_and_shards():
    assert context_from_env({}) == DistContext(1, 0, 0)
    ctx = context_from_env({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert ctx.enabled and not ctx.is_main
    assert shard_bounds(4, ctx) == (2, 4) and shard_bounds(4, DistContext(2, 0, 0)) == (0, 2)
    assert shard_bounds(3, DistContext()) == (0, 3)
    with pytest.raises(InputError, match="batch_size 3 .* not divisible by the world size 2"):
        shard_bounds(3, ctx)
    with pytest.raises(InputError, match="RANK=2"):
        context_from_env({"WORLD_SIZE": "2", "RANK": "2"})


def test_indivisible_batch_fails_before_joining(phantom16, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(InputError, match="not divisible by the world size 2"):
        train(_config(tmp_path, "odd", batch_size=3), phantom16, tmp_path / "run", progress=False)
    assert not torch.distributed.is_initialized()  # no process group to wait for the other rank
    assert not (tmp_path / "run").exists()


def test_sharded_loss_is_the_global_batch_loss():
    """Each shard draws t and noise for the whole batch and keeps its rows: the mean of the shard
    losses is the one-process loss, and the generator ends in the same state."""
    diffusion = GaussianDiffusion(linear_beta_schedule(50))
    w = torch.linspace(0.5, 1.5, 2).view(1, 2, 1, 1, 1)

    def denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return w * x + t.view(-1, 1, 1, 1, 1) / 50

    x0 = torch.randn(4, 2, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    full = diffusion.training_loss(denoiser, x0, g)
    parts = []
    for start in (0, 2):
        gs = torch.Generator().manual_seed(0)
        parts.append(diffusion.training_loss(denoiser, x0[start:start + 2], gs, shard=(start, 4)))
        assert torch.equal(gs.get_state(), g.get_state())
    assert torch.allclose(full, torch.stack(parts).mean(), rtol=1e-6)
    same = diffusion.training_loss(denoiser, x0, torch.Generator().manual_seed(0), shard=(0, 4))
    assert torch.equal(same, full)
    with pytest.raises(ValueError, match="shard"):
        diffusion.training_loss(denoiser, x0[:2], torch.Generator(), shard=(3, 4))


def test_ddp_supported_models():
    from baselines.ddpm3d import Model as DDPM3D
    from baselines.hagan.model import Model as HAGAN
    from baselines.ldm.stages import LatentDiffusionStage, VQGANStage
    from wdm.model import WDMModel

    for cls in (WDMModel, DDPM3D, LatentDiffusionStage):
        assert "shard" in inspect.signature(cls.loss).parameters and cls.single_objective
    for cls in (HAGAN, VQGANStage):  # refused under DDP (wdm.distributed.check_ddp_support)
        assert not cls.single_objective


def test_two_gloo_processes_follow_one_process(phantom16, reference, tmp_path):
    run = tmp_path / "ddp"
    res = _torchrun(_config(tmp_path, "ddp", steps=4), phantom16, run)
    assert res.returncode == 0, res.stderr[-3000:]
    ref, got = _losses(reference), _losses(run)
    assert sorted(got) == [1, 2, 3, 4]  # one writer: no duplicated rows
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["step_0000002.pt", "step_0000004.pt"]
    _assert_same_weights(_weights(run / "checkpoints" / ckpts[-1]),
                         _weights(reference / "checkpoints" / "step_0000004.pt"))
    prof = json.loads((run / "train_profile.json").read_text())
    assert prof["status"] == "ok" and prof["error"] is None
    assert (prof["world_size"], prof["batch_size"], prof["batch_size_per_process"]) == (2, 4, 2)
    assert not list(run.rglob(".*tmp*")), "temporary files left behind"


def test_ddp_resumes_a_single_process_run(phantom16, reference, tmp_path):
    """A run stopped after 2 steps (one process) and resumed by two processes to step 6 ends where
    one process ends: the checkpoint (weights, optimizer, generator) does not depend on the world
    size."""
    run, cfg = tmp_path / "run", _config(tmp_path, "cfg", steps=6)
    train(cfg, phantom16, run, progress=False, max_steps=2)
    res = _torchrun(cfg, phantom16, run, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    ref, got = _losses(reference), _losses(run)
    assert sorted(got) == list(range(1, 7))
    for step in got:
        assert got[step] == pytest.approx(ref[step], rel=1e-4), step
    _assert_same_weights(_weights(latest_checkpoint(run)), _weights(latest_checkpoint(reference)))
    assert load_checkpoint(latest_checkpoint(run))["step"] == 6
