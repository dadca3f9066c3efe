"""The memory/time probe (wdm/probe.py), the memory figure and their DAG targets.

Probes run in child processes at 16^3 with the tiny presets; no speed is asserted (bench/ does that).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval.figures_memory import memory_figure, profile_rows, write_memory_csv
from tests.conftest import TINY_RUN
from wdm.oom import is_out_of_memory
from wdm.probe import probe_isolated

REPO = Path(__file__).resolve().parents[1]


def _tiny(model: str = "wdm") -> dict:
    cfg = copy.deepcopy(TINY_RUN)
    cfg["model"] = model
    return cfg


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_probe_tiny_16_is_ok_with_positive_memory_and_time(mode: str) -> None:
    res = probe_isolated(_tiny(), 16, mode, threads=1, repeats=3, sample_steps=2)
    assert res["status"] == "ok", res.get("error")
    assert res["mode"] == mode and res["resolution"] == 16 and res["batch_size"] == 1
    assert res["peak_memory_gb"] > 0 and res["peak_memory_gb"] >= res["rss_baseline_gb"] > 0
    assert res["peak_minus_baseline_gb"] >= 0 and res["child_peak_rss_gb"] > 0
    assert res["s_per_it"] > 0 and len(res["s_per_it_all"]) == 3
    assert res["n_parameters"] > 0 and res["peak_memory_kind"] == "process_peak_rss"
    if mode == "sample":  # TINY_RUN samples with DDIM, 4 steps; the probe ran 2 per call
        assert res["sampler_steps"] == 4 and res["probe_sample_steps"] == 2
        assert res["s_per_volume"] >= 4 * res["s_per_it"]


def test_probe_out_of_memory_is_a_status_not_a_crash() -> None:
    # a 128^3 voxel U-Net needs > 0.45 GiB: the child's RLIMIT_DATA turns that into an OOM row
    res = probe_isolated(_tiny("ddpm3d"), 128, "train", memory_limit_gb=0.45, threads=1)
    assert res["status"] == "oom", res
    assert "allocate" in res["error"].lower() or "memory" in res["error"].lower()
    assert res["s_per_it"] is None and res["options"]["memory_limit_gb"] == 0.45


def test_probe_timeout_kills_the_child() -> None:
    res = probe_isolated(_tiny("ddpm3d"), 64, "train", timeout_s=1.0, threads=1, repeats=50)
    assert res["status"] == "timeout" and res["wall_s"] < 30


def test_probe_classifies_oom_with_the_shared_check() -> None:
    msg = "[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory"
    assert is_out_of_memory(RuntimeError(msg)) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("x"))


def _rows() -> list[dict]:
    rows = []
    for model, scale in (("wdm", 1.0), ("ddpm3d", 8.0)):
        for mode in ("train", "sample"):
            for r in (32, 64, 128):
                gb = 0.3 + scale * (4e-6 if mode == "train" else 1e-6) * r**3
                rows.append({"model": model, "mode": mode, "resolution": r, "batch_size": 1,
                             "status": "oom" if gb > 24 else "ok", "peak_memory_gb": gb,
                             "options": {"memory_limit_gb": 24, "precision": "fp32"}})
    rows.append({"model": "wdm", "mode": "train", "resolution": 128, "batch_size": 1, "status": "ok",
                 "peak_memory_gb": 3.0, "options": {"checkpointing": True, "precision": "bf16"}})
    return rows


def test_memory_figure_writes_png_and_csv_with_an_oom(tmp_path: Path) -> None:
    rows = profile_rows(_rows())
    assert any(r["status"] == "oom" for r in rows)
    assert {r["label"] for r in rows} == {"wdm", "ddpm3d", "wdm +ckpt bf16"}
    png = memory_figure(rows, tmp_path / "fig" / "memory.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv = write_memory_csv(rows, tmp_path / "memory.csv")
    assert csv.read_text().splitlines()[0].startswith("model,stage,label,mode,resolution")
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporaries


def test_memory_figure_cli(tmp_path: Path) -> None:
    from wdm.cli import main

    files = []
    for i, row in enumerate(_rows()):
        files.append(tmp_path / f"p{i}.json")
        files[-1].write_text(json.dumps(row))
    out, csv = tmp_path / "m.png", tmp_path / "m.csv"
    assert main(["memory-figure", "--profiles", *map(str, files), "--csv", str(csv),
                 "--out", str(out), "--memory-limit-gb", "24"]) == 0
    assert out.exists() and len(csv.read_text().splitlines()) == len(files) + 1


_HAS_SNAKEMAKE = shutil.which("snakemake") is not None or (Path(sys.executable).parent / "snakemake").exists()


@pytest.mark.skipif(not _HAS_SNAKEMAKE, reason="snakemake not installed")
def test_dag_resolves_memory_figure(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "snakemake"
    cmd = [str(exe) if exe.exists() else "snakemake", "-s", str(REPO / "workflow" / "Snakefile"), "-n",
           "--directory", str(tmp_path), "results/figures/memory_vs_resolution.png"]
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "memory_figure" in out and "profile_probe" in out
    assert "results/profile/wdm/train_16.json" in out and "results/profile/wdm/sample_32.json" in out
