"""Evaluate generated volumes against real ones: 3D FID (MedicalNet features) and MS-SSIM diversity.

Protocols (as the authors of each paper evaluate):

- ``wdm`` (Friedrich et al. 2024, the WDM authors' code): MedicalNet ResNet-50 trained on 23 data
  sets (``resnet_50_23dataset.pth``), inputs in [0, 1], global average pooled 2048-d features;
  MS-SSIM among generated samples, 3D, data range 1, Gaussian kernel 7.
- ``hagan`` (Sun et al. 2022, HA-GAN's code): ``resnet_50.pth`` (8 data sets), inputs in [-1, 1].

Real-volume features depend only on (data set, resolution, protocol, extractor), so they are
extracted once (:func:`real_statistics`, saved by :func:`save_real_stats` as an ``.npz``) and
reused by every model's :func:`evaluate` (``real_stats=``), which checks that the cache was made
with the same protocol, extractor and weights. Every setting of both (weights, depth, protocol,
seeds, MS-SSIM kernel, bootstrap) comes from one :class:`wdm.config.EvaluationSettings`: the
workflow config's ``evaluation`` section, validated once, with the schema's defaults.

Volumes are read as NIfTI in [0, 1]; every number is stored with the protocol and the feature
extractor that produced it, so an FID from an untrained network is never mistaken for a MedicalNet
FID. If the generated folder's ``sample_profile.json`` says training or sampling ran out of memory
(``"status": "oom"``, see :mod:`wdm.oom`), :func:`evaluate` returns ``"status": "oom"``, that
error and null metrics without reading any volume.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.features import (
    MEDICALNET_WEIGHTS,
    extract_features,
    medicalnet_resnet,
    resolve_weights,
)
from eval.metrics import (
    fid_bootstrap_ci,
    fid_from_features,
    max_ms_ssim_scales,
    mmd,
    ms_ssim_bootstrap_ci,
    pairwise_ms_ssim,
)
from wdm.config import EvaluationSettings
from wdm.data.prepare import MANIFEST, read_manifest
from wdm.io import (
    InputError,
    atomic_path,
    code_version,
    list_volumes,
    load_nifti,
    sha256_file,
    write_json_atomic,
)
from wdm.oom import STATUS_OK, STATUS_OOM, read_status

__all__ = ["PROTOCOLS", "MEASURED_KEYS", "evaluate", "write_metrics", "real_statistics", "save_real_stats",
           "load_real_stats", "real_files"]

logger = logging.getLogger(__name__)

#: protocol -> network input range and the MedicalNet checkpoint it prescribes.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "wdm": {"input_range": (0.0, 1.0), "weights": "resnet_50_23dataset"},
    "hagan": {"input_range": (-1.0, 1.0), "weights": "resnet_50"},
}

#: tolerance on the [0, 1] range check of input volumes.
RANGE_TOL = 1e-3

#: result fields that hold measured numbers (and what they were measured on): null when out of memory.
MEASURED_KEYS: tuple[str, ...] = (
    "fid", "fid_ci_low", "fid_ci_high", "mmd", "mmd_bandwidth", "ms_ssim", "ms_ssim_ci_low",
    "ms_ssim_ci_high", "ms_ssim_std", "ms_ssim_se", "ms_ssim_pairs", "ms_ssim_pairs_total",
    "ms_ssim_scales", "n_real", "n_fake", "feature_extractor", "feature_dim", "weights_sha256",
    "shape",
)


def real_files(folder: str | os.PathLike) -> list[Path]:
    """The real volumes of ``folder``, sorted by name.

    When ``folder`` is a split of a prepared data folder (``folder/../manifest.csv`` lists files
    ``<folder name>/...``), exactly the files the manifest lists for it: a stray file beside them
    does not count and a listed file that is missing is an :class:`InputError` naming it.
    Otherwise (a plain folder) every NIfTI volume in it (:func:`wdm.io.list_volumes`).
    """
    folder = Path(folder)
    manifest = folder.parent / MANIFEST
    if not folder.is_dir() or not manifest.is_file():
        return list_volumes(folder)
    listed = [row["file"] for row in read_manifest(folder.parent)
              if Path(row["file"]).parent.name == folder.name and len(Path(row["file"]).parts) == 2]
    if not listed:
        return list_volumes(folder)
    files = sorted((folder / Path(f).name for f in listed), key=lambda p: p.name)
    for f in files:
        if not f.is_file():
            raise InputError(f"{f}: listed in {manifest} but missing, expected the prepared volume "
                             "(re-run 'wdm-bench prepare')")
    return files


def _select(folder: str | os.PathLike, n: int | None, what: str) -> list[Path]:
    files = real_files(folder) if what == "real" else list_volumes(folder)
    if n is not None:
        if n < 1:
            raise InputError(f"n_{what} must be >= 1, got {n}")
        if len(files) < n:
            raise InputError(f"{folder}: {len(files)} volumes, fewer than n_{what}={n}")
        files = files[:n]
    return files


def _load_checked(path: Path, shape: tuple[int, ...] | None) -> np.ndarray:
    vol, _ = load_nifti(path)
    lo, hi = float(vol.min()), float(vol.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise InputError(f"{path}: values in [{lo:.4g}, {hi:.4g}], expected [0, 1] "
                         f"(tolerance {RANGE_TOL})")
    if shape is not None and vol.shape != shape:
        raise InputError(f"{path}: shape {vol.shape} differs from {shape} of the other volumes")
    return np.clip(vol, 0.0, 1.0)


def _stream(files: Sequence[Path], shape: tuple[int, ...]) -> Iterator[np.ndarray]:
    for f in files:
        yield _load_checked(f, shape)


def _resolve_spec(weights: str | None, protocol: str) -> str | None:
    """``"auto"`` / ``"hub"`` alone mean the protocol's own checkpoint."""
    if weights in ("auto", "hub"):
        return f"{weights}:{PROTOCOLS[protocol]['weights']}"
    return weights


