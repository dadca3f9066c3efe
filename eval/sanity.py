"""Metric sanity suite: does each metric respond to real defects of 3D generators?

The held-out real (test) volumes are corrupted at growing strengths (:mod:`eval.corruptions`,
strength 0 = clean) and every metric of the benchmark is computed for each corrupted set against
the training set: FID (Heusel et al. 2017), KID (Bińkowski et al. 2018), precision / recall
(Kynkäänniemi et al. 2019), density / coverage (Naeem et al. 2020) on the features of each given
extractor; mean pairwise MS-SSIM (Wang et al. 2003) among the set; the memorisation score (share
of the set closer to a training volume than the test set's ``memorisation_quantile``, Meehan et al.
2020) in feature space and in voxel space (1 - NCC, Akbar et al. 2023); FRD (Konz et al. 2024)
when a radiomics backend is given, on the clean and the strongest sets only. FID's blind spots
(Kynkäänniemi et al. 2023, "The Role of ImageNet Classes in Fréchet Inception Distance"; Jayasumana
et al. 2024, "Rethinking FID") are the motivation: a metric that does not move under a defect, or
moves the wrong way (FID improves under memorisation), cannot rank models on that defect.

Per (extractor, metric, corruption): the Spearman ρ of the metric against strength and whether the
value at the largest strength leaves the real-vs-real interval: the metric of the clean test set
against the training set under ``n_bootstrap`` bootstrap resamples of the test set (with
replacement, training set fixed, ``numpy.random.default_rng(seed)``), the ``ci_level`` percentile
interval, bias-corrected (Efron & Tibshirani 1993, ch. 10 and 13): resampled duplicates raise FID /
KID and lower recall / coverage, so the raw percentile interval of FID lies above the clean value
itself; shifted by the bootstrap bias estimate it is centred on it and keeps the bootstrap width.
Also the small-N bias: each metric of random clean test subsets of N = 5 .. all (a few seeds).

Pure: arrays and feature functions in, a list of CSV rows out; no file I/O.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import spearmanr

from eval.corruptions import Corruption, corrupt_volume, get_corruption, strength_grid
from eval.fidelity import kid, prdc
from eval.memorisation import memorisation_report, nearest_neighbours
from eval.metrics import fid_from_features
from eval.msssim import max_ms_ssim_scales, pairwise_ms_ssim
from wdm.config import EvaluationSettings
from wdm.io import InputError

__all__ = ["FEATURE_METRICS", "VOXEL_METRICS", "WORSE", "COLUMNS", "CURVE", "VOXELS", "RADIOMICS",
           "FeatureCache", "FrdBackend", "corrupt_set", "summarise", "run_sanity", "MIN_TEST"]

logger = logging.getLogger(__name__)

FeatureFn = Callable[[np.ndarray], np.ndarray]

#: metrics on an extractor's features, and those on the volumes themselves.
FEATURE_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage", "memorisation")
VOXEL_METRICS = ("ms_ssim", "memorisation")
#: sign of the change that means a worse model (+1: higher is worse).
WORSE = {"fid": 1, "kid": 1, "precision": -1, "recall": -1, "density": -1, "coverage": -1,
         "ms_ssim": 1, "memorisation": 1, "frd": 1}
#: the extractor column of the voxel-space metrics and of FRD.
VOXELS, RADIOMICS = "voxels", "radiomics"
#: the corruption name of the real-vs-real-against-N rows (strength = N).
CURVE = "real-vs-real-N"
MONOTONE_RHO = 0.9
MIN_TEST = 6
COLUMNS = ("extractor", "metric", "corruption", "kind", "strength", "unit", "value", "value_sd",
           "real_value", "real_low", "real_high", "spearman", "monotone", "leaves_interval",
           "worse", "detects", "n_test", "n_train", "seed", "note")


@dataclass(frozen=True)
class FrdBackend:
    """FRD (Konz et al. 2024) as two functions: radiomic ``features`` (N, D, H, W) -> (N, F) and
    the ``distance`` (real (N_r, F), fake (N_f, F)) -> float; ``n_bootstrap`` resamples for its
    interval (each distance is costly)."""

    features: Callable[[np.ndarray], np.ndarray]
    distance: Callable[[np.ndarray, np.ndarray], float]
    n_bootstrap: int = 20


class FeatureCache:
    """A feature function (N, D, H, W) -> (N, F) float64 that computes each distinct volume once
    (keyed by the SHA-1 of its float64 bytes): copies (mode collapse, memorised training volumes)
    and the clean set at strength 0 of every corruption cost nothing."""

    def __init__(self, fn: FeatureFn) -> None:
        self.fn, self._rows, self.computed = fn, {}, 0

    def __call__(self, volumes: np.ndarray) -> np.ndarray:
        vols = np.asarray(volumes, np.float64)
        keys = [hashlib.sha1(v.tobytes()).hexdigest() for v in vols]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self._rows}.values())
        if todo:
            feats = np.asarray(self.fn(vols[todo]), np.float64)
            for i, f in zip(todo, feats, strict=True):
                self._rows[keys[i]] = f
            self.computed += len(todo)
        return np.stack([self._rows[k] for k in keys])


def _rng(seed: int, name: str, *extra: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), *extra]))


def corrupt_set(c: Corruption, volumes: np.ndarray, strength: float, seed: int,
                train: np.ndarray) -> np.ndarray:
    """``volumes`` (N, D, H, W) under corruption ``c`` at ``strength``: float64 in [0, 1].

    Voxel kinds draw volume i's randomness from ``SeedSequence([seed, crc32(name), i])``, set
    kinds from ``[seed, crc32(name)]``: the same at every strength, so strengths differ in
    amplitude only (nested copies for the set kinds) and a seed gives identical sets.
    """
    if c.kind == "voxel":
        return np.stack([corrupt_volume(c, v, strength, _rng(seed, c.name, i))
                         for i, v in enumerate(volumes)])
    out = c.fn(np.asarray(volumes, np.float64), float(strength), _rng(seed, c.name), train)
    return np.clip(out, 0.0, 1.0)


# ---------------------------------------------------------------------------- the metrics
@dataclass
class _Reference:
    """One extractor's training features (M, F) and the test-to-train distances (N,) calibrating
    the memorisation threshold."""

    train: np.ndarray
    test_to_train: np.ndarray


def _feature_metrics(ref: _Reference, feats: np.ndarray, s: EvaluationSettings) -> dict[str, Any]:
    """FID, KID, PRDC (None where k >= N) and feature-space memorisation of ``feats`` (N, F)."""
    k = kid(ref.train, feats, subset_size=s.kid_subset_size if s.kid_subset_size and
            s.kid_subset_size <= min(len(feats), len(ref.train)) else None,
            n_subsets=s.kid_subsets, seed=s.seed)["mean"]
    out: dict[str, Any] = {"fid": fid_from_features(ref.train, feats), "kid": k}
    if s.prdc_k < min(len(feats), len(ref.train)):
        out.update(prdc(ref.train, feats, k=s.prdc_k))
    else:
        out.update(dict.fromkeys(("precision", "recall", "density", "coverage")))
    gen = nearest_neighbours(feats, ref.train, metric="euclidean")
    out["memorisation"] = memorisation_report(gen, ref.test_to_train,
                                              quantile=s.memorisation_quantile)["fraction"]
    return out


@dataclass
class _VoxelRef:
    """Training volumes (M, D, H, W), the NCC test-to-train distances (N,) and MS-SSIM options."""

    train: np.ndarray
    test_to_train: np.ndarray
    scales: int


def _pair_values(vols: np.ndarray, vref: _VoxelRef, s: EvaluationSettings,
                 max_pairs: int | None) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(s.seed)
    return pairwise_ms_ssim(torch.from_numpy(vols).unsqueeze(1), kernel_size=s.kernel_size,
                            scales=vref.scales, max_pairs=max_pairs, generator=gen,
                            return_values=True)


def _voxel_metrics(vols: np.ndarray, vref: _VoxelRef, s: EvaluationSettings,
                   max_pairs: int | None) -> dict[str, Any]:
    """Mean pairwise MS-SSIM (``max_pairs`` random pairs) and NCC memorisation of (N, D, H, W)."""
    gen = nearest_neighbours(vols, vref.train, metric="ncc")
    mem = memorisation_report(gen, vref.test_to_train, quantile=s.memorisation_quantile)["fraction"]
    return {"ms_ssim": _pair_values(vols, vref, s, max_pairs)["mean"], "memorisation": mem}


# -------------------------------------------------------------- real-vs-real: interval and N
def _quantiles(reps: list[dict[str, Any]], level: float,
               clean: Mapping[str, Any]) -> dict[str, tuple[float, float] | None]:
    """Bias-corrected percentile intervals: the ``level`` quantiles of the replicates of each
    metric shifted by the bootstrap bias estimate ``mean(replicates) - clean`` (Efron & Tibshirani
    1993, ch. 10), so the interval is centred on the clean value (None below 2 replicates)."""
    out: dict[str, tuple[float, float] | None] = {}
    for m in reps[0]:
        v = np.array([r[m] for r in reps if r[m] is not None and np.isfinite(r[m])], np.float64)
        if v.size < 2 or clean.get(m) is None:
            out[m] = None
            continue
        bias = float(v.mean()) - float(clean[m])
        lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2]) - bias
        out[m] = (float(lo), float(hi))
    return out


def _resamples(n: int, s: EvaluationSettings) -> np.ndarray:
    """Bootstrap index rows (B, n) of the test set, ``default_rng(seed)``."""
    if s.n_bootstrap < 2:
        raise InputError(f"the real-vs-real interval needs n_bootstrap >= 2, got {s.n_bootstrap}")
    return np.random.default_rng(s.seed).integers(0, n, (s.n_bootstrap, n))


def _weighted_pairs(values: np.ndarray, pairs: np.ndarray, counts: np.ndarray) -> float:
    """Mean pair value of a resample with multiplicities ``counts`` (n,): weights c_i c_j."""
    w = counts[pairs[:, 0]] * counts[pairs[:, 1]]
    return float(w @ values / w.sum()) if w.sum() > 0 else float("nan")


def _voxel_intervals(clean: dict[str, Any], idx: np.ndarray, level: float, flagged: np.ndarray,
                     value: Mapping[str, Any]) -> dict[str, tuple[float, float] | None]:
    """Intervals of MS-SSIM (pair values re-weighted) and NCC memorisation over resamples idx."""
    counts = [np.bincount(row, minlength=len(flagged)).astype(np.float64) for row in idx]
    reps = [{"ms_ssim": _weighted_pairs(clean["values"], clean["pairs"], c),
             "memorisation": float(flagged[row].mean())} for c, row in zip(counts, idx, strict=True)]
    return _quantiles(reps, level, value)


def _curve_sizes(n: int) -> list[int]:
    return sorted({int(x) for x in np.rint(np.linspace(min(5, n), n, 4))})


def _curve(n: int, score: Callable[[np.ndarray], dict[str, Any]], seed: int,
           n_seeds: int) -> dict[int, dict[str, tuple[float, float] | None]]:
    """Metric mean and sd over ``n_seeds`` random test subsets of each size: {N: {metric: (m, sd)}}."""
    out: dict[int, dict[str, tuple[float, float] | None]] = {}
    for size in _curve_sizes(n):
        rng = np.random.default_rng([seed, size])
        reps = [score(np.sort(rng.choice(n, size, replace=False))) for _ in range(n_seeds)]
        out[size] = {}
        for m in reps[0]:
            v = np.array([r[m] for r in reps if r[m] is not None and np.isfinite(r[m])])
            out[size][m] = (float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0) if v.size else None
    return out


def _subset_pairs(clean: dict[str, Any], idx: np.ndarray) -> dict[str, Any]:
    keep = np.isin(clean["pairs"], idx).all(1)
    return {"ms_ssim": float(clean["values"][keep].mean()) if keep.any() else None}


# ---------------------------------------------------------------------------- summary
def summarise(strengths: Sequence[float], values: Sequence[float | None],
              interval: tuple[float, float] | None, worse: int) -> dict[str, Any]:
    """Spearman ρ of ``values`` against ``strengths`` (finite points only, None below 3 points or
    for a constant series), ``monotone`` (|ρ| >= 0.9), ``leaves_interval`` (the value at the largest
    strength outside [low, high]; None without both), ``worse`` (it moved in the direction
    ``worse`` (+1: up) relative to the first value) and ``detects`` (monotone, leaves, worse)."""
    pts = [(float(x), float(v)) for x, v in zip(strengths, values, strict=True)
           if v is not None and np.isfinite(v)]
    rho = None
    if len(pts) >= 3 and len({v for _, v in pts}) > 1:
        rho = float(spearmanr([x for x, _ in pts], [v for _, v in pts]).statistic)
    last = values[-1] if values[-1] is not None and np.isfinite(values[-1]) else None
    leaves = None if last is None or interval is None else bool(last < interval[0] or last > interval[1])
    moved = None if last is None or not pts else bool(worse * (last - pts[0][1]) > 0)
    monotone = rho is not None and abs(rho) >= MONOTONE_RHO - 1e-9  # rho = 0.9 of 5 points: 0.8999...
    return {"spearman": rho, "monotone": monotone, "leaves_interval": leaves, "worse": moved,
            "detects": bool(monotone and leaves and moved)}


# ---------------------------------------------------------------------------- the run
def _check(test: np.ndarray, train: np.ndarray, extractors: Mapping[str, FeatureFn],
           names: Sequence[str], s: EvaluationSettings) -> int:
    """Validate the inputs; the MS-SSIM scales the volume shape allows."""
    if test.ndim != 4 or train.ndim != 4 or test.shape[1:] != train.shape[1:]:
        raise InputError(f"test and train must be volumes (N, D, H, W) of one shape, got "
                         f"{test.shape} and {train.shape}")
    if len(test) < MIN_TEST or len(train) < 2:
        raise InputError(f"need >= {MIN_TEST} test and >= 2 training volumes, got {len(test)} and "
                         f"{len(train)}")
    if not extractors:
        raise InputError("give at least one feature extractor")
    for name in names:
        get_corruption(name)
    if len(set(names)) < len(names):
        raise InputError(f"a corruption is named twice: {list(names)}")
    scales = max_ms_ssim_scales(test.shape[1:], s.kernel_size)
    if scales == 0:
        raise InputError(f"volume shape {test.shape[1:]} is smaller than the MS-SSIM kernel "
                         f"{s.kernel_size}")
    return scales


@dataclass
class _Real:
    """The clean test set's value of each metric, its bootstrap interval and its N curve."""

    value: dict[tuple[str, str], float | None]
    interval: dict[tuple[str, str], tuple[float, float] | None]
    curve: dict[tuple[str, str], dict[int, tuple[float, float] | None]]


