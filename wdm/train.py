"""Training loop: a data folder + a run config -> a run folder (checkpoints, loss log, profile).

Run folder layout::

    RUN/config.yaml              resolved run config (every default filled in)
    RUN/checkpoints/step_NNNNNNN.pt   model, optimizer, EMA, step, RNG state, config, data info
    RUN/loss.csv                 step, loss (and any other losses the model reports), s/iteration
    RUN/train_profile.json       status, s/iteration, peak memory, steps, device, provenance (at the end)

Reproducibility: batch order is a pure function of (seed, step) and all diffusion noise comes from
one ``torch.Generator`` whose state is checkpointed, so ``--resume`` continues exactly where a run
stopped (bit-identical on CPU). Checkpoints are written atomically and rotated (keep_last), see
:mod:`wdm.checkpoints`.

The loop calls the model contract of :mod:`wdm.model` only. Under ``torchrun`` the global batch is
split over the processes with torch DDP (:mod:`wdm.distributed`; rank 0 writes the run folder);
``training.precision: bf16`` runs the trained modules' forward under ``torch.autocast`` (fp32
weights, optimizer and loss); ``training.activation_checkpointing`` recomputes residual-block
activations in the backward pass; ``training.ema`` keeps a checkpointed moving average of the
weights (:mod:`wdm.ema`) that sampling uses. Running out of memory (GPU or CPU) is not a crash:
``train_profile.json`` gets ``"status": "oom"`` and a one-line ``"error"`` (see :mod:`wdm.oom`),
so the workflow goes on and the table shows OOM.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from wdm import distributed
from wdm.budget import apply_flop_budget
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.config import config_hash, load_run_config, resolve_run_config
from wdm.data.prepare import split_files
from wdm.io import InputError, code_version, load_prepared_volume, write_json_atomic
from wdm.locks import folder_lock
from wdm.loop import TrainLoop, batch_indices, setup_training
from wdm.model import configure_stage
from wdm.oom import STATUS_OOM, is_out_of_memory, one_line, release_memory
from wdm.profiling import device_description, resolve_device
from wdm.records import TRAIN, make_record
from wdm.runs import RECORD_NAME, move_aside, read_record, run_identity

__all__ = ["train", "batch_indices", "setup_training"]

log = logging.getLogger(__name__)


def train(config: str | os.PathLike | dict, data_dir: str | os.PathLike, run_dir: str | os.PathLike,
          *, resume: bool = False, stage: str | None = None, progress: bool = True,
          max_steps: int | None = None) -> dict:
    """Train a model from ``data_dir`` (a prepared data folder) into ``run_dir``.

    ``config``: a run-config file or dict; ``stage``: the training stage of a staged model (the
    3D LDM's ``vqgan`` or ``diffusion``; default the config's own), see
    :func:`wdm.model.configure_stage`. With ``resume`` the rerun semantics of :mod:`wdm.runs`
    apply (continue the same run, keep a finished one, move another run aside); without it a
    folder with checkpoints is an error. One process at a time trains into a folder
    (:mod:`wdm.locks`). ``max_steps`` stops after that many steps of this call (for tests).
    Returns the training profile, also written to ``RUN/train_profile.json`` when the run has
    finished or ran out of memory.
    """
    cfg = load_run_config(config) if not isinstance(config, dict) else resolve_run_config(config)
    cfg = configure_stage(cfg, run_dir, stage)
    budget = None
    if cfg["training"]["flop_budget"] is not None:
        cfg, budget = apply_flop_budget(cfg, _volume_shape(Path(data_dir)))
    tcfg = cfg["training"]
    ctx = distributed.context_from_env()
    distributed.shard_bounds(tcfg["batch_size"], ctx)  # the divisibility check, up front
    if ctx.world_size != tcfg["gpus"] and ctx.is_main:
        log.warning("training.gpus is %d but %d process(es) run: the global batch %d is split over "
                    "%d (the loss curve does not depend on it)", tcfg["gpus"], ctx.world_size,
                    tcfg["batch_size"], ctx.world_size)
    device = resolve_device(tcfg["device"], ctx.local_rank if ctx.enabled else None)
    run_dir = Path(run_dir)
    identity = run_identity(cfg, data_dir)
    lock = folder_lock(run_dir, "training") if ctx.is_main else contextlib.nullcontext()
    with lock:
        saved = _previous_run(run_dir, identity, resume, ctx)
        if saved is not None and int(saved["step"]) >= tcfg["steps"]:
            return _finished(run_dir, identity, saved, ctx)
        loop = TrainLoop(cfg, Path(data_dir), run_dir, ctx, device, identity, progress=progress,
                         budget=budget)
        try:
            loop.setup()
            loop.restore(saved, resume)
            return loop.run(max_steps)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            return _out_of_memory(loop, exc)
        finally:
            if not loop.oom:  # after an OOM the other ranks may be stuck in a collective
                distributed.shutdown(ctx)


def _volume_shape(data_dir: Path) -> tuple[int, ...]:
    """(D, H, W) of the data folder's first training volume."""
    return tuple(load_prepared_volume(split_files(data_dir, "train")[0]).shape)


