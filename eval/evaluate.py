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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eval.extractors import fallback_spec, load_phantom_seg
from eval.feature_cache import check_same_extractor, load_real_stats, save_real_stats
from eval.features import extract_features, medicalnet_resnet
from eval.medicalnet_weights import MEDICALNET_WEIGHTS, PHANTOM_SEG_LABEL, resolve_weights
from eval.memorise import memorisation, split_note, train_files_of
from eval.metrics import ms_ssim_bootstrap_ci
from eval.msssim import max_ms_ssim_scales, pairwise_ms_ssim
from eval.scores import SCORE_KEYS, feature_scores, protocol_note
from eval.volumes import load_checked, real_files, select_files, stream_checked
from wdm.config import EvaluationSettings
from wdm.io import (
    InputError,
    code_version,
    sha256_file,
    write_json_atomic,
)
from wdm.oom import STATUS_OK, STATUS_OOM, read_status

__all__ = ["PROTOCOLS", "MEASURED_KEYS", "evaluate", "write_metrics", "real_statistics", "save_real_stats",
           "load_real_stats", "real_files", "load_checked"]

logger = logging.getLogger(__name__)

#: protocol -> network input range and the MedicalNet checkpoint it prescribes.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "wdm": {"input_range": (0.0, 1.0), "weights": "resnet_50_23dataset"},
    "hagan": {"input_range": (-1.0, 1.0), "weights": "resnet_50"},
}

#: result fields that hold measured numbers (and what they were measured on): null when out of memory.
MEASURED_KEYS: tuple[str, ...] = (
    *SCORE_KEYS, "ms_ssim", "ms_ssim_ci_low", "ms_ssim_ci_high", "ms_ssim_std", "ms_ssim_se",
    "ms_ssim_pairs", "ms_ssim_pairs_total", "ms_ssim_scales", "memorisation_feature",
    "memorisation_feature_threshold", "memorisation_voxel", "memorisation_voxel_threshold",
    "memorisation_quantile", "memorisation_suspects", "frd", "frd_features", "frd_backend",
    "n_real", "n_fake", "protocol_note", "feature_extractor", "feature_dim", "weights_sha256",
    "shape",
)


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
        self._model: torch.nn.Module | None = None
        pseg = self.label == PHANTOM_SEG_LABEL
        if pseg:  # the file read (and checked) once; its depth is the file's
            self._model, meta = load_phantom_seg(ckpt)
            depth = meta["depth"]
        stem = ckpt.name.removesuffix(".pth") if ckpt is not None else None
        entry = MEDICALNET_WEIGHTS.get(stem) if stem else None
        if entry is not None and entry["depth"] != depth:
            raise InputError(f"weights {stem!r} are a resnet{entry['depth']}, but depth={depth}")
        if ckpt is not None and stem != PROTOCOLS[protocol]["weights"]:
            logger.warning("protocol %r prescribes %s, but %s is used", protocol,
                           PROTOCOLS[protocol]["weights"], ckpt.name)
        self.ckpt, self.depth, self.protocol, self.seed = ckpt, depth, protocol, seed
        # phantom-seg was trained on [0, 1] inputs, whatever the protocol feeds MedicalNet
        self.input_range = (0.0, 1.0) if pseg else PROTOCOLS[protocol]["input_range"]
        self.weights_sha256 = sha256_file(ckpt) if ckpt is not None else None
        #: the protocol's own MedicalNet checkpoint: its numbers are protocol numbers.
        self.is_protocol_extractor = stem == PROTOCOLS[protocol]["weights"]

    def features(self, volumes: Any, batch_size: int, device: str) -> np.ndarray:
        if self._model is None:  # medicalnet_resnet checks the SHA-256 of a MedicalNet file
            self._model = medicalnet_resnet(self.depth, self.ckpt, seed=self.seed)
        return extract_features(self._model, volumes, batch_size=batch_size, device=device,
                                input_range=self.input_range)

    def identity(self) -> dict[str, Any]:
        """What a cached feature file must agree on to be reused."""
        return {"protocol": self.protocol, "feature_extractor": self.label,
                "weights_sha256": self.weights_sha256, "depth": self.depth,
                "input_range": list(self.input_range)}


def _make_extractor(settings: EvaluationSettings) -> _Extractor:
    """The feature extractor these settings describe (``auto:`` fallback applied, not yet built)."""
    spec = fallback_spec(_resolve_spec(settings.weights, settings.protocol), settings.fallback,
                         settings.fallback_weights)
    return _Extractor(spec, settings.depth, settings.protocol, settings.seed)


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
    files = select_files(real_dir, settings.n_real, "real")
    if len(files) < 2:
        raise InputError(f"{real_dir}: need at least 2 real volumes, got {len(files)}")
    shape = tuple(load_checked(files[0], None).shape)
    feats = ext.features(stream_checked(files, shape), settings.batch_size, device)
    out = _set_stats(feats, ext, settings, shape, files, real_dir=str(real_dir))
    backend = _frd_backend(settings)
    if backend is not None:  # the real side of FRD, extracted once like the features
        out["radiomics"] = _radiomics(np.stack([load_checked(f, shape) for f in files]))
        out["meta"]["radiomics_backend"] = backend
    return out


