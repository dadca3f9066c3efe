"""A baseline joins the DAG by adding its own files only (README "Adding a baseline").

The test writes a toy baseline -- a module ``baselines/toy/__init__.py`` with settings of its own
(``baselines/toy/config.schema.yaml``, the schema of the ``toy:`` section of its run config), a
run config ``config/models/toy.yaml`` and a rule file ``workflow/rules/models/toy.smk`` -- into a
copy of the workflow, runs Snakemake on that copy into ``results/table1.csv`` at 16^3, and checks
that every workflow file it did not add is byte-identical to the repository's, and that the
central schema knows nothing of ``toy``. The toy package lives in a ``baselines`` package on
``PYTHONPATH`` (which Python searches before the installed package), so the repository's own
``baselines/`` is not touched either.
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
    """Toy baseline: a learned mean volume (1, 1, D, H, W); samples are mean + toy.noise N(0, I)."""
    import torch
    from torch import nn

    from wdm.model import BenchmarkModel, register_model


    @register_model("toy")
    class Model(BenchmarkModel):
        def __init__(self, cfg, volume_shape):
            super().__init__(cfg, volume_shape)
            self.noise = cfg["toy"]["noise"]
            self.net = nn.Module()
            self.net.mean = nn.Parameter(torch.zeros(1, 1, *volume_shape))

        def modules(self):
            return {"net": self.net}

        def loss(self, x, generator, shard=None):
            return torch.mean((self.net.mean - x) ** 2)

        @torch.no_grad()
        def generate(self, n, generator, *, device="cpu", **sampling):
            noise = torch.randn((n, *self.net.mean.shape[1:]), generator=generator,
                                device=generator.device).to(device)
            return (self.net.mean + self.noise * noise).clamp(-1.0, 1.0)
''')

#: The toy's own settings: the `toy:` section of its run configs, merged in by wdm.config.
TOY_SCHEMA = {
    "type": "object", "default": {}, "additionalProperties": False,
    "properties": {"noise": {"type": "number", "minimum": 0, "default": 0.1},
                   "label": {"type": "string", "default": "toy"}},
}

TOY_RULES = 'register_model("toy")\n'

TOY_CONFIG = {
    "model": "toy",
    "toy": {"noise": 0.05},
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
    (pkg / "toy" / "config.schema.yaml").write_text(yaml.safe_dump(TOY_SCHEMA))
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

    # The toy's settings were validated by its own fragment: given value kept, default filled in.
    saved = yaml.safe_load((work / "results" / "phantom-brain" / "16" / "toy" / "run" /
                            "config.yaml").read_text())
    assert saved["toy"] == {"noise": 0.05, "label": "toy"}
    assert "toy" not in (REPO / "wdm" / "schema" / "config.schema.yaml").read_text()

    # Nothing but the toy's own rule file differs from the repository's workflow.
    added = {Path("rules/models/toy.smk")}
    for path in (copy / "workflow").rglob("*"):
        rel = path.relative_to(copy / "workflow")
        if path.is_file() and rel not in added and "__pycache__" not in rel.parts:
            assert filecmp.cmp(path, REPO / "workflow" / rel, shallow=False), rel
    assert {p.name for p in (copy / "workflow" / "rules" / "models").glob("*.smk")} == {
        p.name for p in (REPO / "workflow" / "rules" / "models").glob("*.smk")} | {"toy.smk"}


def test_a_baseline_section_is_validated_by_its_own_fragment(tmp_path, monkeypatch):
    """Defaults, bounds and one-line errors of a model's own section come from its fragment."""
    import baselines
    from wdm import config as wcfg
    from wdm.io import InputError

    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text("")
    (tmp_path / "toy" / "config.schema.yaml").write_text(yaml.safe_dump(TOY_SCHEMA))
    monkeypatch.setattr(baselines, "__path__", [*baselines.__path__, str(tmp_path)])
    for cached in (wcfg.model_schema_fragment, wcfg._run_schema):
        cached.cache_clear()
    try:
        cfg = wcfg.resolve_run_config({"model": "toy"})
        assert cfg["toy"] == {"noise": 0.1, "label": "toy"}
        with pytest.raises(InputError, match=r"toy\.noise: -1 is less than the minimum of 0"):
            wcfg.resolve_run_config({"model": "toy", "toy": {"noise": -1}}, source="toy.yaml")
        with pytest.raises(InputError, match="Additional properties"):  # only the model's own section
            wcfg.resolve_run_config({"model": "wdm", "network": {}, "toy2": {}})
        assert "toy" not in wcfg.resolve_run_config({"model": "wdm"})
    finally:
        for cached in (wcfg.model_schema_fragment, wcfg._run_schema):
            cached.cache_clear()
