"""GPU check: the paper's memory and speed claims on a CUDA machine, as one prepared command.

Each check is a probe (:func:`wdm.probe.measure`, in this process: on CUDA
``torch.cuda.reset_peak_memory_stats`` before and ``torch.cuda.max_memory_allocated`` after, the
quantity the paper reports) of one training step or one sampling step (one network evaluation with
wavelet clipping and the decoding, ``sample_steps = 1``), a warm-up and ``--repeats`` timed calls:

* ``wdm-128 sample`` (paper: 2.55 GB), ``wdm-128 train b10`` (the paper's batch 10),
* ``wdm-256 sample`` (paper: 7.27 GB), ``wdm-256 train fp32`` and ``wdm-256 train bf16`` (batch 1),
* ``wdm-512 J=2 train ckpt``: two packet-Haar levels at 512^3 with activation checkpointing,
* ``ddp 2 steps``: ``torchrun --nproc_per_node <GPUs>`` of ``wdm-bench train`` for 2 steps on a
  phantom data set (NCCL; with one GPU it runs with nproc 1, which is not data-parallel, and says so).

``--cpu-smoke`` runs the same checks on the CPU at 16^3 (the 128^3 rows) and 32^3 (256^3 and 512^3)
with the tiny presets and a 2-process gloo DDP run, in well under a minute: it checks the script, not
the machine (CPU memory is the process's peak RSS, which cannot be reset between checks).
Prints one plain-text table row per check (also written to ``--out``, e.g.
``results/bench/gpu_check.txt``). ``bench/gpu_check.sh`` is the one command to run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MIN_REPEATS, REPO, print_rows  # noqa: E402

__all__ = ["CHECKS", "check_config", "run_checks", "main"]

log = logging.getLogger("bench.gpu_check")

#: (name, paper config, preset, tiny preset, levels, resolution, smoke resolution, mode, batch,
#: precision, checkpointing, the paper's sampling GB)
CHECKS = (
    ("wdm-128 sample", "wdm_128", "wdm-128", "tiny", 1, 128, 16, "sample", 1, "fp32", False, 2.55),
    ("wdm-128 train b10", "wdm_128", "wdm-128", "tiny", 1, 128, 16, "train", 10, "fp32", False, None),
    ("wdm-256 sample", "wdm_256", "wdm-256", "tiny", 1, 256, 32, "sample", 1, "fp32", False, 7.27),
    ("wdm-256 train fp32", "wdm_256", "wdm-256", "tiny", 1, 256, 32, "train", 1, "fp32", False, None),
    ("wdm-256 train bf16", "wdm_256", "wdm-256", "tiny", 1, 256, 32, "train", 1, "bf16", False, None),
    ("wdm-512 J=2 train ckpt", "wdm_512", "wdm-512", "tiny", 2, 512, 32, "train", 1, "fp32", True,
     None),
)
DDP_NAME = "ddp 2 steps"
COLUMNS = ("check", "status", "peak_gb", "paper_gb", "s_per_step", "memory", "device", "note")


def check_config(spec: tuple, smoke: bool) -> dict[str, Any]:
    """The run config of a check: its paper config with the check's preset and levels."""
    import yaml

    _, base, preset, tiny, levels, *_ = spec
    cfg = yaml.safe_load((REPO / "config" / "paper" / "models" / f"{base}.yaml").read_text())
    cfg.setdefault("network", {}).update(preset=tiny if smoke else preset, use_checkpoint=False)
    cfg.setdefault("diffusion", {})["levels"] = levels
    cfg.setdefault("training", {}).update(device="auto")
    return cfg


