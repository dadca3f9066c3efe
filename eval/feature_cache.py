"""Feature files: the (N, F) features of a set of volumes with the extractor that produced them.

One format for both sides of an evaluation: the real (training or test) volumes' features that
``wdm-bench real-stats`` caches once per (data set, resolution, protocol), and each evaluated set's
features that ``wdm-bench evaluate --features-out`` keeps for the paired tests between models
(:mod:`eval.pairwise`). An ``.npz`` with ``features`` (N, F) float64, ``mu`` (F,), ``sigma`` (F, F)
and ``meta`` (a JSON string: protocol, extractor label, weights SHA-256, depth, input range,
volume shape, file names and their SHA-256, ``n_real`` = N). Read without pickle; a damaged or
foreign file is an :class:`~wdm.io.InputError` that names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wdm.io import InputError, atomic_path

__all__ = ["IDENTITY_KEYS", "save_real_stats", "load_real_stats", "check_same_extractor", "save_oom_marker",
           "is_oom_marker"]

#: metadata fields two feature files must share to be compared.
IDENTITY_KEYS: tuple[str, ...] = ("protocol", "feature_extractor", "weights_sha256", "depth",
                                  "input_range")


def save_real_stats(path: str | os.PathLike, stats: dict[str, Any]) -> None:
    """Write ``{"features", "mu", "sigma", "meta"}`` (and ``"radiomics"`` (N, R) when given) as
    ``.npz``, meta as a JSON string, atomically."""
    extra = {"radiomics": stats["radiomics"]} if stats.get("radiomics") is not None else {}
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=stats["features"], mu=stats["mu"], sigma=stats["sigma"],
                 meta=np.array(json.dumps(stats["meta"])), **extra)


def load_real_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_real_stats` (no pickle); errors name the file.

    A missing, empty, truncated or foreign file (another ``.npz``, a text file), or one whose
    fields do not fit together, is an :class:`InputError` saying what was expected.
    """
    path = Path(path)

    def refuse(detail: str) -> InputError:
        return InputError(f"{path}: not a real-feature statistics file written by 'wdm-bench real-stats' "
                          f"or 'evaluate --features-out' ({detail})")

    if path.is_dir():
        raise refuse("a folder")
    if not path.is_file():
        raise refuse("file not found")
    if path.stat().st_size == 0:
        raise refuse("empty file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, Mapping):
            raise refuse(f"one {type(z).__name__}, not an .npz archive of fields")
        with z:
            missing = sorted({"features", "mu", "sigma", "meta"} - set(z.files))
            if missing:
                raise refuse(f"fields {missing} missing; it has {sorted(z.files)}")
            out = {k: np.asarray(z[k], np.float64) for k in ("features", "mu", "sigma")}
            out["meta"] = json.loads(str(z["meta"]))
            if "radiomics" in z.files:  # FRD's real side (optional)
                out["radiomics"] = np.asarray(z["radiomics"], np.float64)
    except InputError:
        raise
    except Exception as exc:  # numpy raises many types for a damaged or foreign file
        raise refuse(f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    _check_stats_fields(path, out)
    return out


def _check_stats_fields(path: Path, stats: dict[str, Any]) -> None:
    """Refuse statistics whose metadata or array shapes do not fit together."""
    meta, f = stats["meta"], stats["features"]
    if not isinstance(meta, dict) or not isinstance(meta.get("n_real"), int):
        raise InputError(f"{path}: field 'meta' is not a mapping with an integer 'n_real', expected "
                         "the metadata that 'wdm-bench real-stats' writes")
    if f.ndim != 2 or f.shape[0] != meta["n_real"] or f.shape[0] < 2:
        raise InputError(f"{path}: field 'features' has shape {f.shape}, expected "
                         f"(n_real={meta['n_real']} >= 2, F)")
    n_feat = f.shape[1]
    if stats["mu"].shape != (n_feat,) or stats["sigma"].shape != (n_feat, n_feat):
        raise InputError(f"{path}: fields 'mu' {stats['mu'].shape} and 'sigma' {stats['sigma'].shape} "
                         f"do not match 'features' {f.shape}, expected ({n_feat},) and "
                         f"({n_feat}, {n_feat})")
    if not np.isfinite(f).all():
        raise InputError(f"{path}: field 'features' holds NaN/Inf, expected finite features")


def check_same_extractor(path: str | os.PathLike, meta: Mapping[str, Any],
                         want: Mapping[str, Any], what: str) -> None:
    """Refuse features (``meta`` of the file ``path``) extracted unlike ``want`` (:data:`IDENTITY_KEYS`)."""
    for key in IDENTITY_KEYS:
        if key in want and meta.get(key) != want[key]:
            raise InputError(f"{path}: field {key!r} is {meta.get(key)!r}, but {what} uses "
                             f"{want[key]!r}; extract both with the same settings")



def save_oom_marker(path: str | os.PathLike, error: str) -> None:
    """In place of a set's features: an ``.npz`` holding only ``meta`` = ``{"status": "oom", "error"}``
    (its model ran out of memory, so it has no features; :func:`is_oom_marker` tells it apart)."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, meta=np.array(json.dumps({"status": "oom", "error": error})))


def is_oom_marker(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a :func:`save_oom_marker` file (False for anything else, readable or not)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return set(z.files) == {"meta"} and json.loads(str(z["meta"])).get("status") == "oom"
    except Exception:  # not an npz of ours: load_real_stats says what is wrong with it
        return False
