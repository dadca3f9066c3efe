"""The quality cost of depth: WDM J=1, WDM J=2 and the WavU-Net at one training compute.

    nice -n 5 python bench/bench_depth_quality.py [--flop-budget 4e12] [--work results/depth_64]

On ``phantom-brain`` at 64^3 (40 training, 20 test volumes) every variant of ``config/depth/`` is
trained for the same ``--flop-budget`` (``wdm-bench train --flop-budget``: the steps follow from
the counted FLOPs of one training step, :mod:`wdm.budget`), sampled with its run config's sampler
(DDIM-25, as ``config/models/wdm.yaml``), and evaluated against the real training volumes'
features of the phantom-seg extractor (KID, FID and MS-SSIM with bootstrap intervals); the J=1
model's untrained initialisation (``sample --initial``) is the floor row and the real-vs-real test
split the reference row. ``wdm-bench pairwise`` then runs the paired bootstrap of the FID and KID
differences of every two rows.

Variants (the representation or the network changes, nothing else):

* ``wdm-j1``: one Haar level, 8 sub-bands on 32^3, U-Net ``xs``;
* ``wdm-j2``: the two-level packet transform, 64 channels on 16^3, U-Net ``xs``;
* ``wdm-wavunet``: one level, 8 sub-bands on 32^3, WavU-Net ``xs-wavunet``.

Writes ``results/bench/depth_quality.csv`` and ``results/bench/depth_quality_pairwise.csv`` and
prints both. Every intermediate (data, runs, samples, features, logs) lies in ``--work``, by
default ``results/depth_64/`` (git-ignored by ``results/*``; ``results/bench/`` is not); a step
whose output exists is skipped, so a rerun resumes. Each step runs as one ``wdm-bench``
sub-process, its output in ``WORK/logs/<step>.log`` and its wall time in ``WORK/timings.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import BENCH_DIR, print_rows, setup_logging, write_rows  # noqa: E402

__all__ = ["VARIANTS", "Variant", "main", "parse_args", "table_rows"]

log = logging.getLogger("bench.depth_quality")

DATASET = "phantom-brain"
#: the row of the J=1 model's untrained initialisation (the floor) and of real vs real
INITIAL, REFERENCE = "wdm-j1-init", "reference"
#: the phantom-seg checkpoint the workflow trains (rules/extractor.smk), used when present
REPO_EXTRACTOR = REPO / "results" / "extractors" / "phantom-seg-resnet10.pt"
TABLE_COLUMNS = ("variant", "levels", "network", "parameters", "gflop_per_step", "steps",
                 "batch_size", "train_flops", "train_s", "kid_x1e3", "kid_x1e3_ci_low",
                 "kid_x1e3_ci_high", "fid", "fid_ci_low", "fid_ci_high", "ms_ssim", "n", "n_real",
                 "extractor", "seed", "flop_budget", "size")
PAIRWISE_COLUMNS = ("model_a", "model_b", "metric", "a", "b", "difference", "ci_low", "ci_high",
                    "p_value", "significant", "closer", "n_real", "n_a", "n_b", "n_bootstrap",
                    "feature_extractor")


@dataclass(frozen=True)
class Variant:
    """One row: a name, its run config (repository-relative) and its network preset's tiny twin."""

    name: str
    config: str
    tiny_preset: str


