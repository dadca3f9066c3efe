"""Configuration: YAML files validated by the suite's one JSON schema, with defaults filled in.

The schema (``wdm/schema/config.schema.yaml``, linked from ``workflow/schemas/``) describes the
workflow config at its top level and a model run config under ``$defs/run``. Errors name the file,
the field path and what was expected, e.g. ``cfg.yaml: training.lr: -1 is less than the minimum of 0``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from wdm.io import InputError, read_text

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMA_PATH",
    "FRAGMENT_NAME",
    "load_schema",
    "model_schema_fragment",
    "validate",
    "load_run_config",
    "load_workflow_config",
    "resolve_run_config",
    "EvaluationSettings",
    "load_evaluation_settings",
    "config_hash",
    "dump_yaml",
    "parse_yaml",
]

SCHEMA_PATH = Path(__file__).with_name("schema") / "config.schema.yaml"
#: File name of the schema fragment a model subpackage ships for its own run-config section.
FRAGMENT_NAME = "config.schema.yaml"


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The parsed JSON schema (a dict), without any model's fragment."""
    return parse_yaml(SCHEMA_PATH.read_text(), source=str(SCHEMA_PATH))


@cache
def model_schema_fragment(model: str) -> dict | None:
    """The schema of run-config section ``model`` shipped as ``baselines/<model>/config.schema.yaml``.

    Found without importing the model (only the ``baselines`` package itself is imported), so the
    workflow can validate run configs cheaply. None when the model has no section of its own.
    """
    if not _NAME.fullmatch(model or ""):
        return None
    try:
        spec = importlib.util.find_spec(f"baselines.{model}")
    except ModuleNotFoundError:
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / FRAGMENT_NAME
        if path.is_file():
            return parse_yaml(path.read_text(), source=str(path))
    return None


_NAME = re.compile(r"[a-z0-9_]+")


@cache
def _run_schema(model: str | None) -> dict:
    """The whole schema with model ``model``'s fragment merged in as ``$defs/run/properties/<model>``."""
    schema = copy.deepcopy(load_schema())
    fragment = copy.deepcopy(model_schema_fragment(model)) if model else None
    if fragment is not None:
        defs = fragment.pop("$defs", {})
        clash = sorted(set(defs) & set(schema["$defs"]))
        if clash:
            raise InputError(f"baselines/{model}/{FRAGMENT_NAME}: $defs {clash} already exist in "
                             f"{SCHEMA_PATH.name}; rename them")
        schema["$defs"].update(defs)
        schema["$defs"]["run"]["properties"][model] = fragment
    return schema


def _with_defaults(validator_cls: type, root: dict) -> type:
    """A validator class that fills ``default`` values of absent properties while validating.

    ``root``: the whole schema, whose ``#/$defs/<name>`` entries give the defaults of ``$ref`` s.
    """
    validate_props = validator_cls.VALIDATORS["properties"]
    prefix = "#/$defs/"

    def set_defaults(validator, properties, instance, schema):  # noqa: ANN001
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
                elif sub.get("$ref", "").startswith(prefix) and name not in instance:
                    target = root["$defs"].get(sub["$ref"][len(prefix):], {})
                    if "default" in target:
                        instance[name] = copy.deepcopy(target["default"])
        yield from validate_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


def validate(instance: dict, *, definition: str | None = None, source: str = "config",
             model: str | None = None) -> dict:
    """Validate ``instance`` (copied) against the schema or one of its ``$defs``; fill defaults.

    ``model``: merge that model's own section schema (:func:`model_schema_fragment`) first.
    Raises :class:`InputError` listing every problem as ``source: field.path: message``.
    """
    root = _run_schema(model)
    schema = root
    if definition is not None:
        schema = {**root, "$ref": f"#/$defs/{definition}"}
        for key in ("properties", "required", "additionalProperties", "type"):
            schema.pop(key, None)
    inst = copy.deepcopy(instance) if instance is not None else {}
    if not isinstance(inst, dict):
        raise InputError(f"{source}: expected a mapping at the top level, got {type(inst).__name__}")
    errors = sorted(_with_defaults(jsonschema.Draft202012Validator, root)(schema).iter_errors(inst),
                    key=lambda e: list(e.path))
    if errors:
        lines = [f"{source}: {'.'.join(map(str, e.path)) or '<top>'}: {e.message}" for e in errors]
        raise InputError("; ".join(lines))
    return inst