def _check_cache(path: str | os.PathLike, cache: dict[str, Any], ext: _Extractor,
                 shape: tuple[int, ...], n_real: int | None) -> None:
    meta = cache["meta"]
    check_same_extractor(path, meta, ext.identity(), "this evaluation")
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
             real_stats: str | os.PathLike | None = None, device: str = "cpu",
             test_features: str | os.PathLike | None = None,
             features_out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Fidelity, diversity and memorisation of generated volumes against real ones.

    On MedicalNet features (Chen et al. 2019), the 3D protocol of Friedrich et al. 2024 (``wdm``)
    or Sun et al. 2022 (``hagan``): FID (Heusel et al. 2017), MMD², KID, FID∞, precision /
    recall / density / coverage with bootstrap intervals (:func:`eval.scores.feature_scores`);
    MS-SSIM (Wang et al. 2003) among the generated volumes as a diversity score; with
    ``test_features`` (the held-out test set's feature file, e.g. the reference row's
    ``features.npz``), the memorisation check of :func:`eval.memorise.memorisation` against the
    training volumes the real features were made from; FRD (Konz et al. 2024) when its backend is
    installed (``settings.frd``). ``settings`` (the workflow config's ``evaluation`` section)
    gives every knob: ``weights`` is a spec for :func:`eval.medicalnet_weights.resolve_weights` (``"auto"``
    = the protocol's checkpoint if present locally, else an untrained network, labelled as such),
    ``depth``, ``protocol``, ``batch_size``, ``kernel_size`` (MS-SSIM window), ``n_real``;
    ``max_pairs`` limits MS-SSIM to a random subset of pairs drawn with ``seed``; percentile
    bootstrap intervals (``n_bootstrap`` resamples, level ``ci_level``; 0 skips them). A protocol
    number on fewer volumes than the protocol names is refused unless ``allow_small_n`` (then
    ``protocol_note`` reads "n below protocol"). ``real_stats``: a file from
    :func:`save_real_stats`, checked, replaces reading ``real_dir``. ``features_out``: write the
    generated set's features there (same format). ``n_real`` / ``n_fake`` take the first volumes
    in sorted order (error if fewer exist; ``n_fake`` None = all). Volumes: 3D, one shape, values
    in [0, 1] (± ``RANGE_TOL``). Returns a JSON-ready dict, ``"status": "ok"``; or, when
    ``FAKE/sample_profile.json`` says ``"oom"``, :data:`MEASURED_KEYS` null with ``"status":
    "oom"``, ``"error"`` and ``"failed_stage"``, and nothing read or extracted.
    """
    _check_request(real_dir, real_stats, settings)
    oom = _oom_result(real_dir, fake_dir, settings, real_stats)
    if oom is not None:
        return oom
    ext = _make_extractor(settings)
    fake_files, fakes = _load_fakes(fake_dir, n_fake)
    shape = tuple(fakes.shape[1:])
    scales = _ms_ssim_scales(fake_dir, shape, settings.kernel_size)
    real_cache = _real_features(real_dir, real_stats, settings, ext, shape, device)
    feats_real, real_meta = real_cache["features"], real_cache["meta"]
    note = _row_note(settings, len(feats_real), len(fake_files), ext, fake_dir, real_meta.get("real_dir"))
    test = _test_set(test_features, ext, shape)
    feats_fake = ext.features(fakes, settings.batch_size, device)
    if features_out is not None:
        save_real_stats(features_out, _set_stats(feats_fake, ext, settings, shape, fake_files,
                                                 role="evaluated", source_dir=str(fake_dir)))
    scores = {**feature_scores(feats_real, feats_fake, settings), "feature_dim": feats_real.shape[1]}
    scores.update(_diversity(fakes, scales, settings))
    if test is not None:
        scores.update(_memorisation(fakes, fake_files, feats_fake, real_cache, test,
                                    str(real_stats or real_dir), settings.memorisation_quantile))
    scores.update(_frd_scores(settings, real_cache, str(real_stats or real_dir), fakes, shape))
    logger.info("FID %.6g [%s, %s], KID %.4g [%s, %s] (%s, protocol %s), MS-SSIM %.4f over %d pairs",
                scores["fid"], scores["fid_ci_low"], scores["fid_ci_high"], scores["kid"],
                scores["kid_ci_low"], scores["kid_ci_high"], ext.label, settings.protocol,
                scores["ms_ssim"], scores["ms_ssim_pairs"])
    return _result(scores, ext, real_meta, len(fake_files), shape, note,
                   _provenance(settings, real_stats, fake_dir, _sample_profile_field(fake_dir, "seed"),
                               real_dir=real_meta.get("real_dir")))


def _check_request(real_dir: str | os.PathLike | None, real_stats: str | os.PathLike | None,
                   settings: EvaluationSettings) -> None:
    """Refuse, before any work, an evaluation that names no real set, an unknown protocol or a
    one-resample bootstrap (a percentile interval needs 2)."""
    if real_dir is None and real_stats is None:
        raise InputError("give real_dir or real_stats")
    _check_protocol(settings.protocol)
    if settings.n_bootstrap == 1:
        raise InputError("evaluation n_bootstrap is 1 (--n-bootstrap or the settings file), expected "
                         "0 (no intervals) or an integer >= 2")


def _row_note(settings: EvaluationSettings, n_real: int, n_fake: int, ext: _Extractor,
              fake_dir: str | os.PathLike, real_dir: str | None) -> str | None:
    """``protocol_note`` of a row: :func:`eval.scores.protocol_note`, then
    :func:`eval.memorise.split_note` of the data set the real features come from (logged)."""
    note = protocol_note(settings.protocol, n_real, n_fake, settings.allow_small_n,
                         protocol_extractor=ext.is_protocol_extractor, where=str(fake_dir))
    if split := split_note(real_dir):
        logger.warning("%s: %s", fake_dir, split)
        note = f"{note}; {split}" if note else split
    return note


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
    fake_files = select_files(fake_dir, n_fake, "fake")
    if len(fake_files) < 2:
        raise InputError(f"need at least 2 fake volumes, got {len(fake_files)} ({fake_dir})")
    first = load_checked(fake_files[0], None)
    shape = tuple(first.shape)
    return fake_files, np.stack([first] + [load_checked(f, shape) for f in fake_files[1:]])


def _ms_ssim_scales(fake_dir: str | os.PathLike, shape: tuple[int, ...], kernel_size: int) -> int:
    scales = max_ms_ssim_scales(shape, kernel_size, max_scales=5)
    if scales == 0:
        raise InputError(f"{fake_dir}: volume shape {shape} is smaller than the MS-SSIM kernel "
                         f"{kernel_size}")
    return scales


def _real_features(real_dir: str | os.PathLike | None, real_stats: str | os.PathLike | None,
                   settings: EvaluationSettings, ext: _Extractor, shape: tuple[int, ...],
                   device: str) -> dict[str, Any]:
    """Real features, metadata (and radiomics): from the ``real_stats`` cache (checked) or extracted."""
    if real_stats is not None:
        cache = load_real_stats(real_stats)
        _check_cache(real_stats, cache, ext, shape, settings.n_real)
        logger.info("real features from %s (%d volumes)", real_stats, cache["meta"]["n_real"])
    else:
        cache = real_statistics(real_dir, settings, device=device, _extractor=ext)
        if tuple(cache["meta"]["shape"]) != shape:
            raise InputError(f"{real_dir}: real volumes {tuple(cache['meta']['shape'])} differ "
                             f"from the generated {shape}")
    return {**cache, "features": np.asarray(cache["features"], np.float64)}


def _test_set(test_features: str | os.PathLike | None, ext: _Extractor,
              shape: tuple[int, ...]) -> tuple[list[Path], np.ndarray] | None:
    """The held-out set's (volume files, features (N, F)) from its feature file, checked; or None."""
    if test_features is None:
        return None
    cache = load_real_stats(test_features)
    _check_cache(test_features, cache, ext, shape, None)
    return train_files_of(cache["meta"], str(test_features)), cache["features"]


def _set_stats(feats: np.ndarray, ext: _Extractor, settings: EvaluationSettings,
               shape: tuple[int, ...], files: Sequence[Path], **where: str) -> dict[str, Any]:
    """A feature file's content for the volumes ``files`` (``n_real`` = rows): features (N, F), their
    mean and covariance, and the provenance; ``where`` names the folder (``real_dir=`` for real
    statistics, ``role="evaluated", source_dir=`` for an evaluated set)."""
    meta = {**ext.identity(), "seed": settings.seed, "shape": list(shape), **where,
            "n_real": len(files), "files": [f.name for f in files],
            "files_sha256": [sha256_file(f) for f in files], "code_version": code_version()}
    return {"features": feats, "mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False, ddof=1),
            "meta": meta}


def _memorisation(fakes: np.ndarray, fake_files: Sequence[Path], feats_fake: np.ndarray,
                  real_cache: dict[str, Any], test: tuple[list[Path], np.ndarray], what: str,
                  quantile: float) -> dict[str, Any]:
    """:func:`eval.memorise.memorisation` of the fakes against the training volumes the real
    features list, calibrated on the held-out ``test`` set (files, features)."""
    shape = tuple(fakes.shape[1:])
    train = (train_files_of(real_cache["meta"], what), real_cache["features"])
    return memorisation(fakes, [f.name for f in fake_files], feats_fake, train, test,
                        lambda p: load_checked(p, shape), quantile=quantile)


def _diversity(fakes: np.ndarray, scales: int, settings: EvaluationSettings) -> dict[str, Any]:
    """Mean pairwise MS-SSIM among the fakes (pair subset drawn with ``settings.seed``) and its interval."""
    gen = torch.Generator().manual_seed(settings.seed)
    div = pairwise_ms_ssim(torch.from_numpy(fakes).unsqueeze(1), kernel_size=settings.kernel_size,
                           data_range=1.0, scales=scales, max_pairs=settings.max_pairs,
                           generator=gen, return_values=True)
    lo = hi = None
    if settings.n_bootstrap:
        lo, hi = ms_ssim_bootstrap_ci(div["values"], div["pairs"], len(fakes),
                                      n_bootstrap=settings.n_bootstrap, level=settings.ci_level,
                                      seed=settings.seed)
    return {"ms_ssim": div["mean"], "ms_ssim_ci_low": lo, "ms_ssim_ci_high": hi,
            "ms_ssim_std": div["std"], "ms_ssim_se": div["se"], "ms_ssim_pairs": div["n_pairs"],
            "ms_ssim_pairs_total": div["n_pairs_total"], "ms_ssim_scales": div["scales"]}


def _frd_backend(settings: EvaluationSettings) -> str | None:
    """The FRD backend's version string, or None when ``settings.frd`` is off or it is missing
    (an :class:`InputError` for a missing backend when ``frd`` is ``"required"``)."""
    from eval.frd import frd_available

    if settings.frd == "off":
        return None
    ok, info = frd_available()
    if not ok and settings.frd == "required":
        raise InputError(f"evaluation.frd is 'required', but {info}")
    return info if ok else None


def _radiomics(volumes: np.ndarray) -> np.ndarray:
    """frd-score's radiomic features (N, F) of volumes (N, D, H, W), on their grid as 1 mm voxels.

    frd-score resamples to 2 mm: with the header's voxel size a 32³ phantom (5.5 mm voxels) would
    be upsampled to 88³ (10 s a volume); as 1 mm voxels every data set is analysed at half its grid
    (BraTS's 1 mm voxels exactly as the FRD authors do), about 2 s a volume at 32³.
    """
    from eval.frd import radiomics_features

    return radiomics_features(volumes, spacing=1.0)


def _frd_scores(settings: EvaluationSettings, real_cache: dict[str, Any], what: str,
                fakes: np.ndarray, shape: tuple[int, ...]) -> dict[str, Any]:
    """FRD (Konz et al. 2024) of the real (training) and generated volumes, or None with the reason.

    The real side comes from the real-feature file when it holds radiomic features of the same
    backend; otherwise it is extracted from the training volumes the file lists.
    """
    from eval.frd import frd_available, frd_from_features

    backend = _frd_backend(settings)
    if backend is None:
        why = "off (evaluation.frd)" if settings.frd == "off" else f"unavailable: {frd_available()[1]}"
        return {"frd": None, "frd_features": None, "frd_backend": why}
    real = real_cache.get("radiomics")
    if real is None or real_cache["meta"].get("radiomics_backend") != backend:
        train = train_files_of(real_cache["meta"], what)
        real = _radiomics(np.stack([load_checked(f, shape) for f in train]))
    r = frd_from_features(real, _radiomics(fakes))
    return {"frd": r["frd"], "frd_features": r["n_features"], "frd_backend": r["backend"]}


def _result(scores: dict[str, Any], ext: _Extractor, real_meta: dict[str, Any], n_fake: int,
            shape: tuple[int, ...], note: str | None, provenance: dict[str, Any]) -> dict[str, Any]:
    """The result dict of a measured evaluation (:data:`MEASURED_KEYS` plus the provenance)."""
    measured = {
        **scores,
        "n_real": int(real_meta["n_real"]),
        "n_fake": n_fake,
        "protocol_note": note,
        "feature_extractor": ext.label,
        "weights_sha256": ext.weights_sha256,
        "shape": list(shape),
    }
    return {"status": STATUS_OK, **{k: measured.get(k) for k in MEASURED_KEYS}, **provenance}


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