class _Extractor:
    """The resolved feature extractor of one evaluation: checkpoint, label, hash, network."""

    def __init__(self, weights: str | None, depth: int, protocol: str, seed: int) -> None:
        if protocol not in PROTOCOLS:
            raise InputError(f"unknown protocol {protocol!r}; allowed: {sorted(PROTOCOLS)}")
        ckpt, self.label = resolve_weights(_resolve_spec(weights, protocol), depth=depth, seed=seed)
        stem = ckpt.name.removesuffix(".pth") if ckpt is not None else None
        entry = MEDICALNET_WEIGHTS.get(stem) if stem else None
        if entry is not None and entry["depth"] != depth:
            raise InputError(f"weights {stem!r} are a resnet{entry['depth']}, but depth={depth}")
        if ckpt is not None and stem != PROTOCOLS[protocol]["weights"]:
            logger.warning("protocol %r prescribes %s, but %s is used", protocol,
                           PROTOCOLS[protocol]["weights"], ckpt.name)
        self.ckpt, self.depth, self.protocol, self.seed = ckpt, depth, protocol, seed
        self.input_range = PROTOCOLS[protocol]["input_range"]
        self.weights_sha256 = sha256_file(ckpt) if ckpt is not None else None
        self._model: torch.nn.Module | None = None

    def features(self, volumes: Any, batch_size: int, device: str) -> np.ndarray:
        if self._model is None:
            self._model = medicalnet_resnet(self.depth, self.ckpt, seed=self.seed)  # checks SHA
        return extract_features(self._model, volumes, batch_size=batch_size, device=device,
                                input_range=self.input_range)

    def identity(self) -> dict[str, Any]:
        """What a cached feature file must agree on to be reused."""
        return {"protocol": self.protocol, "feature_extractor": self.label,
                "weights_sha256": self.weights_sha256, "depth": self.depth,
                "input_range": list(self.input_range)}


def _make_extractor(settings: EvaluationSettings) -> _Extractor:
    """The feature extractor these settings describe (weights resolved, not yet built)."""
    return _Extractor(settings.weights, settings.depth, settings.protocol, settings.seed)


def real_statistics(real_dir: str | os.PathLike, settings: EvaluationSettings, *,
                    device: str = "cpu", _extractor: _Extractor | None = None) -> dict[str, Any]:
    """Features of the real volumes and their provenance, for reuse by many evaluations.

    ``settings`` gives the extractor (``weights``, ``depth``, ``protocol``, ``seed``), the
    extraction ``batch_size`` and ``n_real`` (the first files in sorted order; None = all).
    Returns ``{"features": (N, F) float64, "mu": (F,), "sigma": (F, F), "meta": {...}}``; ``meta``
    holds the protocol, extractor label, weights SHA-256, depth, input range, seed, volume shape,
    and the file names with their SHA-256.
    """
    ext = _extractor or _make_extractor(settings)
    files = _select(real_dir, settings.n_real, "real")
    if len(files) < 2:
        raise InputError(f"{real_dir}: need at least 2 real volumes, got {len(files)}")
    shape = tuple(_load_checked(files[0], None).shape)
    feats = ext.features(_stream(files, shape), settings.batch_size, device)
    meta = {**ext.identity(), "seed": settings.seed, "shape": list(shape), "real_dir": str(real_dir),
            "n_real": len(files), "files": [f.name for f in files],
            "files_sha256": [sha256_file(f) for f in files], "code_version": code_version()}
    return {"features": feats, "mu": feats.mean(0),
            "sigma": np.cov(feats, rowvar=False, ddof=1), "meta": meta}