class _DuplicateKey(yaml.YAMLError):
    """A mapping that names one key twice (PyYAML would keep the last value silently)."""

    def __init__(self, key: object, first: int, second: int) -> None:
        super().__init__(f"duplicate key {key!r} (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads floats as YAML 1.2 does and refuses duplicate keys.

    PyYAML implements YAML 1.1, whose float pattern needs a dot and a signed exponent, so
    ``lr: 1e-4`` would be the *string* ``"1e-4"``; the resolver added below makes it the float
    0.0001, as YAML 1.2 (and every JSON reader) does.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` keys may be overridden on purpose
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+)$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str, source: str = "YAML") -> object:
    """Parse YAML text with :class:`_ConfigLoader`; errors are an :class:`InputError` naming ``source``."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise InputError(f"{source}: duplicate key {exc.key!r} at lines {exc.first} and "
                         f"{exc.second}, expected each key once per mapping") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None


def _read_yaml(path: str | os.PathLike) -> dict:
    """Parse a YAML config file into a mapping.

    A missing file, a folder, bytes that are not UTF-8, bad YAML, a duplicate key, an empty file
    (or one holding only ``null``) and a top level that is not a mapping (``[]``, ``0``,
    ``false``) are each an :class:`InputError` naming the file: none of them may silently become
    a run with every default.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a YAML config file")
    if not path.exists():
        raise InputError(f"{path}: config file not found")
    raw = parse_yaml(read_text(path, "YAML config file"), source=str(path))
    if raw is None:
        raise InputError(f"{path}: empty config (no settings), expected a mapping of settings")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level, got "
                         f"{type(raw).__name__} {raw!r:.40}")
    return raw


def load_run_config(path: str | os.PathLike) -> dict:
    """Read a model run config (YAML) and return it validated with every default filled in."""
    return resolve_run_config(_read_yaml(path), source=str(path))


def load_workflow_config(path: str | os.PathLike) -> dict:
    """Read the workflow config (config/config.yaml) and return it validated with defaults."""
    return validate(_read_yaml(path), source=str(path))


def resolve_run_config(raw: dict, source: str = "config") -> dict:
    """Validate a run config dict and fill its defaults (sections included).

    The ``model`` field (default from the schema) selects which model's own section schema is
    merged in. Sections of other models (present in configs saved before each model owned its
    section) are dropped with a log line.
    """
    if not isinstance(raw, dict):
        return validate(raw, definition="run", source=source)  # the one-line type error
    model = raw.get("model", load_schema()["$defs"]["run"]["properties"]["model"]["default"])
    model = model if isinstance(model, str) else None
    shared = load_schema()["$defs"]["run"]["properties"]
    foreign = [k for k in raw if k not in shared and k != model and model_schema_fragment(k)]
    if foreign:
        log.info("%s: ignoring the sections %s of other models", source, foreign)
        raw = {k: v for k, v in raw.items() if k not in foreign}
    cfg = validate(raw, definition="run", source=source, model=model)
    # Nested defaults: sections that were absent were filled with {} and need a second pass.
    return validate(cfg, definition="run", source=source, model=model)


@dataclass(frozen=True)
class EvaluationSettings:
    """The ``evaluation`` section of the workflow config, validated once (defaults from the schema).

    Built by :meth:`from_mapping` (or :func:`load_evaluation_settings` from a file); command-line
    flags go through :meth:`with_overrides`, i.e. through the same schema and its bounds.
    """

    n_samples: int
    seed: int
    weights: str | None
    depth: int
    protocol: str
    batch_size: int
    kernel_size: int
    n_real: int | None
    max_pairs: int | None
    n_bootstrap: int
    ci_level: float
    kid_subsets: int
    kid_subset_size: int | None
    fid_inf_points: int
    prdc_k: int
    memorisation_quantile: float
    pairwise_bootstrap: int
    bootstrap_kid_subsets: int
    frd: str
    allow_small_n: bool
    fallback: str = "phantom-seg"
    fallback_weights: str | None = None

    @classmethod
    def from_mapping(cls, raw: dict | None, source: str = "evaluation") -> EvaluationSettings:
        """Validate an ``evaluation`` mapping (None or {} = every default)."""
        return cls(**validate(raw or {}, definition="evaluation", source=source))

    def with_overrides(self, source: str = "command line", **values: Any) -> EvaluationSettings:
        """These settings with every non-None value replaced, validated again."""
        given = {k: v for k, v in values.items() if v is not None}
        return self.from_mapping({**asdict(self), **given}, source=source)

    def as_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (recorded beside every metrics file)."""
        return asdict(self)


def load_evaluation_settings(path: str | os.PathLike | None) -> EvaluationSettings:
    """The ``evaluation`` section of a YAML file (a workflow config, or a file holding only that
    section); None = every default."""
    if path is None:
        return EvaluationSettings.from_mapping(None)
    raw = _read_yaml(path)
    return EvaluationSettings.from_mapping(raw.get("evaluation"), source=f"{path}: evaluation")


def config_hash(cfg: dict) -> str:
    """Short SHA-256 of the canonical JSON form of a resolved config (provenance)."""
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def dump_yaml(cfg: dict) -> str:
    """YAML text of a config, keys in schema order as given."""
    return yaml.safe_dump(cfg, sort_keys=False)
