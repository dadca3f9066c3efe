"""The training loop in named steps (as guided-diffusion's ``TrainLoop``) and its shared set-up.

:func:`setup_training` turns a built model into what a training step needs (modules on the device,
memory options, optimizers, bf16/DDP wrappers, the weights' EMA); :class:`TrainLoop` (used by
:func:`wdm.train.train`) and the memory probes (:mod:`wdm.probe`) both go through it, so a probe
measures the step the run takes. :class:`TrainLoop` splits a run into ``setup`` -> ``restore`` ->
``run`` (``run_step``, ``log_step``, ``save``) -> ``finish``.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from wdm import distributed
from wdm.checkpoints import remove_partial_checkpoints, save_checkpoint
from wdm.config import config_hash, dump_yaml
from wdm.data.prepare import split_files
from wdm.ema import EMA
from wdm.io import (
    InputError,
    atomic_path,
    code_version,
    load_nifti,
    load_prepared_volume,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from wdm.model import BenchmarkModel, build_model, model_class
from wdm.oom import STATUS_OK
from wdm.profiling import (
    device_description,
    median_seconds,
    peak_memory_gb,
    peak_memory_kind,
    reset_peak_memory,
)
from wdm.records import TRAIN, make_record
from wdm.runs import identity_hash, write_record

__all__ = ["Training", "setup_training", "TrainLoop", "batch_indices"]

log = logging.getLogger(__name__)

def batch_indices(n_items: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Indices of the batch for 0-based ``step``: epochs of seeded permutations, concatenated.

    A pure function of its arguments, so a resumed run sees exactly the batches it would have seen.
    """
    out: list[int] = []
    pos = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(pos, n_items)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_items, generator=g).tolist()
        take = perm[offset: offset + batch_size - len(out)]
        out.extend(take)
        pos += len(take)
    return out


class _AutocastForward(nn.Module):
    """Runs ``module``'s forward under bf16 ``torch.autocast``; returns float32 (loss in fp32).

    The weights, their gradients and the optimizer stay float32 (mixed precision, not bf16 weights).
    """

    def __init__(self, module: nn.Module, device_type: str) -> None:
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return out.float()