def save_real_stats(path: str | os.PathLike, stats: dict[str, Any]) -> None:
    """Write :func:`real_statistics` output as ``.npz`` (metadata as a JSON string), atomically."""
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, features=stats["features"], mu=stats["mu"], sigma=stats["sigma"],
                 meta=np.array(json.dumps(stats["meta"])))


def load_real_stats(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save_real_stats` (no pickle); errors name the file.

    A missing, empty, truncated or foreign file (another ``.npz``, a text file), or one whose
    fields do not fit together, is an :class:`InputError` saying what was expected.
    """
    path = Path(path)

    def refuse(detail: str) -> InputError:
        return InputError(f"{path}: not a real-feature statistics file written by "
                          f"'wdm-bench real-stats' ({detail})")

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


def _check_cache(path: str | os.PathLike, cache: dict[str, Any], ext: _Extractor,
                 shape: tuple[int, ...], n_real: int | None) -> None:
    meta = cache["meta"]
    for key, want in ext.identity().items():
        if meta.get(key) != want:
            raise InputError(f"{path}: field {key!r} is {meta.get(key)!r}, but this evaluation "
                             f"uses {want!r}; recompute it with 'wdm-bench real-stats'")
    cached_shape = meta.get("shape")
    if not isinstance(cached_shape, list) or tuple(cached_shape) != shape:
        raise InputError(f"{path}: field 'shape' is {meta.get('shape')}, but the generated "
                         f"volumes are {list(shape)}")
    if n_real is not None and meta["n_real"] != n_real:
        raise InputError(f"{path}: field 'n_real' is {meta['n_real']}, but n_real={n_real}")


def _sample_profile_field(fake_dir: str | os.PathLike, key: str) -> Any:
    """A field of ``FAKE/sample_profile.json`` (None without the file or the field)."""
    prof = Path(fake_dir) / "sample_profile.json"
    if not prof.is_file():
        return None
    try:
        return json.loads(prof.read_text()).get(key)
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        return None


def evaluate(real_dir: str | os.PathLike | None, fake_dir: str | os.PathLike,
             settings: EvaluationSettings, *, n_fake: int | None = None,
             real_stats: str | os.PathLike | None = None, device: str = "cpu") -> dict[str, Any]:
    """FID and MMD between real and generated features, mean pairwise MS-SSIM among the fakes.

    FID as in Heusel et al. 2017 on MedicalNet features (Chen et al. 2019), the 3D protocol of
    Friedrich et al. 2024 (``wdm``) or Sun et al. 2022 (``hagan``); MS-SSIM (Wang et al. 2003)
    among the generated volumes as a diversity score. ``settings`` (the workflow config's
    ``evaluation`` section) gives every knob: ``weights`` is a spec for
    :func:`eval.features.resolve_weights` (``"auto"`` = the protocol's checkpoint if present
    locally, else an untrained network, labelled as such; ``"none"`` or null = untrained),
    ``depth``, ``protocol``, ``batch_size``, ``kernel_size`` (MS-SSIM Gaussian window),
    ``n_real``; ``max_pairs`` limits MS-SSIM to a random subset of pairs drawn with ``seed`` (its
    standard error is reported); percentile bootstrap intervals (``n_bootstrap`` resamples, level
    ``ci_level``, seeded with ``seed``) for FID and mean MS-SSIM, ``n_bootstrap=0`` skips them.
    ``real_stats``: a file from :func:`save_real_stats`; its features replace reading ``real_dir``
    (which may then be None) after checking protocol, extractor, weights SHA-256 and shape.
    ``n_real`` / ``n_fake`` take the first volumes in sorted file order (error if fewer exist;
    ``n_fake`` None = every volume of ``fake_dir``). Volumes must be 3D, all of one shape, with
    values in [0, 1] (± ``RANGE_TOL``). Returns a JSON-ready dict (see :func:`_result`), with
    ``"status": "ok"``; or, when ``FAKE/sample_profile.json`` has ``"status": "oom"``, the same
    keys with :data:`MEASURED_KEYS` null, ``"status": "oom"``, ``"error"`` and ``"failed_stage"``
    (from the profile), and nothing read or extracted.
    """
    if real_dir is None and real_stats is None:
        raise InputError("give real_dir or real_stats")
    _check_protocol(settings.protocol)
    if settings.n_bootstrap == 1:  # before any work: a percentile interval needs 2 resamples
        raise InputError("evaluation n_bootstrap is 1 (--n-bootstrap or the settings file), expected "
                         "0 (no intervals) or an integer >= 2")
    oom = _oom_result(real_dir, fake_dir, settings, real_stats)
    if oom is not None:
        return oom
    ext = _make_extractor(settings)
    fake_files, fakes = _load_fakes(fake_dir, n_fake)
    shape = tuple(fakes.shape[1:])
    scales = _ms_ssim_scales(fake_dir, shape, settings.kernel_size)
    feats_real, real_meta = _real_features(real_dir, real_stats, settings, ext, shape, device)
    feats_fake = ext.features(fakes, settings.batch_size, device)
    scores = _scores(feats_real, feats_fake, fakes, scales, settings)
    ci = _intervals(feats_real, feats_fake, scores["diversity"], settings)
    logger.info("FID %.6g [%s, %s] (%s, protocol %s), MMD² %.4g, MS-SSIM %.4f over %d pairs",
                scores["fid"], ci["fid_ci_low"], ci["fid_ci_high"], ext.label, settings.protocol,
                scores["mmd"]["mmd2"], scores["diversity"]["mean"], scores["diversity"]["n_pairs"])
    return _result(scores, ci, ext, real_meta, len(fake_files), shape,
                   _provenance(settings, real_stats, fake_dir, _sample_profile_field(fake_dir, "seed"),
                               real_dir=real_meta.get("real_dir")))


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; allowed: {sorted(PROTOCOLS)}")


def _oom_result(real_dir: str | os.PathLike | None, fake_dir: str | os.PathLike,
                settings: EvaluationSettings,
                real_stats: str | os.PathLike | None) -> dict[str, Any] | None:
    """The null result of a sample folder whose profile says it ran out of memory, else None."""
    sample_status, sample_prof = read_status(Path(fake_dir) / "sample_profile.json")
    if sample_status != STATUS_OOM:
        return None
    logger.warning("%s: not evaluated, %s", fake_dir, sample_prof.get("error"))
    return {
        "status": STATUS_OOM,
        "error": sample_prof.get("error") or "out of memory (no details recorded)",
        "failed_stage": sample_prof.get("failed_stage") or "sample",
        **dict.fromkeys(MEASURED_KEYS),
        **_provenance(settings, real_stats, fake_dir, sample_prof.get("seed"),
                      real_dir=str(real_dir) if real_dir else None),
    }


def _load_fakes(fake_dir: str | os.PathLike, n_fake: int | None) -> tuple[list[Path], np.ndarray]:
    """The generated files used and their volumes stacked as ``(N, D, H, W)`` (checked)."""
    fake_files = _select(fake_dir, n_fake, "fake")
    if len(fake_files) < 2:
        raise InputError(f"need at least 2 fake volumes, got {len(fake_files)} ({fake_dir})")
    first = _load_checked(fake_files[0], None)
    shape = tuple(first.shape)
    return fake_files, np.stack([first] + [_load_checked(f, shape) for f in fake_files[1:]])


def _ms_ssim_scales(fake_dir: str | os.PathLike, shape: tuple[int, ...], kernel_size: int) -> int:
    scales = max_ms_ssim_scales(shape, kernel_size, max_scales=5)
    if scales == 0:
        raise InputError(f"{fake_dir}: volume shape {shape} is smaller than the MS-SSIM kernel "
                         f"{kernel_size}")
    return scales


def _real_features(real_dir: str | os.PathLike | None, real_stats: str | os.PathLike | None,
                   settings: EvaluationSettings, ext: _Extractor, shape: tuple[int, ...],
                   device: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Real features and their metadata: from the ``real_stats`` cache (checked) or extracted."""
    if real_stats is not None:
        cache = load_real_stats(real_stats)
        _check_cache(real_stats, cache, ext, shape, settings.n_real)
        logger.info("real features from %s (%d volumes)", real_stats, cache["meta"]["n_real"])
    else:
        cache = real_statistics(real_dir, settings, device=device, _extractor=ext)
        if tuple(cache["meta"]["shape"]) != shape:
            raise InputError(f"{real_dir}: real volumes {tuple(cache['meta']['shape'])} differ "
                             f"from the generated {shape}")
    return np.asarray(cache["features"], np.float64), cache["meta"]


def _scores(feats_real: np.ndarray, feats_fake: np.ndarray, fakes: np.ndarray, scales: int,
            settings: EvaluationSettings) -> dict[str, Any]:
    """FID, MMD and pairwise MS-SSIM (pair subset drawn with ``settings.seed``)."""
    fid_value = fid_from_features(feats_real, feats_fake)
    mmd_res = mmd(feats_real, feats_fake)
    gen = torch.Generator().manual_seed(settings.seed)
    div = pairwise_ms_ssim(torch.from_numpy(fakes).unsqueeze(1), kernel_size=settings.kernel_size,
                           data_range=1.0, scales=scales, max_pairs=settings.max_pairs,
                           generator=gen, return_values=True)
    return {"fid": fid_value, "mmd": mmd_res, "diversity": div,
            "feature_dim": int(feats_real.shape[1])}


def _intervals(feats_real: np.ndarray, feats_fake: np.ndarray, div: dict[str, Any],
               settings: EvaluationSettings) -> dict[str, float | None]:
    """Percentile bootstrap intervals of FID and mean MS-SSIM (all None when ``n_bootstrap`` is 0)."""
    ci: dict[str, float | None] = dict.fromkeys(
        ("fid_ci_low", "fid_ci_high", "ms_ssim_ci_low", "ms_ssim_ci_high"))
    n, level, seed = settings.n_bootstrap, settings.ci_level, settings.seed
    if n:
        ci["fid_ci_low"], ci["fid_ci_high"] = fid_bootstrap_ci(
            feats_real, feats_fake, n_bootstrap=n, level=level, seed=seed)
        ci["ms_ssim_ci_low"], ci["ms_ssim_ci_high"] = ms_ssim_bootstrap_ci(
            div["values"], div["pairs"], len(feats_fake), n_bootstrap=n, level=level, seed=seed)
    return ci


def _result(scores: dict[str, Any], ci: dict[str, float | None], ext: _Extractor,
            real_meta: dict[str, Any], n_fake: int, shape: tuple[int, ...],
            provenance: dict[str, Any]) -> dict[str, Any]:
    """The result dict of a measured evaluation (:data:`MEASURED_KEYS` plus the provenance)."""
    div, mmd_res = scores["diversity"], scores["mmd"]
    return {
        "status": STATUS_OK,
        "fid": scores["fid"],
        **{k: v for k, v in ci.items() if k.startswith("fid")},
        "mmd": mmd_res["mmd2"],
        "mmd_bandwidth": mmd_res["bandwidth"],
        "ms_ssim": div["mean"],
        **{k: v for k, v in ci.items() if k.startswith("ms_ssim")},
        "ms_ssim_std": div["std"],
        "ms_ssim_se": div["se"],
        "ms_ssim_pairs": div["n_pairs"],
        "ms_ssim_pairs_total": div["n_pairs_total"],
        "ms_ssim_scales": div["scales"],
        "n_real": int(real_meta["n_real"]),
        "n_fake": n_fake,
        "feature_extractor": ext.label,
        "feature_dim": scores["feature_dim"],
        "weights_sha256": ext.weights_sha256,
        "shape": list(shape),
        **provenance,
    }


def _provenance(settings: EvaluationSettings, real_stats: str | os.PathLike | None,
                fake_dir: str | os.PathLike, sampling_seed: int | None,
                real_dir: str | None) -> dict[str, Any]:
    """The settings and sources of an evaluation, recorded whether or not it measured anything."""
    seed = settings.seed
    return {
        "ms_ssim_kernel": settings.kernel_size,
        "ci_level": settings.ci_level,
        "n_bootstrap": settings.n_bootstrap,
        "protocol": settings.protocol,
        "input_range": list(PROTOCOLS[settings.protocol]["input_range"]),
        "seed": seed,
        "seeds": {"evaluation": seed, "extractor_init": seed, "pair_subset": seed,
                  "bootstrap": seed, "sampling": sampling_seed},
        "real_dir": real_dir,
        "real_stats": str(real_stats) if real_stats is not None else None,
        "fake_dir": str(fake_dir),
        # the sample set scored (wdm.sample's provenance key): the table refuses a mismatch
        "samples_provenance_key": _sample_profile_field(fake_dir, "provenance_key"),
        "code_version": code_version(),
    }


def write_metrics(out_file: str | os.PathLike, result: dict[str, Any],
                  config: EvaluationSettings | Mapping[str, Any]) -> None:
    """Write ``result`` plus the resolved settings (under key ``"config"``) as JSON, atomically.

    ``config``: the :class:`~wdm.config.EvaluationSettings` of the evaluation (recorded as
    :meth:`~wdm.config.EvaluationSettings.as_dict`), or a plain mapping.
    """
    resolved = config.as_dict() if isinstance(config, EvaluationSettings) else dict(config)
    write_json_atomic(out_file, {**result, "config": resolved})
