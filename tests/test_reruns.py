"""Rerun semantics and provenance (README "Reruns and provenance"): nothing wrong, nothing lost.

Training: the same run continues, a finished one is kept with its measurements, another one is
moved aside; one writer per folder. Sampling: a set is reused only for the same checkpoint,
sampler, steps, eta, seed and batch size, otherwise replaced as a whole; NaN volumes are refused.
The table refuses rows that mix provenances. The slow test reruns the 16^3 DAG after a change of
steps, of lr and of the network and compares every number with a clean run of the new config.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from eval.tables import table_row
from tests.conftest import TINY_RUN
from wdm.io import InputError
from wdm.locks import folder_lock
from wdm.sample import PROVENANCE, sample
from wdm.train import train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def _finished(phantom16, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(TINY_RUN, phantom16, run, progress=False)
    return run


@pytest.fixture()
def finished(_finished, tmp_path) -> Path:
    return Path(shutil.copytree(_finished, tmp_path / "run"))


def test_rerun_of_a_finished_run_trains_nothing_and_keeps_every_measurement(finished, phantom16):
    before = json.loads((finished / "train_profile.json").read_text())
    ckpts = {p.name: p.stat().st_mtime_ns for p in (finished / "checkpoints").iterdir()}
    (finished / "train_profile.json").unlink()  # as Snakemake does before it reruns a job
    again = train(TINY_RUN, phantom16, finished, resume=True, progress=False)
    assert again == before and again["s_per_iteration"] > 0 and again["config_hash"] == before["config_hash"]
    assert json.loads((finished / "train_profile.json").read_text()) == before
    assert {p.name: p.stat().st_mtime_ns for p in (finished / "checkpoints").iterdir()} == ckpts
    saved = yaml.safe_load((finished / "config.yaml").read_text())
    assert saved["training"]["lr"] == TINY_RUN["training"].get("lr", saved["training"]["lr"])


def test_operational_settings_do_not_make_another_run(finished, phantom16):
    cfg = copy.deepcopy(TINY_RUN)
    cfg["training"].update(log_every=2, keep_last=2, cache_data=False)
    cfg["sampling"] = dict(cfg["sampling"], steps=3)  # training never reads sampling
    again = train(cfg, phantom16, finished, resume=True, progress=False)
    assert again["steps_trained"] == TINY_RUN["training"]["steps"]
    assert not list(finished.parent.glob("run.replaced-*"))


@pytest.mark.parametrize("change", [
    {"lr": 0.003},
    pytest.param({"seed": 7}, marks=pytest.mark.slow),
    pytest.param({"steps": 8}, marks=pytest.mark.slow),
], ids=["lr", "seed", "steps"])
def test_a_changed_config_moves_the_old_run_aside_and_starts_fresh(finished, phantom16, change):
    cfg = copy.deepcopy(TINY_RUN)
    cfg["training"].update(change)
    prof = train(cfg, phantom16, finished, resume=True, progress=False)
    assert prof["steps_trained"] == cfg["training"]["steps"]
    (aside,) = finished.parent.glob("run.replaced-*")
    assert (aside / "train_profile.json").is_file()  # the old run, whole
    with open(finished / "loss.csv") as f:  # the new run from step 1, not continued
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, cfg["training"]["steps"] + 1))
    assert yaml.safe_load((finished / "config.yaml").read_text())["training"]["lr"] == cfg[
        "training"].get("lr", yaml.safe_load((aside / "config.yaml").read_text())["training"]["lr"])


def test_other_data_make_another_run(finished, phantom16, tmp_path):
    data = Path(shutil.copytree(phantom16, tmp_path / "data"))
    (data / "manifest.csv").write_text((data / "manifest.csv").read_text() + "\n")
    train(TINY_RUN, data, finished, resume=True, progress=False)
    assert len(list(finished.parent.glob("run.replaced-*"))) == 1


def test_a_second_writer_is_refused(phantom16, tmp_path):
    run = tmp_path / "run"
    with folder_lock(run, "training"), pytest.raises(InputError, match=r"another process \(pid"):
        train(TINY_RUN, phantom16, run, progress=False)
    assert not run.exists()
    with folder_lock(tmp_path / "s", "sampling"):
        with pytest.raises(InputError, match="another process"):
            with folder_lock(tmp_path / "s", "sampling"):
                pass


@pytest.mark.slow
def test_two_train_processes_into_one_folder(phantom16, tmp_path):
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY_RUN, training=dict(TINY_RUN["training"], steps=400))))
    cmd = [sys.executable, "-m", "wdm.cli", "train", "--config", str(cfg), "--data", str(phantom16),
           "--out", str(tmp_path / "run"), "--no-progress", "--threads", "1"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if (tmp_path / "run" / "loss.csv").exists():
                break
            first.poll()
            assert first.returncode is None, first.stderr.read()
            import time
            time.sleep(0.05)
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines()[-1].startswith("wdm-bench train: error: ")
        assert "another process" in second.stderr and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


def _vols(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("sample_*.nii.gz"))}


def test_samples_carry_their_provenance_and_are_reused_only_when_it_matches(finished, tmp_path):
    out = tmp_path / "s"
    prof = sample(finished, 3, 11, out, progress=False)
    prov = json.loads((out / PROVENANCE).read_text())
    assert prov["key"] == prof["provenance_key"] and prov["seed"] == 11
    assert prov["checkpoint_sha256"] == prof["checkpoint_sha256"] == json.loads(
        (finished / "train_profile.json").read_text())["checkpoint"]["sha256"]
    first = _vols(out)
    (out / "sample_profile.json").unlink()  # as Snakemake does before it reruns a job
    kept = sample(finished, 3, 11, out, progress=False)
    assert kept == prof and _vols(out) == first  # nothing regenerated, measurements kept
    other = sample(finished, 3, 12, out, progress=False)  # another seed: the whole set replaced
    assert other["provenance_key"] != prof["provenance_key"]
    assert json.loads((out / PROVENANCE).read_text())["seed"] == 12
    fresh = tmp_path / "fresh"
    sample(finished, 3, 12, fresh, progress=False)
    assert _vols(out) == _vols(fresh)  # exactly the set a clean run with seed 12 makes


def test_samples_of_a_retrained_run_replace_the_old_set(phantom16, tmp_path):
    run, out = tmp_path / "run", tmp_path / "s"
    train(TINY_RUN, phantom16, run, progress=False)
    sample(run, 2, 0, out, progress=False)
    old = _vols(out)
    cfg = copy.deepcopy(TINY_RUN)
    cfg["training"]["lr"] = 0.01
    train(cfg, phantom16, run, resume=True, progress=False)
    sample(run, 2, 0, out, progress=False)
    clean = tmp_path / "clean"
    sample(run, 2, 0, clean, progress=False)
    assert _vols(out) == _vols(clean) != old


def test_a_samples_folder_with_other_files_is_refused(finished, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not samples"):
        sample(finished, 1, 0, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_nan_volumes_are_refused(finished, tmp_path):
    ckpt = sorted((finished / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)
    state["model"]["network"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                                 for k, v in state["model"]["network"].items()}
    torch.save(state, ckpt)
    with pytest.raises(InputError, match="NaN/Inf voxels"):
        sample(finished, 2, 0, tmp_path / "s", progress=False)
    assert not list((tmp_path / "s").glob("sample_*"))
    assert not (tmp_path / "s" / "sample_profile.json").exists()


@pytest.mark.parametrize("flags, needle", [
    ({"steps": 0}, "sampling.steps: 0 is less than the minimum of 1"),
    ({"batch_size": 0}, "sampling.batch_size: 0 is less than the minimum of 1"),
    ({"steps": 101}, "sampling.steps: 101 exceeds the 100 timesteps"),
], ids=["steps-0", "batch-0", "steps-above-T"])
def test_sampling_flags_go_through_the_schema(finished, tmp_path, flags, needle):
    with pytest.raises(InputError, match=needle):
        sample(finished, 2, 0, tmp_path / "s", progress=False, **flags)
    assert not (tmp_path / "s").exists()


def _cell(tmp_path: Path, finished: Path) -> Path:
    cell = tmp_path / "results" / "d" / "16" / "wdm"
    shutil.copytree(finished, cell / "run")
    prof = sample(cell / "run", 2, 0, cell / "samples", progress=False)
    (cell / "metrics.json").write_text(json.dumps({"status": "ok", "fid": 1.0,
                                                   "samples_provenance_key": prof["provenance_key"]}))
    return cell


def test_the_table_refuses_rows_that_mix_provenances(finished, tmp_path):
    cell = _cell(tmp_path, finished)
    assert table_row(cell / "metrics.json")["fid"] == 1.0
    m = json.loads((cell / "metrics.json").read_text())
    (cell / "metrics.json").write_text(json.dumps({**m, "samples_provenance_key": "0" * 16}))
    with pytest.raises(InputError, match="evaluate again"):
        table_row(cell / "metrics.json")
    (cell / "metrics.json").write_text(json.dumps(m))
    tp = json.loads((cell / "run" / "train_profile.json").read_text())
    tp["checkpoint"]["sha256"] = "f" * 64
    (cell / "run" / "train_profile.json").write_text(json.dumps(tp))
    with pytest.raises(InputError, match="sample again"):
        table_row(cell / "metrics.json")


# -- the DAG, end to end ------------------------------------------------------------------------
def _dag(workdir: Path, run_cfg: dict) -> dict[str, str]:
    """Run the 16^3 DAG for wdm in ``workdir`` with ``run_cfg``; every number of the wdm row."""
    (workdir / "wdm.yaml").write_text(yaml.safe_dump(run_cfg))
    (workdir / "config.yaml").write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 4, "n_test": 3}},
        "models": ["wdm"], "model_configs": {"wdm": str(workdir / "wdm.yaml")},
        "evaluation": {"n_samples": 3, "weights": None, "depth": 10, "n_bootstrap": 20},
        "threads": 1}))
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    res = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-s",
                          str(REPO / "workflow" / "Snakefile"), "results/table1.csv", "--cores", "2",
                          "--configfile", str(workdir / "config.yaml")],
                         cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    with open(workdir / "results" / "table1.csv") as f:
        row = next(r for r in csv.DictReader(f) if r["model"] == "wdm")
    samples = workdir / "results" / "phantom-brain" / "16" / "wdm" / "samples"
    timing = {"train_s_per_iteration", "train_peak_memory_gb", "sample_s_per_volume",
              "sample_peak_memory_gb", "code_version"}
    return {**{k: v for k, v in row.items() if k not in timing}, **_vols_hex(samples)}


def _vols_hex(folder: Path) -> dict[str, str]:
    import hashlib

    return {name: hashlib.sha256(data).hexdigest() for name, data in _vols(folder).items()}


@pytest.mark.slow
@pytest.mark.parametrize("change", ["steps", "lr", "network"])
def test_a_dag_rerun_after_a_config_change_gives_the_numbers_of_a_clean_run(tmp_path, change):
    base = copy.deepcopy(TINY_RUN)
    base["training"] = dict(base["training"], steps=4, checkpoint_every=2)
    new = copy.deepcopy(base)
    if change == "steps":
        new["training"]["steps"] = 6
    elif change == "lr":
        new["training"]["lr"] = 0.003
    else:
        new["network"] = {"preset": "tiny", "base_channels": 8}
    (tmp_path / "rerun").mkdir()
    (tmp_path / "clean").mkdir()
    before = _dag(tmp_path / "rerun", base)
    after = _dag(tmp_path / "rerun", new)
    clean = _dag(tmp_path / "clean", new)
    assert after == clean
    assert after != before


def test_a_damaged_loss_log_row_does_not_block_resume(phantom16, tmp_path):
    run = tmp_path / "run"
    train(TINY_RUN, phantom16, run, progress=False, max_steps=3)
    with open(run / "loss.csv", "a") as f:
        f.write("4,0.12")  # a job killed mid-line
    prof = train(TINY_RUN, phantom16, run, resume=True, progress=False)
    assert prof["steps_trained"] == TINY_RUN["training"]["steps"]
    with open(run / "loss.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 7))


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_old_checkpoints(
        phantom16, tmp_path, monkeypatch):
    import errno

    import wdm.checkpoints as ck

    run = tmp_path / "run"
    train(TINY_RUN, phantom16, run, progress=False, max_steps=3)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())

    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(InputError, match=r"step_0000006\.pt: could not write the checkpoint \(No space"):
        train(TINY_RUN, phantom16, run, resume=True, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
