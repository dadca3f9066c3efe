"""Reliability: checkpoint rotation, exact resume after SIGKILL, quoted shell values."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from tests.conftest import TINY_RUN
from wdm.checkpoints import best_checkpoint, latest_checkpoint, load_checkpoint, save_torch_atomic
from wdm.train import train

REPO = Path(__file__).resolve().parents[1]


def test_rotation_keeps_last_k_and_best(phantom16, tmp_path):
    cfg = dict(TINY_RUN)
    cfg["training"] = dict(TINY_RUN["training"], steps=8, checkpoint_every=1, keep_last=2, log_every=1)
    run = tmp_path / "run"
    train(cfg, phantom16, run, progress=False)
    with open(run / "loss.csv") as f:
        losses = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}
    best_step = min(losses, key=losses.get)
    kept = sorted(int(p.stem.split("_")[1]) for p in (run / "checkpoints").glob("step_*.pt"))
    assert kept == sorted({7, 8, best_step})
    best = best_checkpoint(run)
    assert best.exists() and load_checkpoint(best)["step"] == best_step
    assert abs(load_checkpoint(latest_checkpoint(run))["best"]["loss"] - min(losses.values())) < 1e-5


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "wdm.cli", *args]


def test_identical_saves_are_identical_bytes(tmp_path):
    # torch.save given a path names the archive after it: the random temporary name of the atomic
    # write would make every save of the same state differ (and so its sha256 in the records).
    state = {"w": torch.arange(6.0).reshape(2, 3), "meta": {"step": 3}}
    paths = [tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt", tmp_path / "c.pt"]
    for p in paths:
        save_torch_atomic(state, p)
    assert len({p.read_bytes() for p in paths}) == 1
    assert torch.equal(torch.load(paths[2], weights_only=True)["w"], state["w"])
    assert not [f for p in paths for f in p.parent.iterdir() if f.name.startswith(".")]


def test_sigkill_then_resume_is_bit_identical(phantom16, tmp_path):
    cfg = dict(TINY_RUN)
    cfg["training"] = dict(TINY_RUN["training"], steps=24, checkpoint_every=3, log_every=1)
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = tmp_path / "full"
    subprocess.run(_cli("train", "--config", str(cfg_path), "--data", str(phantom16), "--out",
                        str(full), "--threads", "1", "--no-progress"), check=True, env=env,
                   capture_output=True)
    kill_at = random.Random(os.getpid()).randint(4, 20)  # a random step, past the first checkpoint
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli("train", "--config", str(cfg_path), "--data", str(phantom16),
                                 "--out", str(killed), "--threads", "1", "--no-progress"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = killed / "loss.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) - 1 >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "train_profile.json").exists()
    # A kill during torch.save may leave a hidden temporary file, never a valid-looking step_*.pt.
    for f in (killed / "checkpoints").glob("step_*.pt"):
        load_checkpoint(f)
    res = subprocess.run(_cli("train", "--config", str(cfg_path), "--data", str(phantom16), "--out",
                              str(killed), "--resume", "--threads", "1", "--no-progress"),
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert not list((killed / "checkpoints").glob(".*")), "resume left a partial checkpoint behind"
    a = load_checkpoint(latest_checkpoint(full))
    b = load_checkpoint(latest_checkpoint(killed))
    assert a["step"] == b["step"] == 24
    assert all(torch.equal(a["model"]["network"][k], b["model"]["network"][k])
               for k in a["model"]["network"]), f"weights differ after a kill at step {kill_at}"
    with open(killed / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 25))


def test_shell_values_are_quoted(phantom16, tmp_path):
    """A config path with spaces and ';' reaches the train rule intact (no shell injection)."""
    weird = tmp_path / "my configs; touch INJECTED"
    weird.mkdir()
    run_cfg = weird / "wdm tiny.yaml"
    cfg = dict(TINY_RUN)
    cfg["training"] = dict(TINY_RUN["training"], steps=2, checkpoint_every=2)
    run_cfg.write_text(yaml.safe_dump(cfg))
    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 4, "n_test": 2}},
        "model_configs": {"wdm": str(run_cfg)}, "threads": 1}))
    work = tmp_path / "work dir"
    work.mkdir()
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    res = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s",
                          str(REPO / "workflow" / "Snakefile"),
                          "results/phantom-brain/16/wdm/run/train_profile.json", "--cores", "1",
                          "--configfile", str(wf_cfg)], cwd=work, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (work / "results/phantom-brain/16/wdm/run/train_profile.json").exists()
    assert not (work / "INJECTED").exists() and not (tmp_path / "INJECTED").exists()


def test_rerun_after_failure_redoes_only_what_is_needed(tmp_path):
    """A failed evaluate job, then a fixed config: prepare/train/sample are not run again."""
    run_cfg = tmp_path / "wdm.yaml"
    cfg = dict(TINY_RUN)
    cfg["training"] = dict(TINY_RUN["training"], steps=2, checkpoint_every=2)
    run_cfg.write_text(yaml.safe_dump(cfg))

    def config(weights):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 4, "n_test": 2}},
            "models": ["wdm"],
            "model_configs": {"wdm": str(run_cfg)}, "threads": 1,
            "evaluation": {"n_samples": 3, "weights": weights, "depth": 10}}))
        return path

    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])

    def snakemake(cfg_path):
        return subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s",
                               str(REPO / "workflow" / "Snakefile"), "results/table1.csv",
                               "--cores", "1", "--keep-going", "--configfile", str(cfg_path)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    first = snakemake(config(str(tmp_path / "missing_weights.pth")))
    assert first.returncode != 0
    assert (tmp_path / "results/phantom-brain/16/wdm/samples/sample_profile.json").exists()
    assert not (tmp_path / "results/phantom-brain/16/wdm/metrics.json").exists()
    second = snakemake(config(None))
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    ran = {line.split()[-1].rstrip(":") for line in out.splitlines()
           if line.strip().startswith(("rule ", "localrule "))}
    assert "evaluate" in ran and "table1" in ran
    assert not ran & {"prepare_data", "train", "sample"}, ran


def test_killed_sampling_resumes_with_only_missing_volumes(phantom16, tmp_path):
    cfg = dict(TINY_RUN)
    cfg["sampling"] = dict(TINY_RUN["sampling"], steps=30, batch_size=1)
    run = tmp_path / "run"
    train(cfg, phantom16, run, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(_cli("sample", "--run", str(run), "--n", "6", "--seed", "5", "--out", str(ref),
                        "--threads", "1", "--no-progress"), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_cli("sample", "--run", str(run), "--n", "6", "--seed", "5", "--out",
                                 str(out), "--threads", "1", "--no-progress"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("sample_*.nii.gz"))) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("sample_*.nii.gz")}
    assert 2 <= len(done) < 6, f"kill came too late: {sorted(done)}"
    assert not (out / "sample_profile.json").exists()
    subprocess.run(_cli("sample", "--run", str(run), "--n", "6", "--seed", "5", "--out", str(out),
                        "--threads", "1", "--no-progress"), check=True, env=env, capture_output=True)
    for name, mtime in done.items():
        assert (out / name).stat().st_mtime_ns == mtime, f"{name} was written again"
    from wdm.io import load_nifti

    for i in range(6):
        name = f"sample_{i:04d}.nii.gz"
        assert (load_nifti(out / name)[0] == load_nifti(ref / name)[0]).all(), name
    assert not list(out.glob(".*")), "a temporary file was left behind"
