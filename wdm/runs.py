"""What makes two training runs the same run, and what a rerun does with a run folder.

A run's *identity* is everything that changes its numbers: the resolved run config without its
operational settings (:data:`OPERATIONAL`: where and how fast it runs, how often it logs; and the
whole ``sampling`` section, which training never reads), the SHA-256 of the data folder's
``manifest.csv``, and whatever earlier runs the model reads (the 3D LDM's stage-1 checkpoint,
:meth:`wdm.model.BenchmarkModel.upstream_identity`). It is stored in every checkpoint.

Rerun semantics of ``wdm-bench train --resume`` (what the workflow calls):

* same identity, unfinished: continue from the latest checkpoint (bit-identical on CPU);
* same identity, finished: nothing is trained; the record of the finished run
  (``RUN/train_record.json``) is written back to ``RUN/train_profile.json`` unchanged;
* another identity: the old folder is moved aside to ``RUN.replaced-<old identity hash>`` and a
  fresh run starts, so numbers of two configurations are never mixed in one folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from wdm.io import InputError, sha256_file, write_json_atomic
from wdm.model import model_class
from wdm.oom import STATUS_OK

__all__ = ["OPERATIONAL", "run_identity", "identity_hash", "RECORD_NAME", "read_record",
           "write_record", "move_aside"]

log = logging.getLogger(__name__)

#: Settings that may change between the calls of one run without changing its numbers.
OPERATIONAL: dict[str, tuple[str, ...]] = {
    "training": ("device", "cache_data", "activation_checkpointing", "log_every", "keep_last", "gpus"),
}
#: Sections that training never reads.
UNUSED_BY_TRAINING = ("sampling",)
RECORD_NAME = "train_record.json"


def run_identity(cfg: dict, data_dir: str | os.PathLike) -> dict[str, Any]:
    """The identity of training ``cfg`` on the data folder ``data_dir`` (see the module docstring)."""
    manifest = Path(data_dir) / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"{data_dir}: no manifest.csv; not a data folder written by 'wdm-bench prepare'")
    settings = copy.deepcopy({k: v for k, v in cfg.items() if k not in UNUSED_BY_TRAINING})
    for section, keys in OPERATIONAL.items():
        for key in keys:
            settings.get(section, {}).pop(key, None)
    return {"config": settings, "data_manifest_sha256": sha256_file(manifest),
            "upstream": model_class(cfg).upstream_identity(cfg)}


def identity_hash(identity: dict[str, Any]) -> str:
    """Short SHA-256 of an identity's canonical JSON."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def read_record(run_dir: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The record of the finished run with this identity, or None."""
    path = run_dir / RECORD_NAME
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and record.get("status") == STATUS_OK
    return record if ok and record.get("identity_hash") == identity_hash(identity) else None


def write_record(run_dir: Path, profile: dict[str, Any]) -> None:
    """Keep the profile of the finished run beside its checkpoints (Snakemake deletes the
    workflow's copy, ``RUN/train_profile.json``, before it reruns a job)."""
    write_json_atomic(run_dir / RECORD_NAME, profile)


def move_aside(run_dir: Path, old_identity: dict[str, Any] | None) -> Path:
    """Rename ``run_dir`` to ``RUN.replaced-<hash>`` (``-2``, ``-3``... if taken); returns the new path."""
    tag = identity_hash(old_identity) if old_identity else "unknown"
    target = run_dir.with_name(f"{run_dir.name}.replaced-{tag}")
    n = 2
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.replaced-{tag}-{n}")
        n += 1
    os.replace(run_dir, target)
    log.warning("%s holds a run of another configuration or data (identity %s); moved it to %s "
                "and starting a fresh run", run_dir, tag, target)
    return target
