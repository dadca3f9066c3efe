"""Loss-curve reading and smoothing, the KID/FID-against-steps collection and their figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from eval.figures_curves import (
    FID_STEPS_COLUMNS,
    collect_fid_vs_steps,
    draw_fid_vs_steps,
    fid_vs_steps_figure,
    loss_columns,
    loss_figure,
    protocol_note,
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


def _point(root, model, sampler, steps, fid, *, status=None, s_per_volume=1.0, one_pass=False,
           kid=None):
    """One sweep point on disk; ``kid`` (the value, its interval is kid -/+ 0.01/0.02) or none."""
    d = root / "results" / "phantom-brain" / "32" / model / "steps" / f"{sampler}_{steps}"
    d.mkdir(parents=True)
    m = {"fid": fid, "fid_ci_low": fid - 1, "fid_ci_high": fid + 2, "ms_ssim": 0.9, "n_fake": 6,
         "feature_extractor": "untrained-resnet50 (NOT MedicalNet)"}
    if kid is not None:
        m |= {"kid": kid, "kid_std": 0.01, "kid_ci_low": kid - 0.01, "kid_ci_high": kid + 0.02}
    if status:
        m = {"status": status, "fid": None, "n_fake": 6}
    (d / "metrics.json").write_text(json.dumps(m))
    (d / "sample_profile.json").write_text(json.dumps({
        "sampler": "one forward pass" if one_pass else sampler, "sampler_steps": steps,
        "s_per_volume": s_per_volume, "peak_memory_gb": 0.5}))
    return d / "metrics.json"


def test_collect_fid_vs_steps(tmp_path):
    files = [_point(tmp_path, "wdm", "ddim", 50, 5.0, s_per_volume=1.1, kid=0.05),
             _point(tmp_path, "wdm", "ddpm", 1000, 3.0, s_per_volume=22.0, kid=0.03),
             _point(tmp_path, "wdm", "ddim", 10, 9.0, s_per_volume=0.2, kid=0.12),
             _point(tmp_path, "wdm", "ddim", 250, 0.0, status="oom")]
    df = collect_fid_vs_steps(files)
    assert tuple(df.columns) == FID_STEPS_COLUMNS
    assert list(zip(df["sampler"], df["steps"], strict=True)) == [
        ("ddim", 10), ("ddim", 50), ("ddim", 250), ("ddpm", 1000)]
    assert list(df["fid"].iloc[[0, 1, 3]]) == [9.0, 5.0, 3.0]
    assert (df["dataset"] == "phantom-brain").all() and (df["resolution"] == 32).all()
    assert list(df["status"]) == ["ok", "ok", "oom", "ok"] and math.isnan(df["fid"].iloc[2])
    assert df["s_per_volume"].iloc[3] == 22.0 and df["fid_ci_high"].iloc[0] == 11.0
    assert list(FID_STEPS_COLUMNS[6:12]) == ["fid", "fid_ci_low", "fid_ci_high",
                                             "kid", "kid_ci_low", "kid_ci_high"]
    assert list(df["kid"].iloc[[0, 1, 3]]) == [0.12, 0.05, 0.03]
    assert df["kid_ci_low"].iloc[0] == pytest.approx(0.11)
    assert df["kid_ci_high"].iloc[3] == pytest.approx(0.05)
    assert df[["kid", "kid_ci_low", "kid_ci_high"]].iloc[2].isna().all()  # OOM: no KID
    out = fid_vs_steps_figure(df, tmp_path / "fid.png", title="phantom")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 1000


def test_collect_fid_vs_steps_old_metrics_without_kid_give_nan(tmp_path, caplog):
    files = [_point(tmp_path, "wdm", "ddim", 10, 9.0),  # written before KID was reported
             _point(tmp_path, "wdm", "ddim", 50, 5.0, kid=0.04)]
    with caplog.at_level("WARNING", logger="eval.figures_curves"):
        df = collect_fid_vs_steps(files)
    assert df[["kid", "kid_ci_low", "kid_ci_high"]].iloc[0].isna().all()
    assert df["kid"].iloc[1] == 0.04 and df["fid"].iloc[0] == 9.0
    assert "ddim_10" in caplog.text and "no KID" in caplog.text
    fig = draw_fid_vs_steps(df[:1])  # no KID anywhere: the panel says so instead of failing
    assert "no KID" in fig.axes[0].texts[0].get_text()


def test_fid_vs_steps_figure_kid_first_panel(tmp_path):
    files = [_point(tmp_path, "wdm", "ddim", 10, 9.0, kid=0.12),
             _point(tmp_path, "wdm", "ddim", 50, 5.0, kid=0.05),
             _point(tmp_path, "ldm", "ddim", 50, 7.0, kid=-0.002),
             _point(tmp_path, "wdm", "ddpm", 1000, 3.0, kid=0.03)]
    df = collect_fid_vs_steps(files)
    fig = draw_fid_vs_steps(df, title="phantom-brain 32^3")
    ax_k, ax_f, ax_t = fig.axes
    assert "KID" in ax_k.get_ylabel() and "10^3" in ax_k.get_ylabel()
    assert "FID" in ax_f.get_ylabel() and "biased at small N" in ax_f.get_title()
    assert ax_t.get_ylabel() == "s / volume"
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    # the KID panel plots kid x 1e3: the wdm DDIM line is 120 at 10 steps, 50 at 50 steps
    lines = {c.get_label(): c.lines[0] for c in ax_k.containers}  # errorbar: (data line, ...)
    assert set(lines) == {"ldm DDIM", "wdm DDIM", "wdm DDPM"}
    assert list(lines["wdm DDIM"].get_xdata()) == [10, 50]
    assert list(lines["wdm DDIM"].get_ydata()) == pytest.approx([120.0, 50.0])
    assert list(lines["ldm DDIM"].get_ydata()) == pytest.approx([-2.0])
    bars = next(c for c in ax_k.containers if c.get_label() == "wdm DDIM").lines[2][0]
    spans = [(seg[0][1], seg[1][1]) for seg in bars.get_segments()]
    assert spans == [pytest.approx((110.0, 140.0)), pytest.approx((40.0, 70.0))]  # kid_ci x 1e3
    supt = fig._suptitle.get_text()
    assert "phantom-brain 32^3" in supt and "untrained-resnet50 (NOT MedicalNet)" in supt
    assert "N = 6 per point" in supt
    out = fid_vs_steps_figure(df, tmp_path / "figs" / "fid.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_protocol_note_mixed_n_and_extractors():
    df = pd.DataFrame({"status": ["ok", "ok", "oom"], "n_fake": [18, 20, 99],
                       "feature_extractor": ["medicalnet", "resnet", None]})
    assert protocol_note(df) == "features: medicalnet / resnet, N = 18-20 per point"
    assert protocol_note(df.assign(feature_extractor=None, n_fake=None)) == ""


def test_collect_fid_vs_steps_rejects_gans_and_bad_paths(tmp_path):
    gan = _point(tmp_path, "hagan", "ddim", 10, 1.0, one_pass=True)
    with pytest.raises(InputError, match="one forward pass"):
        collect_fid_vs_steps([gan])
    with pytest.raises(InputError, match="SAMPLER_STEPS"):
        collect_fid_vs_steps([tmp_path / "results" / "d" / "32" / "wdm" / "metrics.json"])
    with pytest.raises(InputError, match="no sweep metrics"):
        collect_fid_vs_steps([])
