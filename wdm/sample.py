"""Sampling: a trained run folder -> N NIfTI volumes in [0, 1] with the data set's affine.

Volumes are made in batches; batch b draws all its randomness from a ``torch.Generator`` seeded
from (seed, b), so the same seed and batch size give the same volumes, and an interrupted job that
is run again writes only the volumes that are missing. Each file is written atomically.
``OUT/sample_profile.json`` (written last) records s/volume, peak memory, sampler and provenance,
and ``"status"``: ``"ok"``, or ``"oom"`` (see :mod:`wdm.oom`) when training ran out of memory (then
nothing is sampled) or sampling did (then the volumes of the failing batch are removed); both exit
normally so the rest of the workflow goes on and the table shows ``OOM``.

Provenance: ``OUT/provenance.json`` names the checkpoint (file, step, SHA-256), sampler, steps,
eta, seed, batch size and device type of the set (and ``"weights": "ema"`` when the run kept an
EMA of its weights, ``training.ema``, which is then what is sampled), and a key over them, written
before any volume; every profile records the key and the ``weights`` used. A rerun reuses
volumes only of the same key (a killed job resumes) and otherwise replaces the whole set; a
finished set of the same key is kept with its measurements. One process at a time samples into
a folder (:mod:`wdm.locks`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.config import config_hash, resolve_run_config
from wdm.io import InputError, code_version, save_nifti, sha256_file, write_json_atomic
from wdm.locks import folder_lock
from wdm.model import BenchmarkModel, build_model
from wdm.oom import STATUS_OK, STATUS_OOM, is_out_of_memory, one_line, read_status, release_memory
from wdm.profiling import (
    device_description,
    peak_memory_gb,
    peak_memory_kind,
    reset_peak_memory,
    resolve_device,
)
from wdm.records import SAMPLE, make_record

__all__ = ["sample", "batch_seed", "sample_path", "provenance", "sampled_weights", "PROVENANCE",
           "EMA_WEIGHTS"]

log = logging.getLogger(__name__)

#: The sidecar of a samples folder: the provenance of its set (and, once complete, its profile).
PROVENANCE = "provenance.json"
#: ``weights`` of a sample set drawn with the EMA of the trained weights (``training.ema``).
EMA_WEIGHTS = "ema"


def batch_seed(seed: int, batch: int) -> int:
    """Seed of batch ``batch``'s generator: independent streams from one user seed."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sample_path(out_dir: Path, i: int) -> Path:
    """File name of volume ``i``."""
    return out_dir / f"sample_{i:04d}.nii.gz"


@dataclass
class _Progress:
    """What the batches of one call made: volumes generated, seconds, the out-of-memory error."""

    made: int = 0
    seconds: float = 0.0
    error: str | None = None
    written: list[Path] = field(default_factory=list)