def _probe_row(spec: tuple, device: str, smoke: bool, repeats: int) -> dict[str, Any]:
    """Measure one check in this process; its table row."""
    import gc

    import torch

    from wdm.probe import measure

    name, _, _, _, _, res, smoke_res, mode, batch, precision, ckpt, paper = spec
    r = smoke_res if smoke else res
    t0 = time.perf_counter()
    out = measure(check_config(spec, smoke), r, mode, batch_size=batch, repeats=repeats,
                  checkpointing=ckpt, precision=precision, sample_steps=1, device=device)
    s = out.get("s_generate_probe") if mode == "sample" else out.get("s_per_it")
    row = {"check": name, "status": out["status"], "peak_gb": out.get("peak_memory_gb"),
           "paper_gb": paper, "s_per_step": s, "memory": out.get("peak_memory_kind"),
           "device": out.get("device"),
           "note": "; ".join(filter(None, [f"{r}^3 batch {batch} {precision}", out.get("note"),
                                           out.get("error"), f"{time.perf_counter() - t0:.0f} s"]))}
    del out
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def _ddp_config(tmp: Path, smoke: bool, nproc: int) -> Path:
    """The DDP check's run config: WDM (tiny at 16^3, wdm-128 at 128^3), 2 steps, 1 volume a rank."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "paper" / "models" / "wdm_128.yaml").read_text())
    cfg["network"] = {"preset": "tiny" if smoke else "wdm-128"}
    cfg["training"].update(steps=2, batch_size=nproc, gpus=nproc, checkpoint_every=2, log_every=1,
                           keep_last=1, device="cpu" if smoke else "cuda")
    path = tmp / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ddp_row(smoke: bool, timeout_s: float) -> dict[str, Any]:
    """``torchrun`` of a 2-step training run over every GPU (2 gloo processes for the smoke)."""
    import torch

    from wdm.data.prepare import prepare

    ngpu = 0 if smoke else torch.cuda.device_count()
    nproc = 2 if smoke else max(1, ngpu)
    size = 16 if smoke else 128
    row = {"check": DDP_NAME, "paper_gb": None, "memory": None}
    with tempfile.TemporaryDirectory(prefix="wdm-gpu-check-") as tmp:
        t0 = time.perf_counter()
        data = prepare("phantom-brain", Path(tmp) / "data", size=size, n_train=2 * nproc, n_test=1,
                       progress=False)
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
        env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(nproc), "-m", "wdm.cli", "train", "--config", str(_ddp_config(Path(tmp), smoke, nproc)),
               "--data", str(data), "--out", str(Path(tmp) / "run"), "--no-progress", "--threads", "1"]
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return row | {"status": "timeout", "note": f"torchrun past {timeout_s:.0f} s"}
        prof_path = Path(tmp) / "run" / "train_profile.json"
        prof = json.loads(prof_path.read_text()) if prof_path.is_file() else {}
        ok = proc.returncode == 0 and prof.get("status", "ok") == "ok"
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-2:])
        alone = "" if nproc > 1 else "one GPU: nproc 1, not data-parallel; "
        row.update(status="ok" if ok else "error", peak_gb=prof.get("peak_memory_gb"),
                   s_per_step=prof.get("s_per_iteration"), memory=prof.get("peak_memory_kind"),
                   device=f"{nproc} x {'cpu (gloo)' if smoke else 'cuda (nccl)'}",
                   note=alone + f"{size}^3, global batch {nproc}, rank 0's peak; "
                        f"{time.perf_counter() - t0:.0f} s" + ("" if ok else f"; {tail[-300:]}"))
    return row


def run_checks(smoke: bool, repeats: int, only: list[str] | None = None,
               ddp_timeout_s: float = 300.0) -> list[dict[str, Any]]:
    """Every check's table row, in order (``only``: a subset of the check names)."""
    import torch

    device = "cpu" if smoke else "cuda"
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --cpu-smoke to test the script on the CPU)")
    if smoke:
        torch.set_num_threads(1)
    rows = [_probe_row(spec, device, smoke, repeats) for spec in CHECKS
            if not only or spec[0] in only]
    if not only or DDP_NAME in only:
        rows.append(_ddp_row(smoke, ddp_timeout_s))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Run the checks and print (and optionally write) the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (tests the script)")
    p.add_argument("--repeats", type=int, default=MIN_REPEATS)
    p.add_argument("--only", nargs="+", default=None, help="a subset of the check names")
    p.add_argument("--out", default=None, help="also write the table here (e.g. results/bench/gpu_check.txt)")
    a = p.parse_args(argv)
    if a.repeats < MIN_REPEATS:
        p.error(f"--repeats must be >= {MIN_REPEATS}, got {a.repeats}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    t0 = time.perf_counter()
    rows = run_checks(a.cpu_smoke, a.repeats, a.only)
    for r in rows:
        r["paper_gb"] = r.get("paper_gb") or None
    text = print_rows(rows, COLUMNS)
    footer = (f"peak_gb: {rows[0].get('memory')} (cuda_max_allocated = torch.cuda.max_memory_allocated,"
              f" the paper's quantity); s_per_step: median of {a.repeats} after a warm-up; "
              f"total {time.perf_counter() - t0:.0f} s")
    sys.stdout.write(footer + "\n")
    if a.out:
        from wdm.io import atomic_path

        with atomic_path(Path(a.out)) as tmp:
            Path(tmp).write_text(text + "\n" + footer + "\n")
    return rows


if __name__ == "__main__":
    main()