VARIANTS: tuple[Variant, ...] = (
    Variant("wdm-j1", "config/depth/wdm_j1_64.yaml", "tiny"),
    Variant("wdm-j2", "config/depth/wdm_j2_64.yaml", "tiny"),
    Variant("wdm-wavunet", "config/depth/wdm_wavunet_64.yaml", "tiny-wavunet"),
)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "results" / "depth_64",
                   help="folder of every intermediate (git-ignored default)")
    p.add_argument("--flop-budget", type=float, default=4e12, help="training FLOPs of every variant")
    p.add_argument("--batch-size", type=int, default=2, help="training batch (overrides the configs' 4)")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-test", type=int, default=20)
    p.add_argument("--n", type=int, default=40, help="volumes sampled per row")
    p.add_argument("--seed", type=int, default=1234, help="sampling and evaluation seed")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--extractor", type=Path, default=None,
                   help="phantom-seg checkpoint; default: results/extractors/phantom-seg-resnet10.pt "
                        "if present, else one trained into WORK/extractor")
    p.add_argument("--extractor-size", type=int, default=32, help="phantom side of a trained extractor")
    p.add_argument("--extractor-steps", type=int, default=50)
    p.add_argument("--extractor-volumes", type=int, default=128)
    p.add_argument("--tiny", action="store_true",
                   help="tests: tiny network presets, 100 timesteps, DDIM-4 sampling")
    p.add_argument("--eval-json", default="{}",
                   help="JSON merged into the evaluation settings (e.g. fewer bootstrap replicates)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=BENCH_DIR / "depth_quality.csv")
    p.add_argument("--pairwise-out", type=Path, default=BENCH_DIR / "depth_quality_pairwise.csv")
    return p.parse_args(argv)


class Steps:
    """Runs ``wdm-bench`` sub-commands as resumable steps: skipped when their output exists."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.timings_file = work / "timings.json"
        self.timings: dict[str, float] = (json.loads(self.timings_file.read_text())
                                          if self.timings_file.exists() else {})

    def run(self, name: str, output: Path, args: Sequence[str]) -> None:
        """``wdm-bench ARGS`` unless ``output`` exists; output to ``logs/NAME.log``, time recorded."""
        if output.exists():
            log.info("step %-22s skipped (%s exists)", name, output.relative_to(self.work))
            return
        log_file = self.logs / f"{name}.log"
        cmd = [sys.executable, "-m", "wdm.cli", *map(str, args)]
        log.info("step %-22s start: wdm-bench %s", name, " ".join(map(str, args)))
        t0 = time.perf_counter()
        with log_file.open("w") as fh:
            rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
        seconds = time.perf_counter() - t0
        if rc != 0 or not output.exists():
            tail = "\n".join(log_file.read_text().splitlines()[-15:])
            raise RuntimeError(f"step {name} failed (exit {rc}, {output} missing); {log_file}:\n{tail}")
        self.timings[name] = round(seconds, 2)
        self.timings_file.write_text(json.dumps(self.timings, indent=1, sort_keys=True))
        log.info("step %-22s done in %.1f s", name, seconds)


def extractor_path(a: argparse.Namespace, steps: Steps) -> Path:
    """The phantom-seg checkpoint: ``--extractor``, the workflow's, or one trained here."""
    if a.extractor is not None:
        if not a.extractor.is_file():
            raise FileNotFoundError(f"--extractor {a.extractor}: not found")
        return a.extractor.resolve()
    if REPO_EXTRACTOR.is_file():
        return REPO_EXTRACTOR
    out = a.work / "extractor" / "phantom-seg-resnet10.pt"
    steps.run("train_extractor", out, ["train-extractor", "--out", out, "--size", a.extractor_size,
                                       "--steps", a.extractor_steps, "--n-volumes",
                                       a.extractor_volumes, "--threads", a.threads, "--no-progress"])
    return out.resolve()


def evaluation_section(a: argparse.Namespace, extractor: Path) -> dict[str, Any]:
    """The ``evaluation`` settings of every evaluation and of the pairwise tests."""
    section = {"n_samples": a.n, "seed": a.seed, "weights": f"phantom-seg:{extractor}", "depth": 10,
               "protocol": "wdm", "allow_small_n": True, "frd": "off", "n_bootstrap": 200}
    section.update(json.loads(a.eval_json))
    return section


def load_variant_config(a: argparse.Namespace, variant: Variant) -> dict[str, Any]:
    """The variant's resolved run config with ``--batch-size`` (and the ``--tiny`` settings)."""
    from wdm.config import load_run_config

    cfg = load_run_config(REPO / variant.config)
    cfg["training"]["batch_size"] = a.batch_size
    if a.tiny:
        cfg["network"]["preset"] = variant.tiny_preset
        cfg["diffusion"]["timesteps"] = 100
        cfg["sampling"].update(steps=4, batch_size=2)
    return cfg


def variant_config(a: argparse.Namespace, variant: Variant) -> Path:
    """``WORK/configs/<name>.yaml``: :func:`load_variant_config` as the run's config file."""
    import yaml

    text = (f"# {variant.config} as bench/bench_depth_quality.py trains it\n"
            + yaml.safe_dump(load_variant_config(a, variant)))
    out = a.work / "configs" / f"{variant.name}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.read_text() != text:
        out.write_text(text)
    return out


def check_budget(run: Path, budget: float, batch_size: int) -> None:
    """Refuse a finished run of another budget or batch (resuming must not mix runs)."""
    prof_file = run / "train_profile.json"
    if not prof_file.exists():
        return
    prof = json.loads(prof_file.read_text())
    have = (prof.get("flop_budget") or {}).get("flop_budget")
    if have != budget or prof.get("batch_size") != batch_size:
        raise ValueError(f"{run}: trained with flop budget {have} and batch {prof.get('batch_size')}, "
                         f"asked {budget} and {batch_size}; use another --work folder")


def train_and_sample(a: argparse.Namespace, steps: Steps, data: Path) -> None:
    """Train every variant for the budget, sample it, and sample J=1's initialisation.

    Training always passes ``--resume``: an interrupted run continues from its last checkpoint
    (from scratch when it has none), a finished one is skipped.
    """
    for v in VARIANTS:
        cfg = variant_config(a, v)
        run = a.work / v.name / "run"
        check_budget(run, a.flop_budget, a.batch_size)
        steps.run(f"train_{v.name}", run / "train_profile.json",
                  ["train", "--config", cfg, "--data", data, "--out", run, "--flop-budget",
                   repr(a.flop_budget), "--resume", "--threads", a.threads, "--no-progress"])
        samples = a.work / v.name / "samples"
        steps.run(f"sample_{v.name}", samples / "sample_profile.json",
                  ["sample", "--run", run, "--n", a.n, "--seed", a.seed, "--out", samples,
                   "--threads", a.threads, "--no-progress"])
    samples = a.work / INITIAL / "samples"
    steps.run(f"sample_{INITIAL}", samples / "sample_profile.json",
              ["sample", "--run", a.work / VARIANTS[0].name / "run", "--initial", "--n", a.n,
               "--seed", a.seed, "--out", samples, "--threads", a.threads, "--no-progress"])


def row_names() -> list[str]:
    """Rows of the table, in order: the variants, the floor, the reference."""
    return [v.name for v in VARIANTS] + [INITIAL, REFERENCE]


def evaluate_all(a: argparse.Namespace, steps: Steps, data: Path, settings: Path) -> Path:
    """Real features once, then every row's metrics and features; returns the real feature file."""
    real = a.work / "real_features.npz"
    steps.run("real_stats", real, ["real-stats", "--config", settings, "--real", data / "train",
                                   "--out", real, "--threads", a.threads])
    for name in row_names():
        fake = data / "test" if name == REFERENCE else a.work / name / "samples"
        n_fake = "all" if name == REFERENCE else "config"
        steps.run(f"evaluate_{name}", a.work / name / "metrics.json",
                  ["evaluate", "--config", settings, "--real-stats", real, "--fake", fake,
                   "--out", a.work / name / "metrics.json", "--n-fake", n_fake,
                   "--features-out", a.work / name / "features.npz", "--threads", a.threads])
    return real


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _scaled(value: Any, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def _run_fields(a: argparse.Namespace, name: str, timings: dict[str, float]) -> dict[str, Any]:
    """Training columns of a row: the variant's own run, J=1's for the floor, none for the reference."""
    keys = ("levels", "network", "parameters", "gflop_per_step", "steps", "batch_size",
            "train_flops", "train_s", "flop_budget")
    if name == REFERENCE:
        return dict.fromkeys(keys)
    variant = next((v for v in VARIANTS if v.name == name), VARIANTS[0])
    cfg = load_variant_config(a, variant)
    prof = _read_json(a.work / variant.name / "run" / "train_profile.json")
    budget = prof.get("flop_budget") or {}
    fields = {"levels": int(cfg["diffusion"].get("levels", 1)), "network": cfg["network"]["preset"],
              "parameters": prof.get("n_parameters"),
              "gflop_per_step": _scaled(budget.get("flops_per_step"), 1e-9),
              "steps": budget.get("steps"), "batch_size": prof.get("batch_size"),
              "train_flops": budget.get("train_flops"), "train_s": timings.get(f"train_{name}"),
              "flop_budget": a.flop_budget}
    if name == INITIAL:  # the untrained network: no training columns but its shape
        fields.update(steps=0, gflop_per_step=None, batch_size=None, train_flops=0, train_s=None,
                      flop_budget=None)
    return fields


def table_rows(a: argparse.Namespace, timings: dict[str, float]) -> list[dict[str, Any]]:
    """One row per variant, the floor and the reference, from the work folder's records."""
    rows = []
    for name in row_names():
        m = _read_json(a.work / name / "metrics.json")
        rows.append({
            "variant": name, **_run_fields(a, name, timings),
            "kid_x1e3": _scaled(m.get("kid"), 1e3), "kid_x1e3_ci_low": _scaled(m.get("kid_ci_low"), 1e3),
            "kid_x1e3_ci_high": _scaled(m.get("kid_ci_high"), 1e3),
            "fid": m.get("fid"), "fid_ci_low": m.get("fid_ci_low"), "fid_ci_high": m.get("fid_ci_high"),
            "ms_ssim": m.get("ms_ssim"), "n": m.get("n_fake"), "n_real": m.get("n_real"),
            "extractor": m.get("feature_extractor"), "seed": a.seed, "size": a.size,
        })
    return [{k: r.get(k) for k in TABLE_COLUMNS} for r in rows]


def _interval(row: dict[str, Any], key: str, fmt: str) -> str:
    lo, hi = row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high")
    if row.get(key) is None:
        return ""
    ci = f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None and hi is not None else ""
    return f"{row[key]:{fmt}}{ci}"


def print_tables(rows: list[dict[str, Any]], pairwise: list[dict[str, Any]]) -> None:
    """Print the table (intervals in brackets) and the pairwise verdicts."""
    shown = [{"variant": r["variant"], "levels": r["levels"], "network": r["network"],
              "params": r["parameters"], "GFLOP/step": r["gflop_per_step"], "steps": r["steps"],
              "train s": r["train_s"], "KID x1e3 [95% CI]": _interval(r, "kid_x1e3", ".2f"),
              "FID [95% CI]": _interval(r, "fid", ".3f"), "MS-SSIM": r["ms_ssim"], "n": r["n"]}
             for r in rows]
    print_rows(shown)
    sys.stdout.write("\n")
    print_rows(pairwise, ["model_a", "model_b", "metric", "difference", "ci_low", "ci_high",
                          "p_value", "closer"])


def run_pairwise(a: argparse.Namespace, steps: Steps, real: Path, settings: Path) -> list[dict[str, Any]]:
    """``wdm-bench pairwise`` over every row; its rows, reduced to :data:`PAIRWISE_COLUMNS`."""
    import pandas as pd

    cell = f"{DATASET}/{a.size}"
    out = a.work / "pairwise.csv"
    sets = [f"{cell}/{name}={a.work / name / 'features.npz'}" for name in row_names()]
    steps.run("pairwise", out, ["pairwise", "--config", settings, "--real", f"{cell}={real}",
                                "--set", *sets, "--out", out, "--seed", a.seed,
                                "--threads", a.threads, "--no-progress"])
    df = pd.read_csv(out)
    return df[[c for c in PAIRWISE_COLUMNS if c in df.columns]].to_dict("records")


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the whole experiment; returns the table's rows."""
    a = parse_args(argv)
    setup_logging()
    a.work = a.work.resolve()
    t0 = time.perf_counter()
    steps = Steps(a.work)
    data = a.work / "data"
    steps.run("prepare", data / "manifest.csv",
              ["prepare", "--dataset", DATASET, "--out", data, "--size", a.size, "--n-train",
               a.n_train, "--n-test", a.n_test, "--seed", a.data_seed, "--no-progress"])
    extractor = extractor_path(a, steps)
    log.info("feature extractor: %s (phantom-seg; it sees %d^3 volumes)", extractor, a.size)
    settings = a.work / "evaluation.yaml"
    steps.run("settings", settings, ["settings", "--section", "evaluation", "--json",
                                     json.dumps(evaluation_section(a, extractor)), "--out", settings])
    train_and_sample(a, steps, data)
    real = evaluate_all(a, steps, data, settings)
    pairwise = run_pairwise(a, steps, real, settings)
    rows = table_rows(a, steps.timings)
    write_rows(rows, a.out)
    write_rows(pairwise, a.pairwise_out)
    print_tables(rows, pairwise)
    log.info("wall time of this invocation: %.0f s (steps: %s)", time.perf_counter() - t0,
             json.dumps(steps.timings))
    return rows


if __name__ == "__main__":
    main()