def sample(run_dir: str | os.PathLike, n: int, seed: int, out_dir: str | os.PathLike, *,
           sampler: str | None = None, steps: int | None = None, batch_size: int | None = None,
           device: str | None = None, checkpoint: str | os.PathLike | None = None,
           initial: bool = False, progress: bool = True) -> dict:
    """Generate ``n`` volumes from the latest checkpoint of ``run_dir`` into ``out_dir``.

    ``initial``: sample the run's untrained initialisation instead (the model built from the
    checkpoint's config with its ``training.seed``, as the run started; no weights loaded), the
    floor a trained model must beat. Its provenance records ``checkpoint_step`` 0.

    Sampler, steps, batch size and device default to the run config's ``sampling`` section; the
    overrides are validated by the same schema. The set's provenance (checkpoint step and SHA-256,
    sampler, steps, eta, seed, batch size, device type) is ``OUT/provenance.json``; volumes already
    in ``out_dir`` are reused only when it matches, otherwise the old set is replaced as a whole.
    Returns the sampling profile (also written to ``OUT/sample_profile.json``). If
    ``RUN/train_profile.json`` says training ran out of memory, or sampling does, the profile has
    ``"status": "oom"`` and an ``"error"`` line, and no exception is raised.
    """
    if n < 1:
        raise InputError(f"--n must be at least 1, got {n}")
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    train_status, train_prof = read_status(run_dir / "train_profile.json")
    if train_status == STATUS_OOM:
        with folder_lock(out_dir, "sampling"):
            return _upstream_oom(run_dir, out_dir, train_prof, n, seed)
    ckpt_path = Path(checkpoint) if checkpoint else latest_checkpoint(run_dir)
    if ckpt_path is None:
        raise InputError(f"{run_dir}: no checkpoint found in {run_dir / 'checkpoints'}")
    ckpt = load_checkpoint(ckpt_path)
    cfg = _with_sampling(ckpt, ckpt_path, sampler=sampler, steps=steps, batch_size=batch_size,
                         device=device)
    scfg = cfg["sampling"]
    dev = resolve_device(scfg["device"])
    model = _load_model(cfg, ckpt, dev, initial, ckpt_path)
    model.check_sampling(scfg)
    if initial:
        ckpt = {**ckpt, "step": 0}
    prov = provenance(cfg, ckpt, ckpt_path, seed, dev, initial)
    with folder_lock(out_dir, "sampling"):
        kept = _adopt_folder(out_dir, prov)
        if kept is not None and kept["n"] >= n and all(sample_path(out_dir, i).exists() for i in range(n)):
            return _keep(out_dir, kept, n)
        reset_peak_memory(dev)
        done = _generate_missing(model, scfg, n, seed, out_dir, np.asarray(ckpt["data"]["affine"]),
                                 dev, progress, ckpt_path)
        if done.error:
            release_memory(dev)
        profile = _profile(cfg, model, scfg, n, seed, dev, ckpt, ckpt_path, prov, done)
        if not done.error:
            write_json_atomic(out_dir / PROVENANCE, {**prov, "profile": profile})
        write_json_atomic(out_dir / "sample_profile.json", profile)
    if not done.error:
        log.info("sampled %d volumes (%s, %s steps): %.2f s/volume", n, profile["sampler"],
                 profile["sampler_steps"], profile["s_per_volume"] or float("nan"))
    return profile


def _keep(out_dir: Path, kept: dict, n: int) -> dict:
    """A finished set of this provenance: keep its first ``n`` volumes and its measurements."""
    for extra in out_dir.glob("sample_*.nii.gz"):
        if int(extra.name[7:11]) >= n:
            extra.unlink()
    profile = {**kept, "n": n}
    write_json_atomic(out_dir / PROVENANCE, {**_read_provenance(out_dir), "profile": profile})
    write_json_atomic(out_dir / "sample_profile.json", profile)
    log.info("%s: all %d volumes of this provenance present; nothing to do", out_dir, n)
    return profile


def _with_sampling(ckpt: dict, ckpt_path: Path, **overrides: Any) -> dict:
    """The checkpoint's run config with the sampling overrides that are given, validated."""
    cfg = resolve_run_config(ckpt["config"], source=str(ckpt_path))
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return cfg
    return resolve_run_config({**cfg, "sampling": {**cfg["sampling"], **given}},
                              source="command line")


def provenance(cfg: dict, ckpt: dict, ckpt_path: Path, seed: int, dev: torch.device,
               initial: bool = False) -> dict:
    """What the volumes of a sample run depend on, and its key (SHA-256 of the rest).

    ``initial``: the run's untrained initialisation was sampled (the checkpoint gave the config).
    ``"weights": "ema"`` only when the EMA weights were sampled, so the key of a run without EMA
    is what it was before the option existed.
    """
    scfg = cfg["sampling"]
    prov = {"model": cfg["model"], "checkpoint": ckpt_path.name, "checkpoint_step": int(ckpt["step"]),
            **({"initialisation": True} if initial else {}),
            **({"weights": EMA_WEIGHTS} if sampled_weights(cfg, initial) == EMA_WEIGHTS else {}),
            "checkpoint_sha256": sha256_file(ckpt_path), "sampler": scfg["sampler"],
            "steps": scfg["steps"], "eta": scfg["eta"], "seed": int(seed),
            "batch_size": scfg["batch_size"], "device_type": dev.type}
    return {"key": hashlib.sha256(json.dumps(prov, sort_keys=True).encode()).hexdigest()[:16], **prov}


