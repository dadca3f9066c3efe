"""Benchmark companion: counted training memory where a model does not fit.

``bench/bench_train_step.py`` measures peak memory by running a step; on this 23 GiB machine the
voxel-space 3D DDPM at 128³ and WDM without checkpointing at 256³ run out of memory, so the
"WDM ≤ 0.2× ddpm3d at 128³" ratio cannot be measured there. This script counts what those steps
need (:func:`wdm.activation_memory.count_training_memory`: activations saved for the backward
pass + weights, gradients and AdamW moments) without allocating it, for every (model, resolution)
asked, and puts the count beside the measured ``peak_minus_baseline_gb`` of
``results/bench/train_step.csv`` where that row ran, so the counting can be checked where both
exist. The count is deterministic (no repeats needed); it is a lower bound of the true peak.

Run:  python bench/bench_activation_memory.py [--rows wdm:64 ddpm3d:64 wdm:128 ddpm3d:128 wdm:256]
Writes results/bench/activation_memory.csv.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH_DIR, print_rows, setup_logging, write_rows  # noqa: E402

log = logging.getLogger("bench.activation_memory")

DEFAULT_ROWS = ("wdm:64", "ddpm3d:64", "wdm:128", "ddpm3d:128", "wdm:256")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="MODEL:RESOLUTION")
    p.add_argument("--widths", choices=["paper", "tiny"], default="paper")
    p.add_argument("--measured", default=str(BENCH_DIR / "train_step.csv"),
                   help="train_step.csv to compare with (rows that ran)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="activation_memory")
    a = p.parse_args(argv)
    setup_logging()
    import pandas as pd
    import torch

    from bench.bench_train_step import run_config
    from wdm.activation_memory import count_training_memory
    from wdm.config import resolve_run_config

    torch.set_num_threads(a.threads)
    measured = pd.read_csv(a.measured) if Path(a.measured).is_file() else None
    rows = []
    for spec in a.rows:
        model, _, res = spec.partition(":")
        res = int(res)
        cfg, src = run_config(model, res, a.widths)
        t0 = time.perf_counter()
        out = count_training_memory(resolve_run_config(cfg), res)
        row = {"model": model, "resolution": res, **out, "forward_s": time.perf_counter() - t0,
               "config": src}
        if measured is not None:
            hit = measured[(measured["label"] == model) & (measured["resolution"] == res)]
            if len(hit):
                m = hit.iloc[0]
                row["measured_status"] = m["status"]
                ok = m["status"] == "ok"
                row["measured_gb"] = float(m["peak_minus_baseline_gb"]) if ok else None
                row["estimate_vs_measured"] = out["estimate_gb"] / row["measured_gb"] if ok else None
        rows.append(row)
    by = {(r["model"], r["resolution"]): r for r in rows}
    for r in rows:
        d = by.get(("ddpm3d", r["resolution"]))
        r["estimate_vs_ddpm3d"] = r["estimate_gb"] / d["estimate_gb"] if d else None
    write_rows(rows, a.out)
    print_rows(rows, ["model", "resolution", "saved_activations_gb", "param_state_gb", "estimate_gb",
                      "measured_status", "measured_gb", "estimate_vs_measured", "estimate_vs_ddpm3d"])
    for res in sorted({r["resolution"] for r in rows}):
        w, d = by.get(("wdm", res)), by.get(("ddpm3d", res))
        if w and d:
            sys.stdout.write(f"counted at {res}^3: WDM {w['estimate_gb']:.2f} GB vs ddpm3d "
                             f"{d['estimate_gb']:.2f} GB -> {w['estimate_gb'] / d['estimate_gb']:.3f}x\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
