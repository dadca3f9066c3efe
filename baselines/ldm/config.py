"""Per-stage run configs of the latent diffusion baseline, derived from one config file.

``config/models/ldm.yaml`` holds both stages: ``training`` is stage 2's (its ``ema`` too),
``ldm.vqgan.steps``, ``batch_size``, ``ema`` (null: Khader et al. keep no average of the VQ-GAN)
and ``grad_clip`` are stage 1's. :func:`stage_config` returns the run config of one stage.
"""

from __future__ import annotations

import os

from wdm.config import resolve_run_config
from wdm.io import InputError

__all__ = ["stage_config"]


def stage_config(cfg: dict, stage: str, vqgan_run: str | os.PathLike | None = None) -> dict:
    """The resolved run config of ``stage`` ('vqgan' or 'diffusion') from an ldm run config.

    Stage 1 takes ``training.steps`` / ``training.batch_size`` from ``ldm.vqgan``; stage 2 needs the
    stage-1 run folder (``vqgan_run`` or the config's ``ldm.vqgan_run``).
    """
    cfg = resolve_run_config(cfg)
    if cfg["model"] != "ldm":
        raise InputError(f"model: expected 'ldm' for an ldm stage config, got {cfg['model']!r}")
    ldm = cfg["ldm"]
    ldm["stage"] = stage
    if stage == "vqgan":
        ldm["vqgan_run"] = None
        tr = cfg["training"]
        tr["steps"] = ldm["vqgan"]["steps"]
        tr["batch_size"] = ldm["vqgan"]["batch_size"]
        tr["checkpoint_every"] = min(tr["checkpoint_every"], tr["steps"])
        tr["ema"] = ldm["vqgan"].get("ema")  # Khader et al. average the denoiser only: null
        tr["grad_clip"] = ldm["vqgan"].get("grad_clip")  # theirs: 1.0 (gradient_clip_val)
    elif stage == "diffusion":
        run = vqgan_run if vqgan_run is not None else ldm["vqgan_run"]
        if not run:
            raise InputError("ldm.vqgan_run: stage 2 needs the stage-1 run folder (--vqgan-run)")
        ldm["vqgan_run"] = str(run)
    else:
        raise InputError(f"ldm.stage: expected 'vqgan' or 'diffusion', got {stage!r}")
    return resolve_run_config(cfg)
