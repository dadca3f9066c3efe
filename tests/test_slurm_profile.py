"""workflow/profiles/slurm: the SLURM profile resolves the default DAG in a dry run (no sbatch needed)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "workflow" / "profiles" / "slurm"
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

pytestmark = pytest.mark.skipif(
    not SNAKEMAKE.exists() or importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake or snakemake-executor-plugin-slurm not installed (pip install -e '.[slurm]')",
)

GPU_RULES = ("train", "sample", "train_stage")


def test_profile_names_existing_rules_and_gives_gpus_to_training_and_sampling():
    prof = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert prof["executor"] == "slurm"
    rules_text = "".join(p.read_text() for p in (REPO / "workflow").rglob("*.smk"))
    for rule in set(prof["set-resources"]) | set(prof["set-threads"]):
        assert f"rule {rule}:" in rules_text, rule
    for rule in GPU_RULES:
        assert prof["set-resources"][rule]["gpu"] == 1, rule
    for rule, res in prof["set-resources"].items():
        if rule in prof["set-threads"]:
            assert res["cpus_per_task"] == prof["set-threads"][rule], rule


def test_dry_run_with_the_slurm_profile_resolves(tmp_path):
    env = dict(os.environ, PATH=str(SNAKEMAKE.parent) + os.pathsep + os.environ.get("PATH", ""))
    res = subprocess.run(
        [str(SNAKEMAKE), "-n", "--profile", "workflow/profiles/slurm", "--directory", str(tmp_path),
         "results/table1.csv"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Using profile workflow/profiles/slurm" in out
    for rule in ("prepare_data", "train", "sample", "evaluate", "table1"):
        assert f"rule {rule}:" in out, rule
    train = out.split("rule train:", 1)[1].split("Shell command", 1)[0]
    assert "gpu=1" in train and "slurm_partition=gpu" in train and "mem_mb=32000" in train