def _adopt_folder(out_dir: Path, prov: dict) -> dict | None:
    """Make ``out_dir`` the home of a set with provenance ``prov``; returns the profile of a
    finished set of that provenance found there, if any.

    Volumes of another provenance (or of none recorded) are replaced as a whole: the folder is
    moved aside and removed, so a set of two provenances never exists. Files that are not samples
    are an error (the folder is not a samples folder).
    """
    _remove_partial_files(out_dir)
    if out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if not _is_managed(p.name))
        if foreign:
            raise InputError(f"{out_dir}: holds files that are not samples ({', '.join(foreign[:3])}); "
                             "choose an empty folder or a samples folder for --out")
    old = _read_provenance(out_dir)
    if old is not None and old.get("key") == prov["key"]:
        return old.get("profile")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        log.warning("%s: holds volumes of another provenance (%s); replacing the set", out_dir,
                    "none recorded" if old is None else f"key {old.get('key')}")
        aside = out_dir.with_name(f".{out_dir.name}.replaced-{os.getpid()}")
        os.replace(out_dir, aside)
        shutil.rmtree(aside)
    write_json_atomic(out_dir / PROVENANCE, prov)
    return None


def _is_managed(name: str) -> bool:
    return name.startswith(".") or name in (PROVENANCE, "sample_profile.json") or (
        name.startswith("sample_") and name.endswith(".nii.gz"))


