"""Smoke tests of the benchmarks in ``bench/``: each runs once at the tiniest settings.

No speed is asserted here (speed targets live in ``bench/``); the tests check that every benchmark
runs end to end in one process and writes a well-formed CSV with positive timings.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _bench(name: str) -> ModuleType:
    """The module ``bench.<name>`` (repository root on ``sys.path``)."""
    return importlib.import_module(f"bench.{name}")


def test_bench_sampling_smoke(tmp_path: Path) -> None:
    out = tmp_path / "sampling.csv"
    _bench("bench_sampling").main(["--size", "16", "--preset", "tiny", "--ddpm-steps", "3",
                                   "--ddim-steps", "2", "--forward-repeats", "1", "--ddpm3d", "ddim",
                                   "--out", str(out)])
    df = pd.read_csv(out)
    pairs = (df["model"] + ":" + df["sampler"]).tolist()
    assert pairs == ["wdm:ddpm", "wdm:ddim", "ddpm3d:ddim"]
    assert df["steps"].tolist() == [3, 2, 2]
    assert (df["repeats"] >= 3).all() and (df["size"] == 16).all()
    for col in ("s_per_volume", "median_s", "min_s", "forward_s", "clip_s", "ratio_vs_ddim", "params"):
        assert (df[col] > 0).all(), col
    assert df.loc[1, "ratio_vs_ddim"] == 1.0 and df.loc[1, "ratio_vs_wdm"] == 1.0
    assert df["overhead_s"].notna().all()


def test_bench_sampling_rejects_too_few_repeats() -> None:
    with pytest.raises(SystemExit):
        _bench("bench_sampling").parse_args(["--repeats", "2"])


def test_bench_features_smoke(tmp_path: Path) -> None:
    out = tmp_path / "features.csv"
    _bench("bench_features").main(["--sizes", "16", "8", "--batch-size", "1", "--volumes", "2",
                                   "--warmup", "0", "--out", str(out)])
    df = pd.read_csv(out)
    assert df["size"].tolist() == [8, 16]
    assert (df["volumes"] == 2).all() and (df["features"] == 2048).all() and (df["repeats"] >= 3).all()
    for col in ("median_s", "min_s", "volumes_per_s", "s_per_volume", "ratio_vs_smallest"):
        assert (df[col] > 0).all(), col
    assert df["weights"].str.contains("NOT MedicalNet").all()


def test_bench_msssim_smoke(tmp_path: Path) -> None:
    out = tmp_path / "msssim.csv"
    _bench("bench_msssim").main(["--n", "4", "--size", "16", "--out", str(out)])
    df = pd.read_csv(out)
    assert df["impl"].tolist() == ["ours", "monai"]
    assert (df["pairs"] == 6).all() and (df["repeats"] >= 3).all()
    for col in ("median_s", "min_s", "ms_per_pair", "speedup_vs_monai", "mean_ms_ssim"):
        assert (df[col] > 0).all(), col
    assert (df["max_abs_diff_vs_monai"] < 1e-4).all()


def test_bench_train_step_smoke(tmp_path: Path) -> None:
    out = tmp_path / "train_step.csv"
    rows = _bench("bench_train_step").main(["--resolutions", "16", "--models", "wdm", "ddpm3d",
                                            "--widths", "tiny", "--no-variants", "--threads", "1",
                                            "--memory-limit-gb", "8", "--out", str(out)])
    df = pd.read_csv(out)
    assert df["label"].tolist() == ["wdm", "ddpm3d"] and (df["status"] == "ok").all()
    assert (df["s_per_it"] > 0).all() and (df["peak_memory_gb"] > 0).all()
    assert (df["repeats"] >= 3).all() and (df["batch_size"] == 1).all()
    assert df.loc[1, "mem_vs_ddpm3d"] == 1.0 and df.loc[0, "mem_vs_ddpm3d"] > 0
    assert rows[0]["config"].endswith(("wdm_128.yaml", "wdm.yaml"))


def test_bench_train_step_verdicts_show_oom_and_fallback_ratio() -> None:
    b = _bench("bench_train_step")

    def row(label: str, res: int, status: str, gb: float | None = None) -> dict:
        return {"label": label, "model": label.split()[0], "resolution": res, "status": status,
                "peak_memory_gb": gb, "peak_minus_baseline_gb": gb, "s_per_it": 1.0 if gb else None}

    rows = [row("wdm", 64, "ok", 1.0), row("ddpm3d", 64, "ok", 8.0), row("wdm", 128, "ok", 4.0),
            row("ddpm3d", 128, "oom"), row("wdm", 256, "oom"), row("wdm +ckpt", 256, "ok", 9.0)]
    b.add_ratios(rows)
    assert rows[0]["mem_vs_ddpm3d"] == 0.125 and rows[2]["mem_vs_ddpm3d"] is None
    first, second = b.verdicts(rows, 24.0)
    assert "ddpm3d oom at 128^3" in first and "at 64^3" in first and "0.125 -> PASS" in first
    assert "wdm: oom" in second and "PASS (wdm +ckpt)" in second


def test_bench_dwt_smoke(tmp_path: Path) -> None:
    out = tmp_path / "dwt.csv"
    rows = _bench("bench_dwt").main(["--sizes", "16", "--repeats", "3", "--threads", "1",
                                     "--out", str(out)])
    df = pd.read_csv(out)
    assert len(rows) == len(df) == 6
    assert df["variant"].tolist() == ["ours", "dense", "ptwt", "pywt", "copy", "copy_into"]
    assert (df["size"] == 16).all() and (df["repeats"] == 3).all() and (df["threads"] == 1).all()
    for col in ("median_s", "min_s", "max_s", "ratio_vs_copy", "ratio_vs_dense"):
        assert (df[col] > 0).all(), col
    assert df.set_index("variant").loc["copy", "ratio_vs_copy"] == 1.0
    assert df.set_index("variant").loc["dense", "ratio_vs_dense"] == 1.0
    assert (df["roundtrip_max_err"] < 1e-5).all()
    bands = df.set_index("variant")["bands_max_diff_vs_ours"]  # same band order and scale as ours
    assert (bands.drop(["copy", "copy_into"]) < 1e-5).all()
    assert bands[["copy", "copy_into"]].isna().all()


def test_bench_activation_memory_smoke(tmp_path: Path) -> None:
    out = tmp_path / "activation_memory.csv"
    _bench("bench_activation_memory").main(["--rows", "wdm:16", "ddpm3d:16", "--widths", "tiny",
                                            "--threads", "1", "--measured", str(tmp_path / "none.csv"),
                                            "--out", str(out)])
    df = pd.read_csv(out)
    assert df["model"].tolist() == ["wdm", "ddpm3d"] and (df["estimate_gb"] > df["param_state_gb"]).all()
    assert df.loc[1, "estimate_vs_ddpm3d"] == 1.0 and 0 < df.loc[0, "estimate_vs_ddpm3d"] < 1


def test_bench_levels_suite_smoke(tmp_path: Path) -> None:
    """Training and sampling step rows at 8^3-16^3: one level, two levels, WavU-Net, voxels."""
    out = tmp_path / "memory_levels.csv"
    labels = ["wdm J=1", "wdm J=2", "wavunet J=1", "ddpm3d"]
    _bench("bench_train_step").main(["--suite", "levels", "--widths", "tiny", "--scale", "16",
                                     "--levels-rows", *labels, "--threads", "1", "--peak-n", "256",
                                     "--memory-limit-gb", "8", "--out", str(out)])
    df = pd.read_csv(out)
    assert list(zip(df["label"], df["mode"], strict=True)) == [(lab, m) for lab in labels
                                                               for m in ("train", "sample")]
    assert (df["status"] == "ok").all() and (df["source"] == "measured").all()
    assert df["resolution"].tolist() == [8, 8, 16, 16, 8, 8, 8, 8]
    assert df.set_index("label")["levels"].to_dict() == {"wdm J=1": 1, "wdm J=2": 2,
                                                         "wavunet J=1": 1, "ddpm3d": 0}
    for col in ("s", "peak_memory_gb", "alloc_peak_gb", "count_gb", "flops_per_step",
                "achieved_gflops", "peak_gflops", "efficiency", "peak_conv_gflops", "efficiency_conv"):
        assert (df[col] > 0).all(), col
    ratio = df["efficiency"] / df["efficiency_conv"]  # both of the same achieved FLOP/s
    assert ((ratio / (df["peak_conv_gflops"] / df["peak_gflops"]) - 1).abs() < 1e-4).all()  # CSV digits
    assert (df["repeats"] >= 3).all() and (df["batch_size"] == 1).all()
    # --rescore: the same rows, timings kept, peaks measured anew and noted.
    again = tmp_path / "rescored.csv"
    _bench("bench_train_step").main(["--suite", "levels", "--rescore", str(out), "--threads", "1",
                                     "--peak-n", "256", "--out", str(again)])
    re = pd.read_csv(again)
    assert re["s"].tolist() == df["s"].tolist() and (re["efficiency_conv"] > 0).all()
    assert re["note"].str.startswith("peaks re-measured").all()
    assert re["note"].str.contains("torch.cuda.max_memory_allocated").all()
    train = df[df["mode"] == "train"]
    assert (train["count_param_state_gb"] > 0).all() and (train["alloc_peak_gb"] >= train["count_gb"]).all()
    paper = df.set_index(["label", "mode"])["paper_gb"]
    assert paper[("wdm J=1", "sample")] == 2.55 and pd.isna(paper[("wdm J=1", "train")])
    assert df["note"].str.contains("torch.cuda.max_memory_allocated").all()
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_levels_plan_and_reuse(tmp_path: Path) -> None:
    b = _bench("bench_levels")
    plan = b.level_plan(["wdm J=2 +ckpt"], ("train", "sample"), 1)
    assert [(r["resolution"], r["levels"], r["checkpointing"], r["mode"]) for r in plan] == [
        (512, 2, True, "train"), (512, 2, True, "sample")]
    with pytest.raises(ValueError, match="allowed"):
        b.level_plan(["wdm J=9"], ("train",), 1)
    cfg, src = b.level_config("wdm", "wdm-512", 2, 512, True)
    assert src.endswith("wdm_512.yaml") and cfg["diffusion"]["levels"] == 2
    assert cfg["network"] == {"preset": "wdm-512", "use_checkpoint": True}
    tiny = b.level_config("wdm", "wdm-128-wavunet", 1, 128, False, "tiny")[0]
    assert tiny["network"]["preset"] == "tiny-wavunet"
    csv = tmp_path / "train_step.csv"
    pd.DataFrame([{"label": "ddpm3d", "model": "ddpm3d", "resolution": 128, "checkpointing": False,
                   "precision": "fp32", "status": "oom", "peak_memory_gb": 22.4}]).to_csv(csv, index=False)
    pd.DataFrame([{"model": "ddpm3d", "resolution": 128, "estimate_gb": 27.9,
                   "saved_activations_gb": 26.9}]).to_csv(tmp_path / "activation_memory.csv", index=False)
    ddpm = b.level_plan(["ddpm3d"], ("train", "sample"), 1)
    old = b._reused(ddpm[0], csv)
    assert old["status"] == "oom" and old["count_gb"] == 27.9 and "reused" in old["source"]
    assert b._reused(ddpm[1], csv) is None  # sampling rows are always measured


def test_flops_extrapolation_is_exact_and_peak_positive() -> None:
    import copy

    from tests.conftest import TINY_RUN
    from wdm.budget import training_flops_per_step
    from wdm.config import resolve_run_config

    f = _bench("bench_flops")
    cfg = copy.deepcopy(TINY_RUN)
    cfg["diffusion"]["levels"] = 2
    cfg = resolve_run_config(cfg)
    est = f.extrapolated_flops(cfg, 32, (8, 16))["flops_per_step"]
    assert est == pytest.approx(training_flops_per_step(cfg, (32, 32, 32)), rel=1e-9)
    peak = f.peak_matmul_gflops(128, repeats=3, threads=1)
    assert peak["peak_gflops"] > 0 and len(peak["peak_matmul_s_all"]) == 3
    assert f.efficiency_fields(2e9, 2.0, 10.0) == {"achieved_gflops": 1.0, "efficiency": 0.1,
                                                   "efficiency_conv": None}
    assert f.efficiency_fields(2e9, 2.0, 10.0, 40.0)["efficiency_conv"] == 0.025
    conv = f.peak_conv3d_gflops(16, 8, repeats=3, threads=1)
    assert conv["peak_conv_gflops"] > 0 and conv["peak_conv_shape"] == "16ch 8^3 3x3x3"
    assert f.efficiency_fields(None, 2.0, 10.0)["efficiency"] is None
    with pytest.raises(ValueError):
        f.peak_matmul_gflops(64, repeats=2)


def test_probe_allocation_peak_counts_a_known_allocation() -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from wdm.probe import allocation_peak_bytes

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        a = torch.ones(1_000_000)  # 4 MB
        b = torch.ones(2_000_000)  # 8 MB, both alive
        del a, b
        c = torch.ones(500_000)
        del c
    assert 12_000_000 <= allocation_peak_bytes(prof) < 12_100_000


@pytest.mark.slow  # ~17 wdm-bench sub-processes at 16^3: about a minute on 2 cores
def test_bench_depth_quality_smoke(tmp_path: Path) -> None:
    """The depth driver end to end at 16^3 with tiny presets; a rerun skips every step."""
    work, out, pw = tmp_path / "work", tmp_path / "depth.csv", tmp_path / "pairwise.csv"
    argv = ["--work", str(work), "--size", "16", "--tiny", "--n", "4", "--n-train", "6", "--n-test", "4",
            "--flop-budget", "1e9", "--extractor-size", "16", "--extractor-steps", "2",
            "--extractor-volumes", "4", "--out", str(out), "--pairwise-out", str(pw), "--eval-json",
            '{"n_bootstrap": 10, "pairwise_bootstrap": 20, "kid_subsets": 5, "fid_inf_points": 3}']
    b = _bench("bench_depth_quality")
    b.main(argv)
    df = pd.read_csv(out).set_index("variant")
    assert df.index.tolist() == ["wdm-j1", "wdm-j2", "wdm-wavunet", "wdm-j1-init", "reference"]
    trained = df.loc[["wdm-j1", "wdm-j2", "wdm-wavunet"]]
    assert trained["levels"].tolist() == [1, 2, 1]
    assert trained["network"].tolist() == ["tiny", "tiny", "tiny-wavunet"]
    assert (trained["steps"] >= 1).all() and (trained["train_flops"] <= 1e9).all()
    assert (trained["gflop_per_step"] > 0).all() and df.loc["wdm-j1-init", "steps"] == 0
    assert (df["n"].drop("reference") == 4).all() and df[["kid_x1e3", "fid", "ms_ssim"]].notna().all().all()
    pairs = pd.read_csv(pw)
    assert len(pairs) == 2 * 10 and set(pairs["metric"]) == {"fid", "kid"}
    timings = (work / "timings.json").read_text()
    b.main(argv)  # resumes: nothing reruns, the same table
    assert (work / "timings.json").read_text() == timings
    pd.testing.assert_frame_equal(pd.read_csv(out).set_index("variant"), df)


def test_bench_depth_quality_refuses_a_run_of_another_budget(tmp_path: Path) -> None:
    b = _bench("bench_depth_quality")
    run = tmp_path / "run"
    run.mkdir()
    (run / "train_profile.json").write_text('{"flop_budget": {"flop_budget": 2e12}, "batch_size": 2}')
    b.check_budget(run, 2e12, 2)
    with pytest.raises(ValueError, match="another --work folder"):
        b.check_budget(run, 4e12, 2)
    assert b.check_budget(tmp_path / "none", 4e12, 2) is None
