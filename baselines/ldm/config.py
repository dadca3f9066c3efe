"""Per-stage run configs of the latent diffusion baseline, derived from one config file.

``config/models/ldm.yaml`` holds both stages: ``training`` is stage 2's, ``ldm.vqgan.steps`` and
``ldm.vqgan.batch_size`` are stage 1's. :func:`stage_config` returns the run config of one stage;
``python -m baselines.ldm stage-config --config FILE --stage vqgan|diffusion [--vqgan-run DIR]
--out FILE`` writes it (atomically) for ``wdm-bench train``.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from wdm.config import dump_yaml, load_run_config, resolve_run_config
from wdm.io import InputError, write_text_atomic

__all__ = ["stage_config", "main"]

log = logging.getLogger(__name__)


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
    elif stage == "diffusion":
        run = vqgan_run if vqgan_run is not None else ldm["vqgan_run"]
        if not run:
            raise InputError("ldm.vqgan_run: stage 2 needs the stage-1 run folder (--vqgan-run)")
        ldm["vqgan_run"] = str(run)
    else:
        raise InputError(f"ldm.stage: expected 'vqgan' or 'diffusion', got {stage!r}")
    return resolve_run_config(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m baselines.ldm stage-config ...``: write one stage's run config."""
    p = argparse.ArgumentParser(prog="python -m baselines.ldm", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stage-config", help="write the run config of one ldm training stage")
    s.add_argument("--config", required=True, help="ldm run config (config/models/ldm.yaml)")
    s.add_argument("--stage", required=True, choices=["vqgan", "diffusion"])
    s.add_argument("--vqgan-run", default=None, help="stage-1 run folder (stage diffusion)")
    s.add_argument("--out", required=True, help="output YAML file")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = stage_config(load_run_config(a.config), a.stage, a.vqgan_run)
        write_text_atomic(Path(a.out), dump_yaml(cfg))
    except InputError as exc:
        log.error("%s", exc)
        return 2
    log.info("wrote ldm %s-stage config %s", a.stage, a.out)
    return 0