def _real_side(test: np.ndarray, feats: Mapping[str, np.ndarray], refs: Mapping[str, _Reference],
               vref: _VoxelRef, s: EvaluationSettings, max_pairs: int | None,
               curve_seeds: int) -> tuple[_Real, dict[str, Any]]:
    """Clean values, intervals and N curves of every (extractor, metric); the clean MS-SSIM pairs."""
    idx = _resamples(len(test), s)
    real = _Real({}, {}, {})
    for name, ref in refs.items():
        def score(rows: np.ndarray, ref: _Reference = ref, f: np.ndarray = feats[name]) -> dict[str, Any]:
            return _feature_metrics(ref, f[rows], s)
        value = score(np.arange(len(test)))
        _store(real, name, value, _quantiles([score(r) for r in idx], s.ci_level, value),
               _curve(len(test), score, s.seed, curve_seeds))
    clean = _pair_values(test, vref, s, max_pairs)
    flagged = (vref.test_to_train  # the clean set's own NCC distances to the training set
               < np.quantile(vref.test_to_train, s.memorisation_quantile)).astype(np.float64)
    voxel_value = {"ms_ssim": clean["mean"], "memorisation": float(flagged.mean())}
    _store(real, VOXELS, voxel_value, _voxel_intervals(clean, idx, s.ci_level, flagged, voxel_value),
           _curve(len(test), lambda r: {**_subset_pairs(clean, r), "memorisation": float(flagged[r].mean())},
                  s.seed, curve_seeds))
    return real, voxel_value


