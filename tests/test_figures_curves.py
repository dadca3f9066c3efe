"""Loss-curve reading and smoothing, the FID-against-steps collection and their figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from eval.figures_curves import (
    FID_STEPS_COLUMNS,
    collect_fid_vs_steps,
    fid_vs_steps_figure,
    loss_columns,
    loss_figure,
    read_loss_csv,
    smooth,
)
from wdm.io import InputError


def test_smooth_hand_values():
    # s1 = 0.5*0 + 0.5*0 = 0 -> /0.5 = 0; s2 = 0.5*0 + 0.5*2 = 1 -> /0.75 = 4/3
    assert smooth([0.0, 2.0], 0.5) == pytest.approx([0.0, 4.0 / 3.0])
    assert smooth([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # debiased: constant stays
    assert smooth([1.0, 5.0, 2.0], 0.0) == pytest.approx([1.0, 5.0, 2.0])  # weight 0 = identity


def test_smooth_skips_nan_and_rejects_bad_weight():
    out = smooth([math.nan, 2.0, math.nan, 4.0], 0.5)
    assert math.isnan(out[0])
    assert out[1:] == pytest.approx([2.0, 2.0, (0.5 * 1.0 + 2.0) / 0.75])
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        smooth([1.0], 1.0)


def test_read_loss_csv_gan_columns_sorted_and_numeric(tmp_path):
    p = tmp_path / "loss.csv"
    p.write_text("step,loss,d_loss,g_loss,s_per_it\n20,0.5,1.2,,0.1\n10,0.7,1.3,0.9,0.1\n")
    df = read_loss_csv(p)
    assert list(df["step"]) == [10, 20]
    assert loss_columns(df) == ["loss", "d_loss", "g_loss"]
    assert math.isnan(df.loc[1, "g_loss"]) and df.loc[0, "d_loss"] == 1.3


@pytest.mark.parametrize("text, match", [("step,s_per_it\n1,0.1\n", "no loss column"),
                                         ("loss\n0.1\n", "no 'step' column"),
                                         ("", "empty file")])
def test_read_loss_csv_errors(tmp_path, text, match):
    p = tmp_path / "loss.csv"
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        read_loss_csv(p)
    with pytest.raises(InputError, match="not found"):
        read_loss_csv(tmp_path / "missing.csv")


def test_loss_figure_with_a_missing_log(tmp_path):
    run = tmp_path / "wdm"
    run.mkdir()
    steps = np.arange(1, 51)
    (run / "loss.csv").write_text("step,loss,s_per_it\n" + "".join(
        f"{s},{1.0 / s + 0.01 * (s % 3)},0.1\n" for s in steps))
    out = loss_figure({"wdm": run, "hagan": tmp_path / "none"}, tmp_path / "fig" / "loss.png",
                      title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _point(root, model, sampler, steps, fid, *, status=None, s_per_volume=1.0, one_pass=False):
    d = root / "results" / "phantom-brain" / "32" / model / "steps" / f"{sampler}_{steps}"
    d.mkdir(parents=True)
    m = {"fid": fid, "fid_ci_low": fid - 1, "fid_ci_high": fid + 2, "ms_ssim": 0.9, "n_fake": 6,
         "feature_extractor": "untrained-resnet50 (NOT MedicalNet)"}
    if status:
        m = {"status": status, "fid": None, "n_fake": 6}
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "sample_profile.json").write_text(json.dumps({
        "sampler": "one forward pass" if one_pass else sampler, "sampler_steps": steps,
        "s_per_volume": s_per_volume, "peak_memory_gb": 0.5}))
    return d / "metrics.json"


def test_collect_fid_vs_steps(tmp_path):
    files = [_point(tmp_path, "wdm", "ddim", 50, 5.0, s_per_volume=1.1),
             _point(tmp_path, "wdm", "ddpm", 1000, 3.0, s_per_volume=22.0),
             _point(tmp_path, "wdm", "ddim", 10, 9.0, s_per_volume=0.2),
             _point(tmp_path, "wdm", "ddim", 250, 0.0, status="oom")]
    df = collect_fid_vs_steps(files)
    assert tuple(df.columns) == FID_STEPS_COLUMNS
    assert list(zip(df["sampler"], df["steps"], strict=True)) == [
        ("ddim", 10), ("ddim", 50), ("ddim", 250), ("ddpm", 1000)]
    assert list(df["fid"].iloc[[0, 1, 3]]) == [9.0, 5.0, 3.0]
    assert (df["dataset"] == "phantom-brain").all() and (df["resolution"] == 32).all()
    assert list(df["status"]) == ["ok", "ok", "oom", "ok"] and math.isnan(df["fid"].iloc[2])
    assert df["s_per_volume"].iloc[3] == 22.0 and df["fid_ci_high"].iloc[0] == 11.0
    out = fid_vs_steps_figure(df, tmp_path / "fid.png", title="phantom")
    assert out.stat().st_size > 1000


def test_collect_fid_vs_steps_rejects_gans_and_bad_paths(tmp_path):
    gan = _point(tmp_path, "hagan", "ddim", 10, 1.0, one_pass=True)
    with pytest.raises(InputError, match="one forward pass"):
        collect_fid_vs_steps([gan])
    with pytest.raises(InputError, match="SAMPLER_STEPS"):
        collect_fid_vs_steps([tmp_path / "results" / "d" / "32" / "wdm" / "metrics.json"])
    with pytest.raises(InputError, match="no sweep metrics"):
        collect_fid_vs_steps([])
