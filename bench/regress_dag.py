"""Refactoring guard: the four-model 16^3 DAG, run and compared number by number.

``python bench/regress_dag.py run OUT`` runs ``snakemake results/table1.csv`` at 16^3 with tiny
configs of every default model (wdm, ddpm3d, hagan, ldm) into the folder ``OUT``;
``python bench/regress_dag.py compare OLD NEW`` compares the two runs' ``results/table1.csv``,
every ``metrics.json`` and every generated volume's SHA-256: each measured number (FID and its
interval, MMD, MS-SSIM and its interval, counts, steps) must be identical; timings, memory, code
version and config hashes are ignored. Exit status 0 when they agree, 1 with one line per
difference otherwise.

Run it before and after a change that must not change numbers (on CPU the runs are bit-identical).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

#: Tiny 16^3 run configs of the four default models (seconds each on 2 CPU cores).
_TRAIN = {"steps": 4, "batch_size": 2, "checkpoint_every": 2, "log_every": 1, "device": "cpu"}
_SAMPLE = {"sampler": "ddim", "steps": 4, "batch_size": 2, "device": "cpu"}
RUN_CONFIGS = {
    "wdm": {"model": "wdm", "network": {"preset": "tiny"}, "diffusion": {"timesteps": 100},
            "training": _TRAIN, "sampling": _SAMPLE},
    "ddpm3d": {"model": "ddpm3d", "network": {"preset": "tiny"}, "diffusion": {"timesteps": 100},
               "training": _TRAIN, "sampling": _SAMPLE},
    "hagan": {"model": "hagan", "hagan": {"preset": "tiny"}, "training": _TRAIN,
              "sampling": {"batch_size": 2, "device": "cpu"}},
    "ldm": {"model": "ldm",
            "ldm": {"vqgan": {"preset": "tiny", "steps": 3, "batch_size": 2, "disc_start": 1,
                              "perceptual_weights": None}},
            "network": {"preset": "tiny"}, "diffusion": {"schedule": "cosine", "timesteps": 300},
            "training": _TRAIN, "sampling": {**_SAMPLE, "steps": 3}},
}

#: Columns / keys that are measurements of time, memory or provenance, not results.
IGNORED = {"train_s_per_iteration", "train_peak_memory_gb", "sample_s_per_volume",
           "sample_peak_memory_gb", "device", "code_version", "config_hash", "config",
           "real_stats", "real_dir", "fake_dir", "samples_provenance_key"}


def run(out: Path) -> None:
    """Write the configs into ``out`` and run the DAG there."""
    out.mkdir(parents=True, exist_ok=True)
    configs = {}
    for name, cfg in RUN_CONFIGS.items():
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        configs[name] = str(path)
    wf = {"datasets": {"phantom-brain": {"resolutions": [16], "n_train": 6, "n_test": 4}},
          "models": list(RUN_CONFIGS), "model_configs": configs,
          "evaluation": {"n_samples": 4, "weights": None, "depth": 10, "n_bootstrap": 50},
          "threads": 1}
    (out / "config.yaml").write_text(yaml.safe_dump(wf))
    exe = Path(sys.executable).parent / "snakemake"
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    cmd = [str(exe), "-s", str(REPO / "workflow" / "Snakefile"), "results/table1.csv",
           "--cores", "2", "--configfile", str(out / "config.yaml")]
    subprocess.run(cmd, cwd=out, env=env, check=True)


def _numbers(root: Path) -> dict[str, object]:
    """Every compared value of a run: table cells and metrics.json fields, by a readable key."""
    values: dict[str, object] = {}
    with open(root / "results" / "table1.csv") as f:
        for row in csv.DictReader(f):
            for key, val in row.items():
                if key not in IGNORED:
                    values[f"table1[{row['model']}].{key}"] = val
    for path in sorted((root / "results").glob("*/*/*/metrics.json")):
        metrics = json.loads(path.read_text())
        for key, val in metrics.items():
            if key not in IGNORED:
                values[f"{path.relative_to(root)}:{key}"] = val
    for path in sorted((root / "results").glob("*/*/*/samples/*.nii.gz")):
        values[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return values


def compare(old: Path, new: Path) -> int:
    """Print every difference between two runs; 0 when there is none."""
    a, b = _numbers(old), _numbers(new)
    diffs = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    for line in diffs:
        print(line)
    print(f"{len(a)} values compared, {len(diffs)} differ")
    return 1 if diffs else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("old", type=Path)
    c.add_argument("new", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "run":
        run(a.out)
        return 0
    return compare(a.old, a.new)


if __name__ == "__main__":
    sys.exit(main())
