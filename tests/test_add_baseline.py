"""A baseline joins the DAG by adding its own three files only (README "Adding a baseline").

The test writes a toy baseline -- a module ``baselines/toy/__init__.py``, a run config
``config/models/toy.yaml`` and a rule file ``workflow/rules/models/toy.smk`` -- into a copy of the
workflow, runs Snakemake on that copy into ``results/table1.csv`` at 16^3, and checks that every
rule file it did not add is byte-identical to the repository's. The toy module lives in a
``baselines`` package on ``PYTHONPATH`` (which Python searches before the installed package),
so the repository's own ``baselines/`` is not touched either.
"""

from __future__ import annotations

import csv
import filecmp
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None and not
                                (Path(sys.executable).parent / "snakemake").exists(),
                                reason="snakemake not installed")

#: The whole toy baseline: a learned mean volume plus Gaussian noise at sampling.
TOY_MODULE = textwrap.dedent('''
    """Toy baseline: a learned mean volume (1, 1, D, H, W); samples are mean + 0.1 N(0, I)."""
    import torch
    from torch import nn


    class Model:
        name = "toy"

        def __init__(self, cfg, volume_shape):
            self.net = nn.Module()
            self.net.mean = nn.Parameter(torch.zeros(1, 1, *volume_shape))

        def modules(self):
            return {"net": self.net}

        def loss(self, x, generator):
            return torch.mean((self.net.mean - x) ** 2)

        @torch.no_grad()
        def generate(self, n, generator, *, device="cpu", **sampling):
            noise = torch.randn((n, *self.net.mean.shape[1:]), generator=generator,
                                device=generator.device).to(device)
            return (self.net.mean + 0.1 * noise).clamp(-1.0, 1.0)
''')

TOY_RULES = 'register_model("toy")\n'

TOY_CONFIG = {
    "model": "toy",
    "training": {"steps": 3, "batch_size": 2, "lr": 0.1, "checkpoint_every": 3, "log_every": 1,
                 "device": "cpu"},
    "sampling": {"batch_size": 2, "device": "cpu"},
}


def _env(pythonpath: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    return env


@pytest.mark.slow
def test_toy_baseline_runs_through_the_dag_with_no_rule_edited(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "workflow", copy / "workflow")  # the schema link is copied as a file
    # The toy's three files.
    pkg = tmp_path / "pysrc" / "baselines"
    (pkg / "toy").mkdir(parents=True)
    shutil.copy(REPO / "baselines" / "__init__.py", pkg / "__init__.py")
    (pkg / "toy" / "__init__.py").write_text(TOY_MODULE)
    (copy / "config" / "models").mkdir(parents=True)
    (copy / "config" / "models" / "toy.yaml").write_text(yaml.safe_dump(TOY_CONFIG))
    (copy / "workflow" / "rules" / "models" / "toy.smk").write_text(TOY_RULES)

    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 4, "n_test": 3}},
        "models": ["toy"],
        "evaluation": {"n_samples": 3, "weights": None, "depth": 10, "n_bootstrap": 0},
        "threads": 1,
    }))
    work = tmp_path / "work"
    work.mkdir()
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe) if exe.exists() else "snakemake", "-s", str(copy / "workflow" / "Snakefile"),
           "results/table1.csv", "--cores", "2", "--configfile", str(wf_cfg)]
    res = subprocess.run(cmd, cwd=work, env=_env(tmp_path / "pysrc"), capture_output=True,
                         text=True, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out + "".join(
        p.read_text() for p in (work / "logs").rglob("*.log"))

    with open(work / "results" / "table1.csv") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert "toy" in rows, rows
    toy = rows["toy"]
    assert (toy["dataset"], toy["resolution"]) == ("phantom-brain", "16")
    assert toy["n_fake"] == "3" and toy["steps_trained"] == "3"
    assert math.isfinite(float(toy["fid"])) and 0 < float(toy["ms_ssim"]) <= 1
    assert float(toy["train_s_per_iteration"]) > 0
    assert (work / "results" / "phantom-brain" / "16" / "toy" / "samples" /
            "sample_0002.nii.gz").is_file()

    # Nothing but the toy's own rule file differs from the repository's workflow.
    added = {Path("rules/models/toy.smk")}
    for path in (copy / "workflow").rglob("*"):
        rel = path.relative_to(copy / "workflow")
        if path.is_file() and rel not in added and "__pycache__" not in rel.parts:
            assert filecmp.cmp(path, REPO / "workflow" / rel, shallow=False), rel
    assert {p.name for p in (copy / "workflow" / "rules" / "models").glob("*.smk")} == {
        p.name for p in (REPO / "workflow" / "rules" / "models").glob("*.smk")} | {"toy.smk"}
