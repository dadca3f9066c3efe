"""Tests for eval.tables: fixed columns, CI/MMD columns, the reference row first in each cell."""

from __future__ import annotations

import json

import pytest

from eval.tables import COLUMNS, REFERENCE_MODEL, build_table, table_row
from wdm.io import InputError


def _metrics(root, dataset, res, model, **values):
    path = root / "results" / dataset / str(res) / model / "metrics.json"
    path.parent.mkdir(parents=True)
    base = {"fid": 1.0, "fid_ci_low": 0.8, "fid_ci_high": 1.3, "mmd": 0.01, "ms_ssim": 0.5,
            "ms_ssim_ci_low": 0.45, "ms_ssim_ci_high": 0.55, "ms_ssim_se": 0.0,
            "ms_ssim_pairs": 6, "ms_ssim_scales": 2, "n_real": 6, "n_fake": 4,
            "feature_extractor": "x", "protocol": "wdm", "weights_sha256": "ab" * 32,
            "code_version": "v"}
    path.write_text(json.dumps({**base, **values}))
    return path


def test_columns_include_intervals_mmd_and_provenance():
    for col in ("fid_ci_low", "fid_ci_high", "ms_ssim_ci_low", "ms_ssim_ci_high", "mmd",
                "ms_ssim_se", "protocol", "weights_sha256", "n_real", "n_fake"):
        assert col in COLUMNS
    assert len(set(COLUMNS)) == len(COLUMNS)


def test_row_reads_metrics_and_profiles(tmp_path):
    m = _metrics(tmp_path, "phantom-brain", 32, "wdm", fid=2.5, fid_ci_low=2.0, fid_ci_high=3.1)
    (m.parent / "run").mkdir()
    (m.parent / "run" / "train_profile.json").write_text(json.dumps({"s_per_iteration": 0.2}))
    row = table_row(m)
    assert (row["dataset"], row["resolution"], row["model"]) == ("phantom-brain", 32, "wdm")
    assert (row["fid"], row["fid_ci_low"], row["fid_ci_high"]) == (2.5, 2.0, 3.1)
    assert row["train_s_per_iteration"] == 0.2 and row["sample_s_per_volume"] is None
    assert row["status"] == "ok"  # files without a status field are ok
    assert set(row) == set(COLUMNS)


def test_reference_row_first_in_each_cell(tmp_path):
    files = [_metrics(tmp_path, "b", 32, "wdm"), _metrics(tmp_path, "b", 32, REFERENCE_MODEL),
             _metrics(tmp_path, "a", 64, "hagan"), _metrics(tmp_path, "a", 64, REFERENCE_MODEL),
             _metrics(tmp_path, "a", 32, "wdm"), _metrics(tmp_path, "a", 32, "ddpm")]
    df = build_table(files)
    assert list(df.columns) == list(COLUMNS)
    assert list(zip(df["dataset"], df["resolution"], df["model"], strict=True)) == [
        ("a", 32, "ddpm"), ("a", 32, "wdm"), ("a", 64, REFERENCE_MODEL), ("a", 64, "hagan"),
        ("b", 32, REFERENCE_MODEL), ("b", 32, "wdm")]


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no metrics files"):
        build_table([])
    bad = tmp_path / "results" / "d" / "16" / "m" / "metrics.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{")
    with pytest.raises(InputError, match=r"metrics\.json: not valid JSON"):
        table_row(bad)


def _profiles(metrics_path, train=None, sample=None):
    for sub, name, content in (("run", "train_profile.json", train),
                               ("samples", "sample_profile.json", sample)):
        if content is not None:
            (metrics_path.parent / sub).mkdir(exist_ok=True)
            (metrics_path.parent / sub / name).write_text(json.dumps(content))


def test_oom_rows_read_oom_and_the_table_still_builds(tmp_path):
    import csv

    import pandas as pd

    from eval.evaluate import MEASURED_KEYS
    from eval.tables import OOM, write_table

    oom_metrics = {**dict.fromkeys(MEASURED_KEYS), "status": "oom", "error": "...",
                   "protocol": "wdm", "code_version": "v"}
    ok = _metrics(tmp_path, "d", 32, "wdm", fid=0.123456789, status="ok")
    _profiles(ok, train={"status": "ok", "s_per_iteration": 0.25, "peak_memory_gb": 1.5},
              sample={"status": "ok", "s_per_volume": 2.0, "peak_memory_gb": 0.75})
    ref = _metrics(tmp_path, "d", 32, REFERENCE_MODEL)
    big = _metrics(tmp_path, "d", 32, "big", **oom_metrics, failed_stage="train")
    _profiles(big, train={"status": "oom", "error": "OutOfMemoryError: ...", "s_per_iteration": None,
                          "peak_memory_gb": None},
              sample={"status": "oom", "failed_stage": "train", "s_per_volume": None})
    slow = _metrics(tmp_path, "d", 32, "slow", **oom_metrics, failed_stage="sample")
    _profiles(slow, train={"s_per_iteration": 0.5, "peak_memory_gb": 3.0},  # old: no status = ok
              sample={"status": "oom", "failed_stage": "sample", "s_per_volume": None})

    df = build_table([ok, ref, big, slow])
    rows = {r["model"]: r for r in df.to_dict("records")}
    assert list(df["model"]) == [REFERENCE_MODEL, "big", "slow", "wdm"]
    assert [rows[m]["status"] for m in ("reference", "big", "slow", "wdm")] == ["ok", "oom", "oom", "ok"]
    for m in ("big", "slow"):
        assert all(rows[m][c] == OOM for c in ("fid", "fid_ci_low", "mmd", "ms_ssim", "ms_ssim_pairs"))
    # the stage that failed reads OOM; a stage that never ran is empty; one that ran keeps its numbers
    assert rows["big"]["train_s_per_iteration"] == OOM == rows["big"]["train_peak_memory_gb"]
    assert pd.isna(rows["big"]["sample_s_per_volume"])
    assert (rows["slow"]["train_s_per_iteration"], rows["slow"]["train_peak_memory_gb"]) == (0.5, 3.0)
    assert rows["slow"]["sample_s_per_volume"] == OOM == rows["slow"]["sample_peak_memory_gb"]
    assert rows["wdm"]["fid"] == 0.123456789 and rows["wdm"]["train_s_per_iteration"] == 0.25
    assert rows["reference"]["fid"] == 1.0 and rows["big"]["protocol"] == "wdm"

    out = write_table(df, tmp_path / "table1.csv")
    with open(out) as f:
        csv_rows = {r["model"]: r for r in csv.DictReader(f)}
    assert csv_rows["wdm"]["fid"] == "0.123457"  # %.6g also in a column holding OOM
    assert csv_rows["wdm"]["ms_ssim_pairs"] == "6" and csv_rows["big"]["fid"] == "OOM"
    assert csv_rows["big"]["sample_s_per_volume"] == "" and csv_rows["big"]["status"] == "oom"
    numeric = pd.read_csv(out, na_values=[OOM])  # how a researcher gets numbers back
    assert numeric["fid"].dtype == float and numeric["fid"].isna().sum() == 2