def _store(real: _Real, extractor: str, value: Mapping[str, Any], interval: Mapping[str, Any],
           curve: Mapping[int, Mapping[str, Any]]) -> None:
    for m, v in value.items():
        real.value[extractor, m] = v
        real.interval[extractor, m] = interval.get(m)
        real.curve[extractor, m] = {n: c.get(m) for n, c in curve.items()}


def _frd_side(frd: FrdBackend, test: np.ndarray, train: np.ndarray, real: _Real,
              s: EvaluationSettings) -> tuple[np.ndarray, Callable[[np.ndarray], float]]:
    """Radiomic features of the training set; FRD of the clean set and its interval into ``real``."""
    r_train, r_test = frd.features(train), frd.features(test)
    idx = _resamples(len(test), s)[: frd.n_bootstrap]
    reps = [{"frd": frd.distance(r_train, r_test[row])} for row in idx]
    clean = {"frd": frd.distance(r_train, r_test)}
    real.value[RADIOMICS, "frd"] = clean["frd"]
    real.interval[RADIOMICS, "frd"] = _quantiles(reps, s.ci_level, clean)["frd"]
    return r_train, lambda vols: frd.distance(r_train, frd.features(vols))


@dataclass
class _Run:
    """What scoring one corrupted set needs: the sets, extractors (cached), references, options."""

    test: np.ndarray
    train: np.ndarray
    caches: Mapping[str, FeatureCache]
    refs: Mapping[str, _Reference]
    vref: _VoxelRef
    settings: EvaluationSettings
    max_pairs: int | None
    voxel_clean: Mapping[str, Any]
    frd_of: Callable[[np.ndarray], float] | None
    frd_clean: float | None


