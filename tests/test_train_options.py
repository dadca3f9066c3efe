"""Training memory options and out-of-memory handling: bf16 autocast,
activation checkpointing, and an OOM that is recorded instead of crashing the workflow."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_RUN
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.cli import main
from wdm.io import InputError
from wdm.networks import build_network
from wdm.train import train

REPO = Path(__file__).resolve().parents[1]


def _cfg(**training) -> dict:
    cfg = copy.deepcopy(TINY_RUN)
    cfg["training"].update({"steps": 3, "checkpoint_every": 3, **training})
    return cfg


def _losses(run: Path) -> list[float]:
    with open(run / "loss.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def test_bf16_autocast_trains_with_fp32_weights(phantom16, tmp_path):
    prof = train(_cfg(precision="bf16"), phantom16, tmp_path / "bf16", progress=False)
    assert prof["status"] == "ok" and prof["error"] is None and prof["precision"] == "bf16"
    assert json.loads((tmp_path / "bf16" / "train_profile.json").read_text())["precision"] == "bf16"
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "bf16"))
    assert all(v.dtype == torch.float32 for v in ckpt["model"]["network"].values())
    adam = ckpt["optimizer"]["main"]["state"]
    assert adam and all(s["exp_avg"].dtype == torch.float32 for s in adam.values())
    assert not any(k.startswith("module.") for k in ckpt["model"]["network"])
    train(_cfg(), phantom16, tmp_path / "fp32", progress=False)
    bf16, fp32 = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    # same data and noise; step 1 is exact (the output layer starts at zero), then bf16 rounding
    # moves the loss a little, not a lot
    assert all(torch.isfinite(torch.tensor(bf16))) and bf16[0] == fp32[0] and bf16 != fp32
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    net = build_network({"preset": "tiny"}, 8, 8)  # GroupNorm32 computes in float32
    for p in net.parameters():  # the output layer starts at zero: give every weight a gradient path
        p.data.add_(0.01 * torch.randn_like(p))
    x = torch.randn(2, 8, 8, 8, 8)
    t = torch.tensor([3, 70])

    def grads() -> list[torch.Tensor]:
        net.zero_grad(set_to_none=True)
        ((net(x, t) - x) ** 2).mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    plain = grads()
    net.set_checkpointing(True)
    assert net.use_checkpoint
    recomputed = grads()
    assert len(plain) == len(recomputed)
    assert all(a.abs().sum() > 0 for a in plain)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(plain, recomputed, strict=True))


def test_activation_checkpointing_option_in_training(phantom16, tmp_path):
    on = train(_cfg(activation_checkpointing=True), phantom16, tmp_path / "on", progress=False)
    off = train(_cfg(), phantom16, tmp_path / "off", progress=False)
    assert on["activation_checkpointing"] is True and off["activation_checkpointing"] is False
    a = load_checkpoint(latest_checkpoint(tmp_path / "on"))["model"]["network"]
    b = load_checkpoint(latest_checkpoint(tmp_path / "off"))["model"]["network"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_options_refused_for_models_with_their_own_step(phantom16, tmp_path, monkeypatch):
    hagan = {"model": "hagan", "hagan": {"preset": "tiny"},
             "training": {"steps": 1, "batch_size": 2, "device": "cpu"}}
    for training, needle in (({"precision": "bf16"}, "fp32 only"),
                             ({"activation_checkpointing": True}, "none of model 'hagan'")):
        cfg = copy.deepcopy(hagan)
        cfg["training"].update(training)
        with pytest.raises(InputError, match=needle):
            train(cfg, phantom16, tmp_path / "run", progress=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(InputError, match="training_step.*does not support"):
        train(hagan, phantom16, tmp_path / "run", progress=False)
    assert not torch.distributed.is_initialized()


def test_gpu_oom_is_recorded_not_raised(phantom16, tiny_config, tmp_path, monkeypatch, capsys, caplog):
    """A CUDA out-of-memory error (raised here on the CPU) at step 2: exit 0, one stderr line, and a
    profile with status oom, the error line and null measurements."""
    from wdm.model import WDMModel

    real_step = WDMModel.training_step

    def failing_step(self, x, gen, opts, step, **options):
        if step == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_step(self, x, gen, opts, step, **options)

    monkeypatch.setattr(WDMModel, "training_step", failing_step)
    run = tmp_path / "run"
    code = main(["train", "--config", str(tiny_config), "--data", str(phantom16), "--out", str(run),
                 "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("wdm-bench train: out of memory")], err
    prof = json.loads((run / "train_profile.json").read_text())
    assert prof["status"] == "oom" and prof["oom_at_step"] == 2
    assert prof["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert prof["s_per_iteration"] is None and prof["peak_memory_gb"] is None
    assert prof["steps_trained"] is None and prof["batch_size"] == 2 and prof["world_size"] == 1
    assert not (run / "checkpoints").exists()
    msg = " ".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    for hint in ("batch_size", "activation_checkpointing", "bf16", "training.gpus", "[16, 16, 16]"):
        assert hint in msg


def test_other_errors_still_fail(phantom16, tmp_path, monkeypatch):
    from wdm.model import WDMModel

    def broken(self, x, gen, opts, step, **options):
        raise RuntimeError("shape mismatch in a layer")

    monkeypatch.setattr(WDMModel, "training_step", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train(_cfg(), phantom16, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "train_profile.json").exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_real_cpu_oom_under_an_address_space_limit(phantom16, tmp_path):
    """A real allocation failure: the CLI in a process whose address space is capped ~300 MB above
    what it uses after start-up, training a batch of 64 (far more than that)."""
    import yaml

    cfg = _cfg(batch_size=64)
    cfg["network"] = {"preset": "small"}
    (tmp_path / "big.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    script = textwrap.dedent(f"""
        import resource, sys
        import torch
        from wdm.cli import main
        import wdm.train, wdm.networks, wdm.model  # imported before the cap
        from wdm.wavelets import dwt3d
        dwt3d(torch.zeros(1, 1, 64, 64, 64))  # and the Numba DWT kernels (LLVM) loaded
        vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1])
        resource.setrlimit(resource.RLIMIT_AS, (vm * 1024 + 300 * 2**20, resource.RLIM_INFINITY))
        sys.exit(main(["train", "--config", {str(tmp_path / "big.yaml")!r}, "--data",
                       {str(phantom16)!r}, "--out", {str(run)!r}, "--no-progress", "--threads", "1"]))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "wdm-bench train: out of memory" in res.stderr
    prof = json.loads((run / "train_profile.json").read_text())
    # which allocation fails first varies from run to run: torch's allocator or one of oneDNN's
    assert prof["status"] == "oom"
    assert ("allocate" in prof["error"] or prof["error"] in (
        "RuntimeError: could not create a primitive", "RuntimeError: could not execute a primitive")
            ), prof["error"]
    assert prof["batch_size"] == 64 and prof["peak_memory_gb"] is None
