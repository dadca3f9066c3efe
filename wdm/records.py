"""Run records: the JSON files each stage writes (train, sample, probe), built in one place.

Every record of a kind has the same fields whatever its status (``ok``, ``oom``, or for probes
also ``error`` / ``timeout``, see :mod:`wdm.oom`): a field the stage did not measure is null. So a
successful record and an out-of-memory record cannot drift apart, and readers (the table, the
figures) can index every field without guessing. :func:`make_record` refuses a field its kind does
not declare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wdm.oom import STATUS_OK

__all__ = ["RecordKind", "TRAIN", "SAMPLE", "PROBE", "make_record"]


@dataclass(frozen=True)
class RecordKind:
    """A kind of record: its name and every field besides ``status`` and ``error``, in order."""

    name: str
    fields: tuple[str, ...]


#: ``RUN/train_profile.json``.
TRAIN = RecordKind("train", (
    "model", "stage", "steps_trained", "best_checkpoint_step", "steps_total", "finished",
    "oom_at_step", "rank", "s_per_iteration", "wall_seconds_this_call", "peak_memory_gb",
    "peak_memory_kind", "n_parameters", "device", "batch_size", "batch_size_per_process",
    "world_size", "precision", "activation_checkpointing", "volume_shape", "data", "model_info",
    "converted_from", "checkpoint", "flop_budget", "identity_hash", "config_hash", "code_version",
))

#: ``samples/sample_profile.json``.
SAMPLE = RecordKind("sample", (
    "failed_stage", "model", "n", "seed", "sampler", "sampler_steps", "batch_size", "s_per_volume",
    "peak_memory_gb", "peak_memory_kind", "device", "checkpoint", "checkpoint_step",
    "checkpoint_sha256", "weights", "provenance_key", "config_hash", "config", "code_version",
))

#: One memory/time probe (:mod:`wdm.probe`).
PROBE = RecordKind("probe", (
    "model", "stage", "mode", "resolution", "batch_size", "options", "note", "s_per_it",
    "s_per_it_all", "n_parameters", "n_trainable_parameters", "sampler", "sampler_steps",
    "probe_sample_steps", "s_generate_probe", "s_per_volume", "device", "peak_memory_gb",
    "peak_memory_kind", "rss_baseline_gb", "peak_minus_baseline_gb", "child_peak_rss_gb", "wall_s",
    "config_hash", "code_version",
))


def make_record(kind: RecordKind, status: str = STATUS_OK, error: str | None = None,
                **values: Any) -> dict[str, Any]:
    """A record of ``kind``: ``status``, ``error`` and every field of the kind (null unless given).

    Raises ValueError for a field the kind does not declare (a programming error, not user input).
    """
    unknown = sorted(set(values) - set(kind.fields))
    if unknown:
        raise ValueError(f"{kind.name} records have no fields {unknown}; declared: {list(kind.fields)}")
    return {"status": status, "error": error, **dict.fromkeys(kind.fields), **values}
