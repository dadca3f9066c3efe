"""results/table1_vs_paper.csv: ours beside the paper's values, deltas, the unmatched case."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from eval.compare import COMPARE_COLUMNS, compare_to_paper, load_reference
from wdm.cli import main
from wdm.io import InputError

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "results" / "paper_reference.csv"


def _table() -> pd.DataFrame:
    return pd.DataFrame([
        {"dataset": "bt", "resolution": 128, "model": "reference", "fid": 0.00001, "ms_ssim": 0.8,
         "sample_peak_memory_gb": None, "feature_extractor": "MedicalNet", "device": "H100"},
        {"dataset": "bt", "resolution": 128, "model": "wdm", "fid": 0.0002, "ms_ssim": 0.9,
         "sample_peak_memory_gb": 2.0, "feature_extractor": "MedicalNet resnet_50_23dataset",
         "device": "NVIDIA H100"},
        {"dataset": "bt", "resolution": 128, "model": "ddpm3d", "fid": "OOM", "ms_ssim": "OOM",
         "sample_peak_memory_gb": "OOM", "feature_extractor": None, "device": "NVIDIA H100",
         "status": "oom"},
    ])


def test_the_shipped_reference_is_complete_and_marked_unverified():
    ref = load_reference(REFERENCE)
    brats = ref[(ref["dataset"] == "brats") & (ref["resolution"] == 128)]
    assert set(brats["model"]) == {"hagan", "ldm", "ddpm3d", "ldm25d", "wdm", "wdm_wavunet"}
    assert len(brats) == 18  # 6 models x (FID, MS-SSIM, sampling memory)
    wdm = brats[brats["model"] == "wdm"].set_index("metric")
    assert wdm.loc["fid", "value"] == 0.154 and wdm.loc["fid", "scale"] == 1000
    assert wdm.loc["ms_ssim", "value"] == 0.888 and wdm.loc["sample_memory_gb", "value"] == 2.55
    assert not ref["verified"].any() and ref["source"].str.contains("unverified").all()
    assert ref[(ref["resolution"] == 256)]["value"].tolist() == [7.27]


def test_deltas_on_the_papers_scale():
    df = compare_to_paper(_table(), load_reference(REFERENCE), {"bt": "brats"})
    assert tuple(df.columns) == COMPARE_COLUMNS
    assert "reference" not in set(df["model"])
    w = df[df["model"] == "wdm"].set_index("metric")
    # FID 0.0002 is 0.2 on the paper's x10^3 scale: delta 0.2 - 0.154, ratio 0.2 / 0.154
    assert w.loc["fid", "ours_scaled"] == pytest.approx(0.2)
    assert w.loc["fid", "delta"] == pytest.approx(0.2 - 0.154)
    assert w.loc["fid", "ratio"] == pytest.approx(0.2 / 0.154)
    assert w.loc["ms_ssim", "delta"] == pytest.approx(0.9 - 0.888)
    assert w.loc["sample_memory_gb", "ratio"] == pytest.approx(2.0 / 2.55)
    assert w.loc["fid", "paper_model"] == "WDM" and not w.loc["fid", "verified"]
    assert "GPU memory" in w.loc["sample_memory_gb", "caveat"]
    # an OOM row keeps the paper's value and has no delta
    d = df[df["model"] == "ddpm3d"].set_index("metric")
    assert (d["ours_status"] == "oom").all() and d["delta"].isna().all()
    assert d.loc["fid", "paper"] == 1.402
    # paper-only models (and ones we did not run) follow, with empty values of ours
    rest = df[df["ours_status"] == "not run"]
    assert set(rest["model"]) == {"hagan", "ldm", "ldm25d", "wdm_wavunet"}
    assert rest["ours"].isna().all() and rest["paper"].notna().all()
    assert df.index[df["ours_status"] == "not run"].min() > df.index[df["model"] == "wdm"].max()


def test_unmatched_dataset_gets_empty_paper_values():
    table = _table()
    table["resolution"] = 32
    for mapping in ({}, {"bt": "brats"}):  # no mapping, or a mapping without a 32^3 counterpart
        df = compare_to_paper(table, load_reference(REFERENCE), mapping)
        assert len(df) == 2 * 3  # wdm and ddpm3d x three metrics, nothing from the paper
        assert df["paper"].isna().all() and df["delta"].isna().all()
        assert (df["paper_model"] == "").all()
    assert df["ours"].notna().sum() == 3  # wdm's values are kept


def test_untrained_extractor_flagged_and_wildcard_dataset(tmp_path):
    table = pd.DataFrame([{"dataset": "lidc", "resolution": 256, "model": "wdm", "fid": 1.0,
                           "ms_ssim": 0.5, "sample_peak_memory_gb": 8.0,
                           "feature_extractor": "untrained-resnet50 (NOT MedicalNet)"}])
    df = compare_to_paper(table, load_reference(REFERENCE), {"lidc": "lidc"}).set_index("metric")
    assert "untrained" in df.loc["fid", "caveat"] and math.isnan(df.loc["fid", "paper"])
    assert df.loc["sample_memory_gb", "paper"] == 7.27  # the '*' row matches any paper data set
    assert df.loc["sample_memory_gb", "delta"] == pytest.approx(8.0 - 7.27)


def test_load_reference_errors(tmp_path):
    bad = tmp_path / "ref.csv"
    bad.write_text("dataset,resolution,model\nbrats,128,wdm\n")
    with pytest.raises(InputError, match="missing columns"):
        load_reference(bad)
    text = REFERENCE.read_text().replace(",fid,", ",fidd,", 1)
    bad.write_text(text)
    with pytest.raises(InputError, match="unknown metrics"):
        load_reference(bad)


def test_compare_cli(tmp_path, capsys):
    table = tmp_path / "table1.csv"
    _table().to_csv(table, index=False)
    out = tmp_path / "cmp.csv"
    assert main(["compare", "--table", str(table), "--reference", str(REFERENCE), "--out", str(out),
                 "--paper-dataset", "bt=brats"]) == 0
    df = pd.read_csv(out)
    assert df.loc[(df["model"] == "wdm") & (df["metric"] == "fid"), "paper"].item() == 0.154
    assert main(["compare", "--table", str(table), "--reference", str(REFERENCE), "--out", str(out),
                 "--paper-dataset", "bt"]) == 1
    assert "NAME=VALUE" in capsys.readouterr().err