def _previous_run(run_dir: Path, identity: dict, resume: bool,
                  ctx: distributed.DistContext) -> dict | None:
    """The latest checkpoint to continue from (loaded on the CPU), or None for a fresh run.

    Without ``resume`` a folder with checkpoints is an error; with it, a run of another identity
    is moved aside (rank 0; the other ranks of a data-parallel job then see no checkpoint).
    """
    last = latest_checkpoint(run_dir)
    if last is None:
        if resume:
            log.warning("%s: --resume given but no checkpoint found; starting from scratch", run_dir)
        return None
    if not resume:
        raise InputError(f"{run_dir}: holds checkpoints already (latest {last.name}); "
                         "pass --resume to continue or choose a new run folder")
    saved = load_checkpoint(last)
    if saved.get("identity") == identity:
        return saved
    if ctx.is_main:
        move_aside(run_dir, saved.get("identity"))
    return None


def _finished(run_dir: Path, identity: dict, saved: dict, ctx: distributed.DistContext) -> dict:
    """A finished run of the same identity: train nothing, keep every measurement."""
    record = read_record(run_dir, identity)
    if record is None:
        raise InputError(f"{run_dir}: the run reached step {saved['step']} but its record "
                         f"({RECORD_NAME}) is missing or damaged, so its measurements are "
                         "lost; move the folder away to train it again")
    if ctx.is_main:
        write_json_atomic(run_dir / "train_profile.json", record)
    log.info("%s: finished run of this configuration (step %d); nothing to train", run_dir,
             record["steps_trained"])
    return record


def _out_of_memory(loop: TrainLoop, exc: BaseException) -> dict:
    """Log a clear error and write the ``"status": "oom"`` profile (any rank: the one that failed)."""
    loop.oom = True
    cfg, ctx, device = loop.cfg, loop.ctx, loop.device
    release_memory(device)
    tcfg = cfg["training"]
    error = one_line(exc)
    where = f"step {loop.current_step}" if loop.current_step else "set-up"
    log.error(
        "training %s ran out of memory at %s: volumes %s, global batch %d (%d per process, %d "
        "process(es)), precision %s, device %s. Try a smaller training.batch_size, "
        "training.activation_checkpointing: true, training.precision: bf16, or more GPUs "
        "(training.gpus, launched with torchrun). The run is recorded as OOM and the workflow goes "
        "on. (%s)", cfg["model"], where, list(loop.volume_shape or []) or None, tcfg["batch_size"],
        tcfg["batch_size"] // ctx.world_size, ctx.world_size, tcfg["precision"],
        device_description(device), error)
    checkpointing = bool(tcfg["activation_checkpointing"] or cfg["network"].get("use_checkpoint"))
    profile = make_record(
        TRAIN, STATUS_OOM, error, model=cfg["model"], stage=loop.stage,
        oom_at_step=loop.current_step, rank=ctx.rank, steps_total=tcfg["steps"], finished=False,
        **loop.setup_facts(checkpointing),
        volume_shape=list(loop.volume_shape) if loop.volume_shape else None,
        config_hash=config_hash(cfg), code_version=code_version())
    loop.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(loop.run_dir / "train_profile.json", profile)
    return profile

