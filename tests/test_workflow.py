"""The Snakemake DAG: lint, dry run of the default, and one full run at 16^3 into table1.csv."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None and not
                                (Path(sys.executable).parent / "snakemake").exists(),
                                reason="snakemake not installed")


def _env() -> dict:
    env = dict(os.environ)
    # The rules call `wdm-bench`; make this interpreter's scripts folder first on PATH and hide
    # any conda so that --use-conda exercises the no-conda fallback.
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + ":".join(
        p for p in env.get("PATH", "").split(os.pathsep) if not (Path(p) / "conda").exists())
    return env


def _snakemake(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe) if exe.exists() else "snakemake", "-s", str(SNAKEFILE), *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)


def test_lint_is_clean(tmp_path):
    res = _snakemake("--lint", cwd=REPO)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr


def test_default_dry_run_resolves(tmp_path):
    res = _snakemake("-n", "--directory", str(tmp_path), "results/table1.csv", cwd=REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rule in ("prepare_data", "train", "sample", "evaluate", "sample_figure", "table1"):
        assert rule in out


def test_end_to_end_16cubed_into_table1(tmp_path):
    run_cfg = tmp_path / "wdm_tiny.yaml"
    cfg = dict(TINY_RUN)
    cfg["training"] = dict(TINY_RUN["training"], steps=4, checkpoint_every=2)
    run_cfg.write_text(yaml.safe_dump(cfg))
    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 6, "n_test": 4}},
        "models": ["wdm"],
        "model_configs": {"wdm": str(run_cfg)},
        "evaluation": {"n_samples": 4, "weights": None, "depth": 10},
        "threads": 1,
    }))
    res = _snakemake("results/table1.csv", "--cores", "2", "--use-conda", "--configfile",
                     str(wf_cfg), cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "neither conda nor mamba" in out  # --use-conda fell back to the current environment
    with open(tmp_path / "results" / "table1.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    ref, row = rows
    assert (ref["dataset"], ref["resolution"], ref["model"]) == ("phantom-brain", "16", "reference")
    assert (row["dataset"], row["resolution"], row["model"]) == ("phantom-brain", "16", "wdm")
    assert ref["n_real"] == "6" and ref["n_fake"] == "4"  # train split vs test split
    for r in (ref, row):
        assert float(r["fid_ci_low"]) <= float(r["fid_ci_high"])
        assert float(r["ms_ssim_ci_low"]) <= float(r["ms_ssim_ci_high"]) <= 1
        assert math.isfinite(float(r["mmd"])) and r["protocol"] == "wdm"
    # real features are extracted once per (dataset, res, protocol) and shared
    assert (tmp_path / "results" / "phantom-brain" / "16" / "real_features_wdm.npz").is_file()
    assert math.isfinite(float(row["fid"])) and float(row["fid"]) >= 0
    assert 0 < float(row["ms_ssim"]) <= 1
    assert "NOT MedicalNet" in row["feature_extractor"]
    assert row["n_fake"] == "4" and row["n_real"] == "6" and row["steps_trained"] == "4"
    assert row["sampler"] == "ddim" and row["sampler_steps"] == "4"
    assert float(row["train_s_per_iteration"]) > 0 and float(row["sample_peak_memory_gb"]) > 0
    assert (tmp_path / "results" / "figures" / "samples_phantom-brain_16.png").stat().st_size > 0
    assert (tmp_path / "logs" / "phantom-brain" / "16" / "wdm" / "train.log").exists()
    assert (tmp_path / "benchmarks" / "phantom-brain" / "16" / "wdm" / "train.tsv").exists()
    # A second invocation has nothing left to do.
    again = _snakemake("results/table1.csv", "--cores", "2", "--configfile", str(wf_cfg),
                       cwd=tmp_path)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # evaluation.ci_level reaches the intervals through the workflow config, and a change of it
    # re-runs the evaluations only (not training or sampling).
    wf = yaml.safe_load(wf_cfg.read_text())
    wf["evaluation"]["ci_level"] = 0.5
    wf_cfg.write_text(yaml.safe_dump(wf))
    narrow = _snakemake("results/table1.csv", "--cores", "2", "--configfile", str(wf_cfg), cwd=tmp_path)
    log = narrow.stdout + narrow.stderr
    assert narrow.returncode == 0, log
    assert "rule evaluate:" in log and "rule train:" not in log and "rule sample:" not in log
    with open(tmp_path / "results" / "table1.csv") as f:
        ref50, row50 = list(csv.DictReader(f))
    for wide, half in ((ref, ref50), (row, row50)):
        assert half["fid"] == wide["fid"]  # the same samples and features
        assert (float(half["fid_ci_high"]) - float(half["fid_ci_low"])
                < float(wide["fid_ci_high"]) - float(wide["fid_ci_low"]))
    metrics = json.loads((tmp_path / "results" / "phantom-brain" / "16" / "wdm" / "metrics.json").read_text())
    assert metrics["ci_level"] == 0.5 and metrics["config"]["ci_level"] == 0.5


# Fault injection for the next test, in test code only: a sitecustomize module on PYTHONPATH runs
# at the start of every Python process that Snakemake launches, and makes `wdm-bench STAGE` of one
# model run out of memory (a monkeypatch cannot cross into those processes).
_FAKE_OOM = '''
import os, sys
_stage, _model = os.environ.get("WDM_TEST_OOM", ":").split(":")
if (sys.argv[0].endswith("wdm-bench") and sys.argv[1:2] == [_stage]
        and any(f"/{_model}/" in a for a in sys.argv)):
    import torch
    def _oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (test hook)")
    if _stage == "train":
        import wdm.loop
        wdm.loop._get_batch = _oom
    else:
        from wdm.model import get_model_class
        get_model_class(_model).generate = _oom
'''


@pytest.mark.slow  # two 16^3 DAG runs (~35 s each): CI's slow step, keeping the default under 10 min
@pytest.mark.parametrize("stage", ["train", "sample"])
def test_out_of_memory_gives_an_oom_row_not_a_failed_dag(tmp_path, stage):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FAKE_OOM)
    run_cfg = tmp_path / "wdm_tiny.yaml"
    run_cfg.write_text(yaml.safe_dump(dict(TINY_RUN, training=dict(TINY_RUN["training"], steps=2,
                                                                   checkpoint_every=2))))
    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 4, "n_test": 3}},
        "models": ["wdm"],
        "model_configs": {"wdm": str(run_cfg)},
        "evaluation": {"n_samples": 3, "weights": None, "depth": 10, "n_bootstrap": 0},
        "threads": 1,
    }))
    exe = Path(sys.executable).parent / "snakemake"
    env = dict(_env(), PYTHONPATH=os.pathsep.join(filter(None, [str(hook), os.environ.get(
        "PYTHONPATH")])), WDM_TEST_OOM=f"{stage}:wdm")
    res = subprocess.run([str(exe) if exe.exists() else "snakemake", "-s", str(SNAKEFILE),
                          "results/table1.csv", "--cores", "2", "--configfile", str(wf_cfg)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    cell = tmp_path / "results" / "phantom-brain" / "16" / "wdm"
    prof = json.loads((cell / "samples" / "sample_profile.json").read_text())
    assert prof["status"] == "oom" and prof["failed_stage"] == stage
    assert "CUDA out of memory" in prof["error"] and not list(cell.glob("samples/*.nii.gz"))
    metrics = json.loads((cell / "metrics.json").read_text())
    assert metrics["status"] == "oom" and metrics["fid"] is None
    with open(tmp_path / "results" / "table1.csv") as f:
        ref, row = csv.DictReader(f)
    assert ref["model"] == "reference" and ref["status"] == "ok" and float(ref["fid"]) >= 0
    assert row["model"] == "wdm" and row["status"] == "oom" and row["fid"] == row["ms_ssim"] == "OOM"
    failed, other = ("train", "sample") if stage == "train" else ("sample", "train")
    assert row[f"{failed}_s_per_iteration" if failed == "train" else f"{failed}_s_per_volume"] == "OOM"
    assert row[f"{other}_peak_memory_gb"] != "OOM"
    assert (tmp_path / "results" / "figures" / "samples_phantom-brain_16.png").stat().st_size > 0
