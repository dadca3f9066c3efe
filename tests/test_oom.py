"""Out-of-memory errors travel down the pipeline as ``"status": "oom"`` instead of failing it.

Training OOM -> sampling writes an oom profile and no volume; sampling OOM -> the failed batch's
volumes are removed; an oom sample profile -> evaluation writes oom metrics without reading any
volume. (The table's OOM rows are tested in test_tables.py, the whole DAG in test_workflow.py.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import eval.evaluate as evaluate_mod
from eval.evaluate import MEASURED_KEYS, evaluate
from eval.figures import sample_grid
from tests.conftest import TINY_RUN
from wdm.cli import main
from wdm.config import EvaluationSettings
from wdm.io import InputError, save_nifti
from wdm.model import get_model_class
from wdm.oom import is_out_of_memory, one_line, read_status
from wdm.sample import sample
from wdm.train import train

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
           "you tried to allocate 1073741824 bytes. Error code 12 (Cannot allocate memory)")
TRAIN_OOM = {"status": "oom", "model": "wdm", "error": "OutOfMemoryError: CUDA out of memory. "
             "Tried to allocate 2.00 GiB", "s_per_iteration": None, "peak_memory_gb": None}


def test_is_out_of_memory_tells_allocation_failures_from_bugs():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocation error type
    # oneDNN: a primitive whose creation failed (scratchpad / JIT buffer) is memory; a descriptor
    # that could not be created is an unsupported configuration, a bug to report
    assert is_out_of_memory(RuntimeError("could not create a primitive"))
    assert is_out_of_memory(RuntimeError("could not execute a primitive"))
    assert not is_out_of_memory(RuntimeError(
        "could not create a primitive descriptor for a convolution forward propagation primitive"))
    assert one_line(RuntimeError("a\n  b")) == "RuntimeError: a b"
    assert len(one_line(RuntimeError("x" * 1000), limit=50)) == 50


def test_read_status(tmp_path):
    assert read_status(tmp_path / "missing.json") == ("ok", {})
    (tmp_path / "old.json").write_text(json.dumps({"s_per_iteration": 0.1}))  # before "status"
    assert read_status(tmp_path / "old.json")[0] == "ok"
    (tmp_path / "oom.json").write_text(json.dumps(TRAIN_OOM))
    assert read_status(tmp_path / "oom.json") == ("oom", TRAIN_OOM)
    (tmp_path / "bad.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(InputError, match=r"bad\.json: field 'status' is 'failed'"):
        read_status(tmp_path / "bad.json")


def test_sample_after_training_oom_writes_oom_profile_and_no_volume(tmp_path, capsys):
    run, out = tmp_path / "run", tmp_path / "samples"
    run.mkdir()  # no checkpoint: training never got far enough to save one
    (run / "train_profile.json").write_text(json.dumps(TRAIN_OOM))
    rc = main(["sample", "--run", str(run), "--n", "4", "--seed", "0", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    prof = json.loads((out / "sample_profile.json").read_text())
    assert prof["status"] == "oom" and prof["failed_stage"] == "train"
    assert prof["error"] == "training ran out of memory: " + TRAIN_OOM["error"]
    assert prof["s_per_volume"] is None and prof["peak_memory_gb"] is None
    assert (prof["model"], prof["n"], prof["seed"]) == ("wdm", 4, 0)
    assert [p.name for p in out.iterdir()] == ["sample_profile.json"]


@pytest.fixture(scope="module")
def tiny_run(phantom16, tmp_path_factory):
    """A WDM run trained for 2 steps at 16^3 (sampling: DDIM, 4 steps, batch size 2)."""
    cfg = dict(TINY_RUN, training=dict(TINY_RUN["training"], steps=2, checkpoint_every=2))
    root = tmp_path_factory.mktemp("oom_run")
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    train(root / "cfg.yaml", phantom16, root / "run", progress=False)
    return root / "run"


def _fail_on_call(fn, k: int, exc: BaseException):
    """``fn`` that raises ``exc`` on its ``k``-th call (1-based)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise exc
        return fn(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize("where", ["generate", "save"])
def test_sample_oom_mid_run_removes_the_failed_batch(tiny_run, tmp_path, monkeypatch, caplog, where):
    import wdm.sample as sample_mod

    cls = get_model_class("wdm")
    if where == "generate":  # 2nd batch: nothing of it was written yet
        monkeypatch.setattr(cls, "generate", _fail_on_call(
            cls.generate, 2, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")))
    else:  # 4th volume = 2nd of batch 2: its 1st volume is on disk already and must go
        monkeypatch.setattr(sample_mod, "save_nifti", _fail_on_call(
            sample_mod.save_nifti, 4, RuntimeError(CPU_OOM)))
    out = tmp_path / "samples"
    prof = sample(tiny_run, 6, 0, out, progress=False)
    assert prof["status"] == "oom" and prof["failed_stage"] == "sample"
    assert "sampling ran out of memory (model wdm, volumes (16, 16, 16), batch size 2" in prof["error"]
    assert ("OutOfMemoryError" if where == "generate" else "DefaultCPUAllocator") in prof["error"]
    assert prof["s_per_volume"] is None and prof["peak_memory_gb"] is None
    assert json.loads((out / "sample_profile.json").read_text())["status"] == "oom"
    # batch 1 is kept, batch 2's volume(s) removed, batch 3 never made, no temporary file left
    assert sorted(p.name for p in out.iterdir()) == [
        "provenance.json", "sample_0000.nii.gz", "sample_0001.nii.gz", "sample_profile.json"]
    assert "smaller sampling.batch_size (--batch-size 1)" in caplog.text

    monkeypatch.undo()  # a second run (more memory) completes the set and says ok
    again = sample(tiny_run, 6, 0, out, progress=False)
    assert again["status"] == "ok" and again["error"] is None and again["s_per_volume"] > 0
    assert len(list(out.glob("sample_*.nii.gz"))) == 6


def test_sample_other_runtime_errors_still_raise(tiny_run, tmp_path, monkeypatch):
    cls = get_model_class("wdm")
    monkeypatch.setattr(cls, "generate", _fail_on_call(cls.generate, 1, RuntimeError("shape bug")))
    with pytest.raises(RuntimeError, match="shape bug"):
        sample(tiny_run, 2, 0, tmp_path / "samples", progress=False)
    assert not (tmp_path / "samples" / "sample_profile.json").exists()


def _oom_samples(folder, failed_stage="sample"):
    folder.mkdir(parents=True)
    (folder / "sample_profile.json").write_text(json.dumps({
        "status": "oom", "failed_stage": failed_stage, "seed": 3,
        "error": "sampling ran out of memory (model wdm, batch size 2): OutOfMemoryError: x"}))
    return folder


def test_evaluate_oom_samples_gives_null_metrics_without_features(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for name in ("real", "fake"):
        (tmp_path / name).mkdir()
        for i in range(3):
            save_nifti(tmp_path / name / f"v{i}.nii.gz", rng.random((16, 16, 16)).astype(np.float32))
    ok = evaluate(tmp_path / "real", tmp_path / "fake",
                  EvaluationSettings.from_mapping({"weights": None, "depth": 10, "n_bootstrap": 0}))
    assert ok["status"] == "ok"

    def forbidden(*args, **kwargs):
        raise AssertionError("feature extraction must not run for an oom sample folder")
    monkeypatch.setattr(evaluate_mod, "_Extractor", forbidden)
    monkeypatch.setattr(evaluate_mod, "load_real_stats", forbidden)
    fake = _oom_samples(tmp_path / "oom_samples")
    res = evaluate(None, fake, EvaluationSettings.from_mapping({"weights": None, "depth": 10, "seed": 5}),
                   real_stats=tmp_path / "never_read.npz")
    assert res["status"] == "oom" and res["failed_stage"] == "sample"
    assert res["error"].startswith("sampling ran out of memory")
    assert set(res) == set(ok) | {"error", "failed_stage"}  # the same fields, plus why
    assert all(res[k] is None for k in MEASURED_KEYS)
    assert (res["protocol"], res["seed"], res["seeds"]["sampling"]) == ("wdm", 5, 3)
    assert res["fake_dir"] == str(fake) and res["real_stats"].endswith("never_read.npz")

    out = tmp_path / "metrics.json"  # the CLI writes it and exits 0
    rc = main(["evaluate", "--real-stats", str(tmp_path / "never_read.npz"), "--fake", str(fake),
               "--out", str(out), "--weights", "none", "--depth", "10", "--n-fake", "4"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads(out.read_text())
    assert saved["status"] == "oom" and saved["fid"] is None and saved["config"]["depth"] == 10


def test_figure_shows_an_oom_model_as_a_row_of_text(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    save_nifti(real / "v0.nii.gz", np.full((8, 8, 8), 0.5, np.float32))
    png = sample_grid({"real": str(real), "big": str(_oom_samples(tmp_path / "big"))},
                      tmp_path / "grid.png", n=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
