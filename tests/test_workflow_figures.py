"""The figures / paper-comparison part of the DAG: dry run of `figures`, and `snakemake --report`."""

from __future__ import annotations

import csv
import zipfile

import pytest
import yaml

from tests.conftest import TINY_RUN
from tests.test_workflow import REPO, _snakemake

pytestmark = pytest.mark.skipif(_snakemake is None, reason="snakemake not installed")


def test_figures_target_dry_run_resolves(tmp_path):
    res = _snakemake("-n", "--directory", str(tmp_path), "figures", cwd=REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rule in ("sample_figure_model", "loss_figure", "sample_steps", "evaluate_steps",
                 "fid_vs_steps", "sample_figure"):
        assert f"rule {rule}:" in out, rule
    assert "table1_vs_paper" not in out and "rule table1:" not in out  # figures do not need the table
    assert "steps=1000" in out and "sampler=ddpm" in out  # the default sweep's DDPM-1000 point
    assert "results/figures/samples_phantom-brain_32_hagan.png" in out
    assert "steps/hagan" not in out.replace("\\", "/")  # the sweep is for diffusion models only


def test_default_target_adds_comparison_and_figures(tmp_path):
    res = _snakemake("-n", "--directory", str(tmp_path), cwd=REPO)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    for rule in ("table1", "table1_vs_paper", "fid_vs_steps", "loss_figure", "all"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule


@pytest.mark.slow
def test_report_16cubed_holds_table_and_figures(tmp_path):
    run_cfg = tmp_path / "wdm_tiny.yaml"
    run_cfg.write_text(yaml.safe_dump(dict(TINY_RUN, training=dict(TINY_RUN["training"], steps=4))))
    wf_cfg = tmp_path / "config.yaml"
    wf = {
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 6, "n_test": 4}},
        "models": ["wdm"],
        "model_configs": {"wdm": str(run_cfg)},
        "evaluation": {"n_samples": 4, "weights": None, "depth": 10, "n_bootstrap": 20},
        "figures": {"sweep": {"n_samples": 3, "points": [
            {"sampler": "ddpm", "steps": 8}, {"sampler": "ddim", "steps": 2},
            {"sampler": "ddim", "steps": 4}]}},
        "profiling": {"resolutions": [16], "repeats": 1},  # the memory figure (rules/profile.smk)
        "threads": 1,
    }
    wf_cfg.write_text(yaml.safe_dump(wf))
    res = _snakemake("--cores", "2", "--configfile", str(wf_cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    results = tmp_path / "results"
    with open(results / "phantom-brain" / "16" / "fid_vs_steps.csv") as f:
        points = list(csv.DictReader(f))
    assert [(p["sampler"], p["steps"]) for p in points] == [("ddim", "2"), ("ddim", "4"), ("ddpm", "8")]
    assert all(float(p["fid"]) >= 0 and float(p["s_per_volume"]) > 0 for p in points)
    with open(results / "table1_vs_paper.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == {"wdm"} and all(r["paper"] == "" for r in rows)
    figures = ["samples_phantom-brain_16.png", "samples_phantom-brain_16_wdm.png",
               "loss_phantom-brain_16.png", "fid_vs_steps_phantom-brain_16.png"]
    for name in figures:
        assert (results / "figures" / name).stat().st_size > 0, name
    if (results / "figures" / "memory_vs_resolution.png").exists():  # registered in REPORT_FIGURES
        figures.append("memory_vs_resolution.png")

    # as the README says it: no --cores, and the default `threads: null` (cores are undefined then)
    wf_cfg.write_text(yaml.safe_dump({k: v for k, v in wf.items() if k != "threads"}))
    for report in ("report.html", "report.zip"):
        rep = _snakemake("--report", f"results/{report}", "--configfile", str(wf_cfg), cwd=tmp_path)
        assert rep.returncode == 0, rep.stdout + rep.stderr
    html = (results / "report.html").read_text(errors="replace")
    for name in ["table1.csv", "table1_vs_paper.csv", "fid_vs_steps.csv", *figures]:
        assert name in html, name
    with zipfile.ZipFile(results / "report.zip") as z:
        names = "\n".join(z.namelist())
    for name in ["table1.csv", "table1_vs_paper.csv", *figures]:
        assert name in names, name
