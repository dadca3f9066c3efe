"""Soak benchmark: 2000 training steps at 16^3; resident memory must stay flat after warm-up.

    python bench/bench_soak.py [--steps 2000] [--out results/bench/soak.csv]

A sampler thread reads the process's resident set size (VmRSS) every 0.5 s while ``wdm.train``
runs in the main thread, together with the step reached (from the run's loss log). Prints RSS at
each 10% of the run and the growth from the end of warm-up (first 10%) to the end, and writes the
samples to CSV. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import logging
import tempfile
import threading
import time
from pathlib import Path

import torch


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _last_step(loss_csv: Path) -> int:
    try:
        lines = loss_csv.read_text().strip().splitlines()
        return int(lines[-1].split(",")[0]) if len(lines) > 1 else 0
    except (OSError, ValueError):
        return 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", default="results/bench/soak.csv")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)

    from wdm.data.prepare import prepare
    from wdm.train import train

    with tempfile.TemporaryDirectory() as tmp:
        data = prepare("phantom-brain", Path(tmp) / "data", size=16, n_train=16, n_test=2, seed=0)
        run = Path(tmp) / "run"
        cfg = {"network": {"preset": "tiny"},
               "training": {"steps": a.steps, "batch_size": 2, "checkpoint_every": 250,
                            "keep_last": 2, "log_every": 10, "device": "cpu"}}
        samples: list[tuple[float, int, float]] = []
        done = threading.Event()

        def sampler() -> None:
            t0 = time.perf_counter()
            while not done.is_set():
                samples.append((time.perf_counter() - t0, _last_step(run / "loss.csv"), _rss_mb()))
                time.sleep(0.5)

        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        prof = train(cfg, data, run, progress=False)
        done.set()
        th.join()

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "step", "rss_mb"])
        w.writerows(samples)
    warm = [r for s, st, r in samples if st >= a.steps // 10]
    print(f"{'step':>6} {'rss MB':>8}")
    for frac in range(1, 11):
        target = a.steps * frac // 10
        row = min(samples, key=lambda s: abs(s[1] - target))
        print(f"{row[1]:>6} {row[2]:>8.1f}")
    growth = warm[-1] - warm[0] if warm else float("nan")
    print(f"after warm-up: first {warm[0]:.1f} MB, last {warm[-1]:.1f} MB, max {max(warm):.1f} MB, "
          f"growth {growth:+.1f} MB over {a.steps - a.steps // 10} steps; "
          f"{prof['s_per_iteration']:.3f} s/it")


if __name__ == "__main__":
    main()
