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
