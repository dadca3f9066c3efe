"""Training loop: a data folder + a run config -> a run folder (checkpoints, loss log, profile).

Run folder layout::

    RUN/config.yaml              resolved run config (every default filled in)
    RUN/checkpoints/step_NNNNNNN.pt   model, optimizer, step, RNG state, config, data info
    RUN/loss.csv                 step, loss (and any other losses the model reports), s/iteration
    RUN/train_profile.json       status, s/iteration, peak memory, steps, device, provenance (at the end)

Reproducibility: batch order is a pure function of (seed, step) and all diffusion noise comes from
one ``torch.Generator`` whose state is checkpointed, so ``--resume`` continues exactly where a run
stopped (bit-identical on CPU). Checkpoints are written atomically and rotated (keep_last).

Scale (issue 6): under ``torchrun`` the global batch is split over the processes with torch DDP
(:mod:`wdm.distributed`; rank 0 writes the run folder); ``training.precision: bf16`` runs the
trained network's forward under ``torch.autocast`` (fp32 weights, optimizer and loss);
``training.activation_checkpointing`` recomputes residual-block activations in the backward pass.
Running out of memory (GPU or CPU) is not a crash: ``train_profile.json`` gets ``"status": "oom"``
and a one-line ``"error"`` (see :mod:`wdm.oom`), so the workflow goes on and the table shows OOM.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eval.profiling import device_description, median_seconds, peak_memory_gb, reset_peak_memory
from wdm import distributed
from wdm.config import config_hash, dump_yaml, load_run_config, resolve_run_config
from wdm.data.prepare import split_files
from wdm.io import (
    InputError,
    atomic_path,
    code_version,
    load_nifti,
    load_prepared_volume,
    write_json_atomic,
    write_text_atomic,
)
from wdm.model import get_model_class
from wdm.oom import STATUS_OK, STATUS_OOM, is_out_of_memory, one_line, release_memory

__all__ = ["train", "latest_checkpoint", "best_checkpoint", "load_checkpoint", "resolve_device",
           "batch_indices"]

log = logging.getLogger(__name__)

_CKPT_GLOB = "step_*.pt"
#: Sections that must match between a run's saved config and the one given to --resume.
_FROZEN_SECTIONS = ("model", "network", "diffusion")


def resolve_device(name: str, index: int | None = None) -> torch.device:
    """'auto' -> CUDA if available else CPU; 'cuda' without a GPU is an error.

    ``index``: the GPU of this process (torchrun's LOCAL_RANK) under data-parallel training.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available")
    if name == "cuda" and index is not None:
        if index >= torch.cuda.device_count():
            raise InputError(f"process LOCAL_RANK {index} has no GPU: {torch.cuda.device_count()} "
                             "visible; start at most one process per GPU")
        return torch.device("cuda", index)
    return torch.device(name)


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


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``RUN/checkpoints``, or None."""
    ckpts = sorted((Path(run_dir) / "checkpoints").glob(_CKPT_GLOB))
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a corrupt file is an :class:`InputError`."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    missing = {"step", "model", "config", "data", "best"} - set(ckpt) if isinstance(ckpt, dict) else {"all"}
    if missing:
        raise InputError(f"{path}: not a wdm-bench checkpoint (missing {sorted(missing)})")
    return ckpt


def _load_volumes(data_dir: Path, cache: bool) -> tuple[list[Path], torch.Tensor | None, dict]:
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


def _save_checkpoint(run_dir: Path, state: dict, keep_last: int) -> Path:
    """Write ``step_NNNNNNN.pt`` atomically; keep the last ``keep_last`` and the best one.

    "Best" is the checkpoint with the lowest mean training loss since the previous checkpoint
    (``state['best']['step']``), so a long run cannot fill the disk and never loses its best.
    """
    path = run_dir / "checkpoints" / f"step_{state['step']:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    best = path.parent / f"step_{state['best']['step']:07d}.pt"
    for old in sorted(path.parent.glob(_CKPT_GLOB))[:-keep_last]:
        if old != best:
            old.unlink(missing_ok=True)
    return path


def best_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The kept checkpoint with the lowest interval loss (as recorded by the latest one)."""
    last = latest_checkpoint(run_dir)
    if last is None:
        return None
    best = load_checkpoint(last)["best"]
    return last.parent / f"step_{best['step']:07d}.pt"


def _check_resume_config(saved: dict, cfg: dict, path: Path) -> None:
    for key in _FROZEN_SECTIONS:
        if saved.get(key) != cfg.get(key):
            raise InputError(
                f"{path}: checkpoint was trained with {key}={saved.get(key)!r}, the config says "
                f"{cfg.get(key)!r}; resume with the run's own config/RUN/config.yaml or start a new run"
            )


def train(config: str | os.PathLike | dict, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
          *, resume: bool = False, progress: bool = True, max_steps: int | None = None) -> dict:
    """Train the configured model on ``data_dir``'s training split into ``run_dir``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process runs this function on its shard of the
    global batch (:mod:`wdm.distributed`); rank 0 writes the run folder.

    Args:
        config: run config file or dict (validated; defaults filled).
        data_dir: a prepared data folder (manifest.csv + train/ NIfTI volumes in [0, 1]).
        run_dir: output folder. Must hold no checkpoint unless ``resume``.
        resume: continue from the latest checkpoint in ``run_dir``.
        max_steps: stop after this many steps in this call (for tests of interruption).

    Returns:
        The training profile (also written to ``RUN/train_profile.json`` when training finished or
        ran out of memory; ``status`` is ``"ok"`` or ``"oom"``, ``error`` a line or None).
    """
    cfg = load_run_config(config) if not isinstance(config, dict) else resolve_run_config(config)
    tcfg = cfg["training"]
    ctx = distributed.context_from_env()
    rows = distributed.shard_bounds(tcfg["batch_size"], ctx)  # the divisibility check, up front
    if ctx.world_size != tcfg["gpus"] and ctx.is_main:
        log.warning("training.gpus is %d but %d process(es) run: the global batch %d is split over "
                    "%d (the loss curve does not depend on it)", tcfg["gpus"], ctx.world_size,
                    tcfg["batch_size"], ctx.world_size)
    device = resolve_device(tcfg["device"], ctx.local_rank if ctx.enabled else None)
    facts: dict[str, Any] = {"step": None, "volume_shape": None}
    try:
        return _train(cfg, Path(data_dir), Path(run_dir), ctx, rows, device, facts,
                      resume=resume, progress=progress, max_steps=max_steps)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return _out_of_memory(cfg, Path(run_dir), ctx, device, facts, exc)
    finally:
        if not facts.get("oom"):  # after an OOM the other ranks may be stuck in a collective
            distributed.shutdown(ctx)


def _train(cfg: dict, data_dir: Path, run_dir: Path, ctx: distributed.DistContext, rows: tuple[int, int],
           device: torch.device, facts: dict, *, resume: bool, progress: bool,
           max_steps: int | None) -> dict:
    """The body of :func:`train`; ``facts`` collects what an out-of-memory report needs."""
    tcfg = cfg["training"]
    last = latest_checkpoint(run_dir)
    if last is not None and not resume:
        raise InputError(f"{run_dir}: holds checkpoints already (latest {last.name}); "
                         "pass --resume to continue or choose a new run folder")
    files, cache, data_info = _load_volumes(data_dir, tcfg["cache_data"])
    shape = tuple(data_info["shape"])
    facts["volume_shape"] = list(shape)

    torch.manual_seed(tcfg["seed"])  # network initialisation
    try:
        model = get_model_class(cfg["model"])(cfg, shape)
    except ValueError as exc:
        raise InputError(f"{files[0]}: volumes of shape {shape} do not suit model "
                         f"{cfg['model']!r} ({exc})") from exc
    distributed.check_ddp_support(model, ctx)
    modules = model.modules()
    for m in modules.values():
        m.to(device).train()
    params = [p for m in modules.values() for p in m.parameters()]
    checkpointing = _memory_options(model, modules, tcfg, device)
    if hasattr(model, "configure_optimizers"):
        opts = model.configure_optimizers(tcfg)
    else:
        opts = {"main": torch.optim.AdamW(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])}
    gen = torch.Generator(device=device).manual_seed(tcfg["seed"])
    step = 0
    best: dict[str, Any] = {"step": 0, "loss": float("inf")}
    if resume and last is not None:
        ckpt = load_checkpoint(last, map_location=device)
        _check_resume_config(ckpt["config"], cfg, last)
        for name, m in modules.items():
            m.load_state_dict(ckpt["model"][name])
        if set(ckpt["optimizer"]) != set(opts):
            raise InputError(f"{last}: optimizers {sorted(ckpt['optimizer'])} differ from the "
                             f"model's {sorted(opts)}")
        for name, o in opts.items():
            o.load_state_dict(ckpt["optimizer"][name])
        gen.set_state(ckpt["generator"].cpu())
        step = int(ckpt["step"])
        best = dict(ckpt["best"])
        log.info("resumed %s at step %d", last, step)
    elif resume:
        log.warning("%s: --resume given but no checkpoint found; starting from scratch", run_dir)

    distributed.init(ctx, device)
    if hasattr(model, "training_step"):
        step_fn = model.training_step
    else:
        distributed.wrap_trained(model, modules, lambda m: _wrap(m, tcfg["precision"], device, ctx))
        step_fn = _default_step(model, params, tcfg, rows if ctx.enabled else None)
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / "checkpoints").glob(".step_*"):  # a job killed while saving
            log.warning("removing the partial checkpoint %s left by an interrupted run", stale)
            stale.unlink(missing_ok=True)
        write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        _truncate_loss_log(run_dir / "loss.csv", step)

    total = tcfg["steps"]
    stop = total if max_steps is None else min(total, step + max_steps)
    reset_peak_memory(device)
    times: list[float] = []
    interval: list[float] = []  # losses since the last checkpoint
    n = len(files)
    t_start = time.perf_counter()
    bar = tqdm(total=total, initial=step, desc=f"train {cfg['model']}",
               disable=not progress or not ctx.is_main, dynamic_ncols=True)
    with ExitStack() as stack:
        lf = stack.enter_context(open(run_dir / "loss.csv", "a", newline="")) if ctx.is_main else None
        writer = csv.writer(lf) if lf is not None else None
        header: list[str] | None = None
        while step < stop:
            facts["step"] = step + 1
            t0 = time.perf_counter()
            idx = batch_indices(n, tcfg["batch_size"], step, tcfg["seed"])[rows[0]:rows[1]]
            x = _get_batch(files, cache, idx, shape).to(device)
            out = step_fn(x, gen, opts, step)
            if ctx.enabled:
                out = distributed.all_reduce_mean(out, ctx)
            losses = {k: float(v) for k, v in out.items()}
            bad = {k: v for k, v in losses.items() if not np.isfinite(v)}
            if bad:
                raise FloatingPointError(f"loss became {bad} at step {step + 1}; "
                                         "lower training.lr or enable training.grad_clip")
            step += 1
            dt = time.perf_counter() - t0
            times.append(dt)
            interval.append(losses["loss"])
            bar.update(1)
            if writer is not None and (step % tcfg["log_every"] == 0 or step == stop):
                if header is None:
                    header = ["step", *losses, "s_per_it"]
                    if lf.tell() == 0:
                        writer.writerow(header)
                writer.writerow([step, *(f"{v:.6g}" for v in losses.values()), f"{dt:.4g}"])
                lf.flush()
                bar.set_postfix(loss=f"{losses['loss']:.4f}")
            if step % tcfg["checkpoint_every"] == 0 or step == stop:
                mean_loss = float(np.mean(interval))
                interval.clear()
                if mean_loss < best["loss"]:
                    best = {"step": step, "loss": mean_loss}
                if ctx.is_main:  # the unwrapped modules: the same keys as a single-process run
                    state = {
                        "best": best,
                        "step": step,
                        "model": {k: m.state_dict() for k, m in modules.items()},
                        "optimizer": {k: o.state_dict() for k, o in opts.items()},
                        "generator": gen.get_state(),
                        "config": cfg,
                        "data": data_info,
                        "code_version": code_version(),
                    }
                    _save_checkpoint(run_dir, state, tcfg["keep_last"])
    bar.close()
    profile: dict[str, Any] = {
        "status": STATUS_OK,
        "error": None,
        "model": cfg["model"],
        "steps_trained": step,
        "best_checkpoint_step": best["step"],
        "steps_total": total,
        "finished": step >= total,
        "s_per_iteration": median_seconds(times, skip=min(5, len(times) // 2)),
        "wall_seconds_this_call": time.perf_counter() - t_start,
        "peak_memory_gb": peak_memory_gb(device),
        "peak_memory_kind": "cuda_max_allocated" if device.type == "cuda" else "process_peak_rss",
        "n_parameters": sum(p.numel() for p in params),
        **_setup_facts(cfg, ctx, device, checkpointing),
        "config_hash": config_hash(cfg),
        "code_version": code_version(),
        "data": {k: v for k, v in data_info.items() if k != "affine"},
    }
    if hasattr(model, "run_info"):  # optional: facts a model records about its run (JSON-able)
        profile["model_info"] = model.run_info()
    if step >= total and ctx.is_main:
        write_json_atomic(run_dir / "train_profile.json", profile)
    log.info("trained %s to step %d/%d: %.3f s/it, peak %.2f GB", cfg["model"], step, total,
             profile["s_per_iteration"] or float("nan"), profile["peak_memory_gb"])
    return profile


def _setup_facts(cfg: dict, ctx: distributed.DistContext, device: torch.device,
                 checkpointing: bool | None) -> dict[str, Any]:
    """Profile fields describing how the run was set up (shared by the ok and the OOM profile)."""
    tcfg = cfg["training"]
    return {
        "device": device_description(device),
        "batch_size": tcfg["batch_size"],
        "batch_size_per_process": tcfg["batch_size"] // ctx.world_size,
        "world_size": ctx.world_size,
        "precision": tcfg["precision"],
        "activation_checkpointing": checkpointing,
    }


def _out_of_memory(cfg: dict, run_dir: Path, ctx: distributed.DistContext, device: torch.device,
                   facts: dict, exc: BaseException) -> dict:
    """Log a clear error and write the ``"status": "oom"`` profile (any rank: the one that failed)."""
    facts["oom"] = True
    release_memory(device)
    tcfg = cfg["training"]
    error = one_line(exc)
    where = f"step {facts['step']}" if facts["step"] else "set-up"
    log.error(
        "training %s ran out of memory at %s: volumes %s, global batch %d (%d per process, %d "
        "process(es)), precision %s, device %s. Try a smaller training.batch_size, "
        "training.activation_checkpointing: true, training.precision: bf16, or more GPUs "
        "(training.gpus, launched with torchrun). The run is recorded as OOM and the workflow goes "
        "on. (%s)", cfg["model"], where, facts["volume_shape"], tcfg["batch_size"],
        tcfg["batch_size"] // ctx.world_size, ctx.world_size, tcfg["precision"],
        device_description(device), error)
    checkpointing = bool(tcfg["activation_checkpointing"] or cfg["network"].get("use_checkpoint"))
    profile: dict[str, Any] = {
        "status": STATUS_OOM,
        "error": error,
        "model": cfg["model"],
        "oom_at_step": facts["step"],
        "rank": ctx.rank,
        "steps_total": tcfg["steps"],
        "finished": False,
        **dict.fromkeys(("steps_trained", "best_checkpoint_step", "s_per_iteration", "peak_memory_gb",
                         "wall_seconds_this_call", "peak_memory_kind", "n_parameters")),
        **_setup_facts(cfg, ctx, device, checkpointing),
        "volume_shape": facts["volume_shape"],
        "config_hash": config_hash(cfg),
        "code_version": code_version(),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "train_profile.json", profile)
    return profile


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


def _memory_options(model: Any, modules: dict[str, nn.Module], tcfg: dict, device: torch.device) -> bool:
    """Check ``training.precision`` and apply ``training.activation_checkpointing``.

    Returns whether activation checkpointing is on (also when ``network.use_checkpoint`` set it).
    """
    custom = hasattr(model, "training_step")
    if tcfg["precision"] == "bf16":
        if custom:
            raise InputError(f"training.precision bf16: model {model.name!r} trains with its own "
                             "training_step, which runs in fp32 only; use precision fp32")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise InputError(f"training.precision bf16: {device_description(device)} does not "
                             "support bfloat16; use precision fp32")
    switchable = [m for m in modules.values() if hasattr(m, "set_checkpointing")]
    if tcfg["activation_checkpointing"]:
        if not switchable:
            raise InputError(f"training.activation_checkpointing: none of model {model.name!r}'s "
                             f"networks {sorted(modules)} supports it; set it to false")
        for m in switchable:
            m.set_checkpointing(True)
    return any(bool(getattr(m, "use_checkpoint", False)) for m in switchable)


def _wrap(module: nn.Module, precision: str, device: torch.device,
          ctx: distributed.DistContext) -> nn.Module:
    """A trained module as the loss sees it: bf16 autocast around its forward, then DDP."""
    if precision == "bf16":
        module = _AutocastForward(module, device.type)
    return distributed.wrap_ddp(module, device) if ctx.enabled else module


def _default_step(model: Any, params: list[torch.nn.Parameter], tcfg: dict,
                  rows: tuple[int, int] | None) -> Any:
    """The training step of models with one objective: ``model.loss`` -> backward -> optimizer.

    ``rows``: this process's rows of the global batch under DDP (None: one process), passed to
    ``model.loss`` as ``shard=(start, global_batch)``.

    Models that need more (GANs: several optimizers, alternating updates) define
    ``configure_optimizers(training_cfg) -> dict[str, Optimizer]`` and
    ``training_step(x, generator, optimizers, step) -> dict[str, Tensor]`` (key ``loss`` first).
    """
    kwargs = {} if rows is None else {"shard": (rows[0], tcfg["batch_size"])}

    def step_fn(x: torch.Tensor, gen: torch.Generator, opts: dict, step: int) -> dict:
        loss = model.loss(x, gen, **kwargs)
        for o in opts.values():
            o.zero_grad(set_to_none=True)
        loss.backward()
        if tcfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, tcfg["grad_clip"])
        for o in opts.values():
            o.step()
        return {"loss": loss.detach()}

    return step_fn


def _truncate_loss_log(path: Path, step: int) -> None:
    """Drop log rows past ``step`` (left by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
