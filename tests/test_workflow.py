"""The Snakemake DAG: lint, dry run of the default, and one full run at 16^3 into table1.csv."""

from __future__ import annotations

import csv
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
