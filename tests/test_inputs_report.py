"""`snakemake --report` gathers what exists: right after `snakemake results/table1.csv` too."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import TINY_RUN
from tests.test_workflow import _snakemake

pytestmark = pytest.mark.skipif(_snakemake is None, reason="snakemake not installed")


@pytest.mark.slow
def test_report_after_table1_only_holds_what_exists(tmp_path):
    run_cfg = tmp_path / "wdm_tiny.yaml"
    run_cfg.write_text(yaml.safe_dump(dict(TINY_RUN, training=dict(TINY_RUN["training"], steps=4))))
    wf_cfg = tmp_path / "config.yaml"
    wf_cfg.write_text(yaml.safe_dump({
        "datasets": {"phantom-brain": {"resolutions": [16], "n_train": 6, "n_test": 4}},
        "models": ["wdm"],
        "model_configs": {"wdm": str(run_cfg)},
        "evaluation": {"n_samples": 4, "weights": None, "depth": 10, "n_bootstrap": 20},
        "threads": 1,
    }))
    res = _snakemake("results/table1.csv", "--cores", "2", "--configfile", str(wf_cfg), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    results = tmp_path / "results"
    assert not (results / "table1_vs_paper.csv").exists()
    assert not (results / "figures" / "loss_phantom-brain_16.png").exists()

    rep = _snakemake("--report", "results/report.html", "--configfile", str(wf_cfg), cwd=tmp_path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert "marked for report but does not exist" not in rep.stdout + rep.stderr
    html = (results / "report.html").read_text(errors="replace")
    assert "table1.csv" in html and "samples_phantom-brain_16.png" in html
    # the report only reads: nothing missing was built on the way
    assert not (results / "table1_vs_paper.csv").exists()
    assert not (results / "figures" / "loss_phantom-brain_16.png").exists()

    # the default target afterwards still builds everything the report left out
    dry = _snakemake("-n", "--configfile", str(wf_cfg), cwd=tmp_path)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for rule in ("table1_vs_paper", "loss_figure", "sample_figure_model"):
        assert f"rule {rule}:" in dry.stdout + dry.stderr, rule


@pytest.mark.slow
def test_report_of_a_fresh_folder_is_empty_not_an_error(tmp_path):
    rep = _snakemake("--report", "results/report.zip", cwd=tmp_path)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert (tmp_path / "results" / "report.zip").stat().st_size > 0