def _score_corruption(run: _Run, c: Corruption, grid: np.ndarray
                      ) -> dict[tuple[str, str, str], list[float | None]]:
    """(extractor, metric, corruption) -> the metric at each strength of ``grid`` (0 = clean).

    FRD only at 0 and the largest strength (None between)."""
    series: dict[tuple[str, str, str], list[float | None]] = {}
    s = run.settings
    for i, strength in enumerate(grid):
        vols = run.test if i == 0 else corrupt_set(c, run.test, strength, s.seed, run.train)
        for ext, cache in run.caches.items():
            for m, v in _feature_metrics(run.refs[ext], cache(vols), s).items():
                series.setdefault((ext, m, c.name), []).append(v)
        vm = run.voxel_clean if i == 0 else _voxel_metrics(vols, run.vref, s, run.max_pairs)
        for m, v in vm.items():
            series.setdefault((VOXELS, m, c.name), []).append(v)
        if run.frd_of is not None:
            v = run.frd_clean if i == 0 else run.frd_of(vols) if i == len(grid) - 1 else None
            series.setdefault((RADIOMICS, "frd", c.name), []).append(v)
    return series


def run_sanity(test: np.ndarray, train: np.ndarray, extractors: Mapping[str, FeatureFn],
               settings: EvaluationSettings, *, corruptions: Sequence[str] | None = None,
               n_strengths: int | None = None, max_pairs: int | None = 30, curve_seeds: int = 3,
               frd: FrdBackend | None = None, frd_note: str | None = None,
               progress: bool = False) -> list[dict[str, Any]]:
    """Every metric of every corrupted test set against the training set, summarised (:data:`COLUMNS`).

    ``test`` (N, D, H, W) and ``train`` (M, D, H, W) in [0, 1]; ``extractors``: name -> feature
    function (K, D, H, W) -> (K, F), each distinct volume passed once (:class:`FeatureCache`);
    ``corruptions``: registry names (default all, :data:`eval.corruptions.CORRUPTIONS`), each at
    :func:`eval.corruptions.strength_grid` (``n_strengths`` + clean); MS-SSIM on ``max_pairs`` random
    pairs (None: all) with the settings' kernel; intervals, seeds, KID / PRDC / memorisation knobs
    from ``settings``. FRD with ``frd`` only, on the clean and strongest sets (else its rows carry
    ``frd_note``). One row per (extractor, metric, corruption, strength), plus the rows of the
    real-vs-real curve against N (corruption :data:`CURVE`).
    """
    from eval.corruptions import CORRUPTIONS

    names = list(CORRUPTIONS) if corruptions is None else list(corruptions)
    test, train = np.asarray(test, np.float64), np.asarray(train, np.float64)
    scales = _check(test, train, extractors, names, settings)
    caches = {n: FeatureCache(fn) for n, fn in extractors.items()}
    refs, feats = {}, {}
    for n, cache in caches.items():
        feats[n] = cache(test)
        tr = cache(train)
        refs[n] = _Reference(tr, nearest_neighbours(feats[n], tr, metric="euclidean")["distance"])
    vref = _VoxelRef(train, nearest_neighbours(test, train, metric="ncc")["distance"], scales)
    real, voxel_clean = _real_side(test, feats, refs, vref, settings, max_pairs, curve_seeds)
    frd_of = _frd_side(frd, test, train, real, settings)[1] if frd is not None else None
    run = _Run(test, train, caches, refs, vref, settings, max_pairs, voxel_clean, frd_of,
               real.value.get((RADIOMICS, "frd")))
    series: dict[tuple[str, str, str], list[float | None]] = {}
    grids = {}
    from tqdm.auto import tqdm

    for name in tqdm(names, desc="corruptions", disable=not progress):
        grids[name] = strength_grid(get_corruption(name), n_strengths)
        for key, values in _score_corruption(run, get_corruption(name), grids[name]).items():
            series[key] = values
        logger.info("%s: %d strengths scored (%s)", name, len(grids[name]),
                    ", ".join(f"{n}: {c.computed} volumes featurised" for n, c in caches.items()))
    meta = {"n_test": len(test), "n_train": len(train), "seed": settings.seed}
    rows = _corruption_rows(series, grids, real, meta)
    if frd is None:
        rows += [_row(RADIOMICS, "frd", n, get_corruption(n).kind, 0.0, get_corruption(n).unit, None,
                      None, None, summarise([0.0], [None], None, 1), meta, note=frd_note)
                 for n in names]
    return rows + _curve_rows(real, meta)


