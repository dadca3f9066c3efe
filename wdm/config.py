"""Configuration: YAML files validated by the suite's one JSON schema, with defaults filled in.

The schema (``wdm/schema/config.schema.yaml``, linked from ``workflow/schemas/``) describes the
workflow config at its top level and a model run config under ``$defs/run``. Errors name the file,
the field path and what was expected, e.g. ``cfg.yaml: training.lr: -1 is less than the minimum of 0``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import jsonschema
import yaml

from wdm.io import InputError

__all__ = [
    "SCHEMA_PATH",
    "load_schema",
    "validate",
    "load_run_config",
    "load_workflow_config",
    "resolve_run_config",
    "config_hash",
    "dump_yaml",
]

SCHEMA_PATH = Path(__file__).with_name("schema") / "config.schema.yaml"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The parsed JSON schema (a dict)."""
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def _local_def(ref: str) -> dict:
    """The schema's ``#/$defs/<name>`` entry for a local reference ({} for anything else)."""
    prefix = "#/$defs/"
    return load_schema()["$defs"].get(ref[len(prefix):], {}) if ref.startswith(prefix) else {}


def _with_defaults(validator_cls: type) -> type:
    """A validator class that fills ``default`` values of absent properties while validating."""
    validate_props = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
                elif "$ref" in sub and name not in instance:
                    target = _local_def(sub["$ref"])
                    if "default" in target:
                        instance[name] = copy.deepcopy(target["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def validate(instance: dict, *, definition: str | None = None, source: str = "config") -> dict:
    """Validate ``instance`` (copied) against the schema or one of its ``$defs``; fill defaults.

    Raises :class:`InputError` listing every problem as ``source: field.path: message``.
    """
    schema = load_schema()
    if definition is not None:
        schema = {**schema, "$ref": f"#/$defs/{definition}"}
        for key in ("properties", "required", "additionalProperties", "type"):
            schema.pop(key, None)
    inst = copy.deepcopy(instance) if instance is not None else {}
    if not isinstance(inst, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(inst).__name__}")
    errors = sorted(_Validator(schema).iter_errors(inst), key=lambda e: list(e.path))
    if errors:
        lines = [f"{source}: {'.'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors]
        raise InputError("; ".join(lines))
    return inst


def _read_yaml(path: str | os.PathLike) -> object:
    """Parse a YAML file; a missing file or bad YAML is an :class:`InputError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from exc


def load_run_config(path: str | os.PathLike) -> dict:
    """Read a model run config (YAML) and return it validated with every default filled in."""
    return resolve_run_config(_read_yaml(path), source=str(path))


def load_workflow_config(path: str | os.PathLike) -> dict:
    """Read the workflow config (config/config.yaml) and return it validated with defaults."""
    return validate(_read_yaml(path), source=str(path))


def resolve_run_config(raw: dict, source: str = "config") -> dict:
    """Validate a run config dict and fill its defaults (sections included)."""
    cfg = validate(raw, definition="run", source=source)
    # Nested defaults: sections that were absent were filled with {} and need a second pass.
    return validate(cfg, definition="run", source=source)


def config_hash(cfg: dict) -> str:
    """Short SHA-256 of the canonical JSON form of a resolved config (provenance)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def dump_yaml(cfg: dict) -> str:
    """YAML text of a config, keys in schema order as given."""
    return yaml.safe_dump(cfg, sort_keys=False)