def _read_provenance(out_dir: Path) -> dict | None:
    try:
        prov = json.loads((out_dir / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    return prov if isinstance(prov, dict) else None


def _profile(cfg: dict, model: BenchmarkModel, scfg: dict, n: int, seed: int, dev: torch.device,
             ckpt: dict, ckpt_path: Path, prov: dict, done: _Progress) -> dict:
    """The sample record of this call (``oom`` with the error, or ``ok`` with its measurements)."""
    measured = done.made and not done.error
    return make_record(
        SAMPLE, STATUS_OOM if done.error else STATUS_OK, done.error,
        failed_stage="sample" if done.error else None, model=cfg["model"], n=n, seed=seed,
        **model.sampling_record(scfg), batch_size=scfg["batch_size"],
        s_per_volume=(done.seconds / done.made) if measured else None,
        peak_memory_gb=peak_memory_gb(dev) if measured else None,
        peak_memory_kind=peak_memory_kind(dev), device=device_description(dev),
        checkpoint=str(ckpt_path), checkpoint_step=int(ckpt["step"]),
        checkpoint_sha256=prov["checkpoint_sha256"],
        weights=sampled_weights(cfg, bool(prov.get("initialisation"))), provenance_key=prov["key"],
        config_hash=config_hash(cfg), config=cfg, code_version=code_version())


def sampled_weights(cfg: dict, initial: bool = False) -> str:
    """Which weights a sample run of ``cfg`` uses: ``"initial"`` (``--initial``), ``"ema"`` (the
    run kept an EMA of its weights, ``training.ema``) or ``"raw"`` (the trained weights)."""
    if initial:
        return "initial"
    return EMA_WEIGHTS if cfg["training"].get("ema") is not None else "raw"


def _load_model(cfg: dict, ckpt: dict, dev: torch.device, initial: bool = False,
                ckpt_path: Path | None = None) -> BenchmarkModel:
    """The model of a checkpoint, its modules loaded, on ``dev`` in eval mode.

    The modules get the checkpoint's ``"ema"`` state dicts when its config sets ``training.ema``
    (:mod:`wdm.ema`), else its ``"model"`` ones. ``initial``: the run's initialisation instead,
    built as :class:`wdm.loop.TrainLoop` builds it (global seed ``training.seed``, under a forked
    RNG), no weights loaded (the EMA is ignored). ``ckpt_path`` names the file in errors.
    """
    weights = sampled_weights(cfg, initial)
    states = ckpt.get("ema") if weights == EMA_WEIGHTS else ckpt["model"]
    if weights == EMA_WEIGHTS and states is None:
        raise InputError(f"{ckpt_path or 'the checkpoint'}: its config sets training.ema "
                         f"{cfg['training']['ema']} but it holds no EMA weights")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["training"]["seed"])
        model = build_model(cfg, tuple(ckpt["data"]["shape"]))
    for name, m in model.modules().items():
        if not initial:
            m.load_state_dict(states[name])
        m.to(dev).eval()
    if not initial:
        log.info("sampling with the %s weights of step %d", weights, int(ckpt["step"]))
    return model


def _remove_partial_files(out_dir: Path) -> None:
    """Create ``out_dir``; delete temporary files left by a job killed while writing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".sample_*"):
        log.warning("removing the partial file %s left by an interrupted run", stale)
        stale.unlink(missing_ok=True)


def _generate_missing(model: BenchmarkModel, scfg: dict, n: int, seed: int, out_dir: Path,
                      affine: np.ndarray, dev: torch.device, progress: bool,
                      ckpt_path: Path) -> _Progress:
    """Generate and write every batch with a missing volume; stop at an out-of-memory error."""
    bs = scfg["batch_size"]
    n_batches = (n + bs - 1) // bs
    done = _Progress()
    for b in tqdm(range(n_batches), desc=f"sample {model.name}", disable=not progress):
        idx = list(range(b * bs, min(n, (b + 1) * bs)))
        if all(sample_path(out_dir, i).exists() for i in idx):
            continue
        done.written = []
        try:
            _one_batch(model, scfg, idx, batch_seed(seed, b), out_dir, affine, dev, done, ckpt_path)
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
            for f in [*done.written, *out_dir.glob(".sample_*")]:
                f.unlink(missing_ok=True)
            done.error = (f"sampling ran out of memory (model {model.name}, volumes "
                          f"{model.volume_shape}, batch size {bs}, device {dev}): {one_line(exc)}")
            log.error("%s. Removed the %d volume(s) of batch %d/%d. Try a smaller "
                      "sampling.batch_size (--batch-size %d) or a device with more memory; "
                      "volumes already written are kept.", done.error, len(done.written), b + 1,
                      n_batches, max(1, bs // 2))
            break
    return done


def _one_batch(model: BenchmarkModel, scfg: dict, idx: list[int], batch_seed_: int, out_dir: Path,
               affine: np.ndarray, dev: torch.device, done: _Progress, ckpt_path: Path) -> None:
    """One batch of ``sampling.batch_size`` volumes; writes those of ``idx`` that are missing.

    A batch with NaN/Inf voxels is an :class:`InputError` (nothing of it is written): a model
    whose weights hold NaN generates such volumes, and they must not be scored as samples.
    """
    gen = torch.Generator(device=dev).manual_seed(batch_seed_)
    t0 = time.perf_counter()
    x = model.generate(scfg["batch_size"], gen, sampler=scfg["sampler"], steps=scfg["steps"],
                       eta=scfg["eta"], device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    done.seconds += time.perf_counter() - t0
    done.made += scfg["batch_size"]
    x = x[:, 0].float().cpu()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise InputError(f"{ckpt_path}: the model generated {bad} NaN/Inf voxels in batch "
                         f"{idx[0] // scfg['batch_size'] + 1} (its weights or sampler settings are "
                         "broken); no volume of the batch was written")
    vols = ((x + 1.0) / 2.0).clamp(0.0, 1.0).numpy()
    for j, i in enumerate(idx):
        if not sample_path(out_dir, i).exists():
            done.written.append(sample_path(out_dir, i))
            save_nifti(done.written[-1], vols[j], affine)


def _upstream_oom(run_dir: Path, out_dir: Path, train_prof: dict[str, Any], n: int, seed: int) -> dict:
    """Training ran out of memory: write an ``"oom"`` sampling profile that says so; sample nothing."""
    error = f"training ran out of memory: {train_prof.get('error') or 'no details recorded'}"
    log.error("%s: %s; nothing to sample (see %s)", run_dir, error, run_dir / "train_profile.json")
    profile = make_record(SAMPLE, STATUS_OOM, error, failed_stage="train",
                          model=train_prof.get("model"), n=n, seed=seed,
                          device=train_prof.get("device"), config_hash=train_prof.get("config_hash"),
                          code_version=code_version())
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "sample_profile.json", profile)
    return profile