def _row(extractor: str, metric: str, corruption: str, kind: str, strength: float, unit: str,
         value: float | None, real_value: float | None, interval: tuple[float, float] | None,
         summary: Mapping[str, Any], meta: Mapping[str, Any], *, sd: float | None = None,
         note: str | None = None) -> dict[str, Any]:
    lo, hi = interval if interval is not None else (None, None)
    return {"extractor": extractor, "metric": metric, "corruption": corruption, "kind": kind,
            "strength": float(strength), "unit": unit, "value": value, "value_sd": sd,
            "real_value": real_value, "real_low": lo, "real_high": hi, **summary, **meta,
            "note": note}


def _corruption_rows(series: Mapping[tuple[str, str, str], list[float | None]],
                     grids: Mapping[str, np.ndarray], real: _Real,
                     meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for (ext, m, name), values in series.items():
        c, key = get_corruption(name), (ext, m)
        summary = summarise(grids[name], values, real.interval.get(key), WORSE[m])
        note = "FRD on the clean and strongest sets only" if m == "frd" else None
        rows += [_row(ext, m, name, c.kind, x, c.unit, v, real.value.get(key), real.interval.get(key),
                      summary, meta, note=note) for x, v in zip(grids[name], values, strict=True)]
    return rows


def _curve_rows(real: _Real, meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows of the small-N curves: strength = N; summarised against decreasing N (ρ against the
    rank of 1/N; leaves_interval / worse: at the smallest N)."""
    rows = []
    for key, curve in real.curve.items():
        sizes = sorted(curve, reverse=True)
        means = [curve[n][0] if curve[n] is not None else None for n in sizes]
        summary = summarise([-n for n in sizes], means, real.interval.get(key), WORSE[key[1]])
        for n, mean in zip(sizes[::-1], means[::-1], strict=True):
            sd = curve[n][1] if curve[n] is not None else None
            rows.append(_row(*key, CURVE, "real", n, "test subset size N", mean, real.value.get(key),
                             real.interval.get(key), summary, meta, sd=sd,
                             note="mean ± sd over random test subsets"))
    return rows
