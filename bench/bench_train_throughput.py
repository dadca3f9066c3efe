"""Benchmark: training throughput of each default model, bare step beside the real training loop.

For every model (stage) of the default configs (``config/models/<model>.yaml``, or the files in
``--config-dir``) on a prepared data folder (``--data``, default the embedded phantom at 32^3), in
one process, side by side:

* ``gflop_per_step``: one training step's FLOPs (:func:`wdm.budget.training_flops_per_step`);
* ``bare_s``: the median of ``--repeats`` calls of ``training_step`` on one fixed batch (after a
  warm-up), i.e. the model's own cost;
* ``loop_s``: the training loop's own s/iteration (:func:`wdm.train.train` for ``--loop-steps``
  steps into a temporary run folder: batch selection, loading, the step, logging; the median the
  loop records, first steps skipped), and ``overhead`` = loop_s / bare_s - 1;
* ``steps_per_s`` (1 / loop_s) and ``gflop_per_s`` (achieved, from the loop).

Writes ``results/bench/train_throughput.csv`` (``--out``); ``--label`` names the rows (e.g.
``before`` / ``after`` a change) and ``--append`` keeps the rows already in the file.

Run:  python bench/bench_train_throughput.py --data data/phantom-brain/32 --label after
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, REPO, print_rows, setup_logging, write_rows  # noqa: E402

log = logging.getLogger("bench.train_throughput")

#: (model, stage) rows; the ldm's stage 2 trains on the stage-1 run trained just before it
ROWS = (("wdm", None), ("ddpm3d", None), ("hagan", None), ("ldm", "vqgan"), ("ldm", "diffusion"))


def _bare_step_seconds(cfg: dict, data_dir: Path, repeats: int) -> float:
    """Median seconds of ``training_step`` on one fixed batch of the data's first volumes."""
    import torch

    from wdm.data.prepare import split_files
    from wdm.io import load_prepared_volume
    from wdm.model import build_model

    files = split_files(data_dir, "train")
    bs = cfg["training"]["batch_size"]
    x = torch.stack([torch.from_numpy(load_prepared_volume(f)) for f in files[:bs]]).unsqueeze(1)
    torch.manual_seed(cfg["training"]["seed"])
    model = build_model(copy.deepcopy(cfg), tuple(x.shape[2:]))
    for m in model.modules().values():
        m.train()
    opts = model.configure_optimizers(cfg["training"])
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(repeats + 2):  # two warm-up steps
        t0 = time.perf_counter()
        model.training_step(x * 2 - 1, gen, opts, i, grad_clip=cfg["training"]["grad_clip"])
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def _row(model: str, stage: str | None, raw: dict, data_dir: Path, work: Path,
         a: argparse.Namespace) -> dict[str, Any]:
    from wdm.budget import training_flops_per_step
    from wdm.model import configure_stage
    from wdm.train import train

    run_dir = work / model / (stage or "run")
    cfg = configure_stage(raw, run_dir, stage)
    bare = _bare_step_seconds(cfg, data_dir, a.repeats)
    loop_cfg = copy.deepcopy(raw)
    loop_cfg["training"] = {**loop_cfg.get("training", {}), "steps": a.loop_steps,
                            "checkpoint_every": a.loop_steps, "flop_budget": None}
    if stage == "vqgan":
        loop_cfg["ldm"]["vqgan"] = {**loop_cfg["ldm"]["vqgan"], "steps": a.loop_steps}
    prof = train(loop_cfg, data_dir, run_dir, stage=stage, progress=False)
    flops = training_flops_per_step(cfg, prof["volume_shape"])
    loop_s = prof["s_per_iteration"]
    return {"label": a.label, "model": model, "stage": stage or "", "batch_size":
            cfg["training"]["batch_size"], "gflop_per_step": flops / 1e9, "bare_s": bare,
            "loop_s": loop_s, "overhead": loop_s / bare - 1.0, "steps_per_s": 1.0 / loop_s,
            "gflop_per_s": flops / 1e9 / loop_s, "loop_steps": a.loop_steps,
            "repeats": a.repeats, "threads": a.threads}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO / "data" / "phantom-brain" / "32")
    p.add_argument("--config-dir", type=Path, default=REPO / "config" / "models")
    p.add_argument("--models", nargs="+", default=None, help="subset of: wdm ddpm3d hagan ldm")
    p.add_argument("--label", default="current")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--loop-steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="train_throughput")
    p.add_argument("--append", action="store_true", help="keep the rows already in --out")
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}")
    setup_logging()
    import pandas as pd
    import torch

    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for model, stage in ROWS:
            if a.models and model not in a.models:
                continue
            raw = yaml.safe_load((a.config_dir / f"{model}.yaml").read_text())
            rows.append(_row(model, stage, raw, a.data, Path(work), a))
            log.info("%s %s: bare %.3f s, loop %.3f s", model, stage or "", rows[-1]["bare_s"],
                     rows[-1]["loop_s"])
    out = Path(a.out) if a.out.endswith(".csv") else REPO / "results" / "bench" / f"{a.out}.csv"
    if a.append and out.exists():
        old = pd.read_csv(out)
        rows = old[old["label"] != a.label].to_dict("records") + rows
    print_rows(rows, ["label", "model", "stage", "batch_size", "gflop_per_step", "bare_s", "loop_s",
                      "overhead", "steps_per_s", "gflop_per_s"])
    write_rows(rows, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