@dataclass
class Training:
    """What one training step needs: the unwrapped modules (checkpointed), the optimizers, the
    keyword arguments of :meth:`~wdm.model.BenchmarkModel.training_step`, and the EMA of the
    weights (``training.ema``; None when off)."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    step_options: dict[str, Any]
    activation_checkpointing: bool
    ema: EMA | None = None

    def step(self, model: BenchmarkModel, x: torch.Tensor, generator: torch.Generator,
             step: int) -> dict[str, torch.Tensor]:
        """One update on ``x`` (B, 1, D, H, W) in [-1, 1]; ``step`` 0-based. The EMA follows it."""
        out = model.training_step(x, generator, self.optimizers, step, **self.step_options)
        if self.ema is not None:
            self.ema.after_step(step)
        return out


def _memory_options(model: BenchmarkModel, tcfg: dict, device: torch.device) -> bool:
    """Check ``training.precision`` and apply ``training.activation_checkpointing``.

    Returns whether activation checkpointing is on (also when ``network.use_checkpoint`` set it).
    """
    if tcfg["precision"] == "bf16":
        if not model.single_objective:
            raise InputError(f"training.precision bf16: model {model.name!r} trains with its own "
                             "training_step, which runs in fp32 only; use precision fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InputError(f"training.precision bf16: {device_description(device)} does not "
                             "support bfloat16; use precision fp32")
    if tcfg["activation_checkpointing"] and not model.set_activation_checkpointing(True):
        raise InputError(f"training.activation_checkpointing: none of model {model.name!r}'s "
                         f"networks {sorted(model.modules())} supports it; set it to false")
    return model.activation_checkpointing()


def setup_training(model: BenchmarkModel, tcfg: dict, device: torch.device,
                   ctx: distributed.DistContext | None = None) -> Training:
    """Modules to ``device`` in train mode, memory options, optimizers, bf16 and DDP wrappers.

    ``ctx``: the data-parallel context (None: one process). The wrappers replace the trained
    modules on the model (see :func:`wdm.distributed.wrap_trained`); the returned ``modules`` are
    the unwrapped ones, whose state dicts are checkpointed. With ``training.ema`` set, their
    weights' EMA (:class:`wdm.ema.EMA`) starts here, at the initial weights on ``device``.
    """
    ctx = ctx or distributed.DistContext()
    distributed.check_ddp_support(model, ctx)
    modules = model.modules()
    for m in modules.values():
        m.to(device).train()
    checkpointing = _memory_options(model, tcfg, device)
    optimizers = model.configure_optimizers(tcfg)

    def wrap(module: nn.Module) -> nn.Module:
        if tcfg["precision"] == "bf16":
            module = _AutocastForward(module, device.type)
        return distributed.wrap_ddp(module, device) if ctx.enabled else module

    distributed.init(ctx, device)  # the process group, before the DDP wrappers
    distributed.wrap_trained(model, modules, wrap)
    options: dict[str, Any] = {"grad_clip": tcfg["grad_clip"]}
    if ctx.enabled:
        options["shard"] = (distributed.shard_bounds(tcfg["batch_size"], ctx)[0], tcfg["batch_size"])
    ema = (EMA(modules, tcfg["ema"], tcfg["ema_every"], tcfg["ema_start"])
           if tcfg.get("ema") is not None else None)
    return Training(modules, optimizers, options, checkpointing, ema)


class TrainLoop:
    """One call of :func:`wdm.train.train`: a run folder advanced by up to ``training.steps``.

    Args:
        cfg: resolved run config (its stage configured).
        data_dir, run_dir: the prepared data folder and the run folder.
        ctx, device: the data-parallel context and this process's device.
        budget: how ``training.steps`` was derived from ``training.flop_budget`` (recorded in the
            profile), or None.
    """

    def __init__(self, cfg: dict, data_dir: Path, run_dir: Path, ctx: distributed.DistContext,
                 device: torch.device, identity: dict[str, Any], *, progress: bool = True,
                 budget: dict[str, Any] | None = None) -> None:
        self.cfg, self.tcfg, self.identity = cfg, cfg["training"], identity
        self.budget = budget  # the steps' derivation from training.flop_budget (wdm.budget)
        self.data_dir, self.run_dir, self.ctx, self.device = data_dir, run_dir, ctx, device
        self.progress = progress
        self.stage = model_class(cfg).stage
        self.volume_shape: tuple[int, ...] | None = None
        self.current_step: int | None = None  # the step being trained (for an OOM report)
        self.last_checkpoint: Path | None = None
        self.oom = False
        self.step = 0
        self.best: dict[str, Any] = {"step": 0, "loss": float("inf")}
        self.times: list[float] = []
        self.interval: list[float] = []  # losses since the last checkpoint

    # -- set-up -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Load the training volumes, build the model (seeded) and its training set-up."""
        self.files, self.cache, self.data_info = _load_volumes(self.data_dir, self.tcfg["cache_data"])
        self.volume_shape = tuple(self.data_info["shape"])
        torch.manual_seed(self.tcfg["seed"])  # network initialisation
        try:
            self.model = build_model(self.cfg, self.volume_shape)
        except ValueError as exc:
            raise InputError(f"{self.files[0]}: volumes of shape {self.volume_shape} do not suit "
                             f"model {self.cfg['model']!r} ({exc})") from exc
        self.training = setup_training(self.model, self.tcfg, self.device, self.ctx)
        self.generator = torch.Generator(device=self.device).manual_seed(self.tcfg["seed"])

    def restore(self, saved: dict | None, resume: bool) -> None:
        """Continue from the checkpoint ``saved`` (model, optimizers, EMA, RNG, step, best), if any.

        Its identity was checked by :func:`wdm.train.train`: the same configuration and data.
        """
        if saved is None:
            return
        for name, m in self.training.modules.items():
            m.load_state_dict(saved["model"][name])
        opts = self.training.optimizers
        if set(saved["optimizer"]) != set(opts):
            raise InputError(f"{self.run_dir}: the checkpoint's optimizers {sorted(saved['optimizer'])} "
                             f"differ from the model's {sorted(opts)}")
        for name, o in opts.items():
            o.load_state_dict(saved["optimizer"][name])
        if self.training.ema is not None:
            if saved.get("ema") is None:
                raise InputError(f"{self.run_dir}: training.ema is set but the checkpoint at step "
                                 f"{saved['step']} holds no EMA of the weights")
            self.training.ema.load_state_dict(saved["ema"], f"{self.run_dir} (step {saved['step']})")
        self.generator.set_state(saved["generator"].cpu())
        self.step, self.best = int(saved["step"]), dict(saved["best"])
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def prepare_run_dir(self) -> None:
        """Rank 0: the folder, no partial checkpoint, the resolved config, the loss log cut to step."""
        if not self.ctx.is_main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_partial_checkpoints(self.run_dir):
            log.warning("removed the partial checkpoint %s left by an interrupted run", stale)
        write_text_atomic(self.run_dir / "config.yaml", dump_yaml(self.cfg))
        _truncate_loss_log(self.run_dir / "loss.csv", self.step)

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, max_steps: int | None = None) -> dict:
        """Train to ``training.steps`` (or ``max_steps`` more); returns the profile."""
        self.prepare_run_dir()
        total = self.tcfg["steps"]
        stop = total if max_steps is None else min(total, self.step + max_steps)
        reset_peak_memory(self.device)
        t_start = time.perf_counter()
        bar = tqdm(total=total, initial=self.step, desc=f"train {self.cfg['model']}",
                   disable=not self.progress or not self.ctx.is_main, dynamic_ncols=True)
        log_file = open(self.run_dir / "loss.csv", "a", newline="") if self.ctx.is_main else None
        self.writer = csv.writer(log_file) if log_file is not None else None
        self.log_file, self.header = log_file, None
        try:
            while self.step < stop:
                losses = self.run_step()
                bar.update(1)
                if self.step % self.tcfg["log_every"] == 0 or self.step == stop:
                    self.log_step(losses, bar)
                if self.step % self.tcfg["checkpoint_every"] == 0 or self.step == stop:
                    self.save()
        finally:
            if log_file is not None:
                log_file.close()
            bar.close()
        return self.finish(time.perf_counter() - t_start)

    def run_step(self) -> dict[str, float]:
        """One optimisation step on the step's batch; returns the (all-reduced) logged losses."""
        self.current_step = self.step + 1
        t0 = time.perf_counter()
        tcfg = self.tcfg
        idx = batch_indices(len(self.files), tcfg["batch_size"], self.step, tcfg["seed"])
        rows = distributed.shard_bounds(tcfg["batch_size"], self.ctx)
        x = _get_batch(self.files, self.cache, idx[rows[0]:rows[1]], self.volume_shape).to(self.device)
        out = self.training.step(self.model, x, self.generator, self.step)
        if self.ctx.enabled:
            out = distributed.all_reduce_mean(out, self.ctx)
        losses = {k: float(v) for k, v in out.items()}
        bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
        if bad:
            raise FloatingPointError(f"loss became {bad} at step {self.step + 1}; "
                                     "lower training.lr or enable training.grad_clip")
        self.step += 1
        self.last_dt = time.perf_counter() - t0
        self.times.append(self.last_dt)
        self.interval.append(losses["loss"])
        return losses

    def log_step(self, losses: dict[str, float], bar: Any) -> None:
        """Append a row to ``loss.csv`` (rank 0) and show the loss on the progress bar."""
        if self.writer is None:
            return
        if self.header is None:
            self.header = ["step", *losses, "s_per_it"]
            if self.log_file.tell() == 0:
                self.writer.writerow(self.header)
        self.writer.writerow([self.step, *(f"{v:.6g}" for v in losses.values()), f"{self.last_dt:.4g}"])
        self.log_file.flush()
        bar.set_postfix(loss=f"{losses['loss']:.4f}")

    def save(self) -> None:
        """Close the loss interval, update the best checkpoint, write the checkpoint (rank 0)."""
        mean_loss = float(np.mean(self.interval))
        self.interval.clear()
        if mean_loss < self.best["loss"]:
            self.best = {"step": self.step, "loss": mean_loss}
        if not self.ctx.is_main:
            return
        state = {  # the unwrapped modules: the same keys as a single-process run
            "best": self.best,
            "step": self.step,
            "model": {k: m.state_dict() for k, m in self.training.modules.items()},
            "optimizer": {k: o.state_dict() for k, o in self.training.optimizers.items()},
            "ema": self.training.ema.state_dict() if self.training.ema is not None else None,
            "generator": self.generator.get_state(),
            "config": self.cfg,
            "identity": self.identity,
            "data": self.data_info,
            "code_version": code_version(),
        }
        self.last_checkpoint = save_checkpoint(self.run_dir, state, self.tcfg["keep_last"])

    # -- the record -------------------------------------------------------------------------------
    def setup_facts(self, checkpointing: bool | None) -> dict[str, Any]:
        """Profile fields describing how the run was set up (shared by the ok and the OOM profile)."""
        tcfg = self.tcfg
        return {"device": device_description(self.device), "batch_size": tcfg["batch_size"],
                "batch_size_per_process": tcfg["batch_size"] // self.ctx.world_size,
                "world_size": self.ctx.world_size, "precision": tcfg["precision"],
                "activation_checkpointing": checkpointing}

    def _final_checkpoint(self) -> dict[str, Any] | None:
        """Name, step and SHA-256 of the checkpoint this call wrote last (rank 0), for provenance."""
        path = self.last_checkpoint if self.ctx.is_main else None
        return {"file": path.name, "step": self.step, "sha256": sha256_file(path)} if path else None

    def finish(self, wall_seconds: float) -> dict:
        """The profile of this call; written to ``train_profile.json`` once the run is complete."""
        total = self.tcfg["steps"]
        params = [p for m in self.training.modules.values() for p in m.parameters()]
        profile = make_record(
            TRAIN, STATUS_OK, model=self.cfg["model"], stage=self.stage, steps_trained=self.step,
            best_checkpoint_step=self.best["step"], steps_total=total, finished=self.step >= total,
            s_per_iteration=median_seconds(self.times, skip=min(5, len(self.times) // 2)),
            wall_seconds_this_call=wall_seconds, peak_memory_gb=peak_memory_gb(self.device),
            peak_memory_kind=peak_memory_kind(self.device), n_parameters=sum(p.numel() for p in params),
            **self.setup_facts(self.training.activation_checkpointing),
            volume_shape=list(self.volume_shape),
            data={k: v for k, v in self.data_info.items() if k != "affine"},
            model_info=self.model.run_info(), checkpoint=self._final_checkpoint(),
            flop_budget=self.budget,
            identity_hash=identity_hash(self.identity), config_hash=config_hash(self.cfg),
            code_version=code_version())
        if self.step >= total and self.ctx.is_main:
            write_record(self.run_dir, profile)
            write_json_atomic(self.run_dir / "train_profile.json", profile)
        log.info("trained %s to step %d/%d: %.3f s/it, peak %.2f GB", self.cfg["model"], self.step,
                 total, profile["s_per_iteration"] or float("nan"), profile["peak_memory_gb"])
        return profile


def _load_volumes(data_dir: Path, cache: bool) -> tuple[list[Path], torch.Tensor | None, dict]:
    """The training files, their stacked voxels if ``cache`` ((N, D, H, W) float32), data facts."""
    files = split_files(data_dir, "train")
    first = load_prepared_volume(files[0])
    affine = load_nifti(files[0])[1]
    info = {"shape": list(first.shape), "affine": affine.tolist(), "data_dir": str(data_dir),
            "n_train": len(files)}
    if not cache:
        return files, None, info
    vols = np.empty((len(files), *first.shape), dtype=np.float32)
    for i, f in enumerate(tqdm(files, desc="loading volumes", leave=False, disable=None)):
        vols[i] = first if i == 0 else load_prepared_volume(f, first.shape)
    return files, torch.from_numpy(vols), info


def _get_batch(files: list[Path], cache: torch.Tensor | None, idx: list[int],
               shape: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, D, H, W) voxels mapped from [0, 1] to [-1, 1]."""
    if cache is not None:
        x = cache[idx]
    else:
        x = torch.stack([torch.from_numpy(load_prepared_volume(files[i], shape)) for i in idx])
    return x.unsqueeze(1) * 2.0 - 1.0


def _truncate_loss_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (left by a run killed after its last checkpoint) and damaged
    rows (a job killed mid-line; each is logged with its line number)."""
    if not path.exists():
        return
    with open(path, newline="", errors="replace") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]]
    for line, row in enumerate(rows[1:], start=2):
        if row and row[0].isdigit() and len(row) == len(rows[0]):
            if int(row[0]) <= step:
                kept.append(row)
        elif row:
            log.warning("%s:%d: dropped a damaged row %r", path, line, ",".join(row)[:80])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
