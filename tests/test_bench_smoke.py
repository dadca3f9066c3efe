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
