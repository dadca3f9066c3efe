"""Memorisation (copy) detection: nearest training neighbours and a held-out distance threshold.

A generated volume is a suspected copy when it is closer to its nearest training volume than all
but a small quantile of held-out test volumes are to theirs: test volumes are real samples the
model never saw, so their nearest-training distances calibrate "as close as an independent sample
gets" (the held-out comparison of Meehan, Chaudhuri & Dasgupta, "A Non-Parametric Test to Detect
Data-Copying in Generative Models", AISTATS 2020). Copies of 3D / medical volumes are searched by
normalised cross-correlation as in Akbar et al., "Beware of diffusion models for synthesizing
medical images - a comparison with GANs in terms of memorizing brain MRI and chest x-ray images",
2023, or by Euclidean distance in a feature space. Pure functions over numpy arrays, float64, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from eval.fidelity import pairwise_distances
from wdm.io import InputError

__all__ = ["nearest_neighbours", "memorisation_report"]

METRICS = ("euclidean", "ncc")


def _as_array(x: np.ndarray, name: str, metric: str) -> np.ndarray:
    """``x`` as an array (N >= 1, ...) of the shape ``metric`` needs; finite; not yet float64."""
    a = np.asarray(x)
    if metric == "euclidean" and (a.ndim != 2 or a.shape[0] < 1):
        raise InputError(f"{name} must be features of shape (N >= 1, F) for metric 'euclidean', "
                         f"got {a.shape}")
    if metric == "ncc" and (a.ndim < 2 or a.shape[0] < 1 or a[0].size < 2):
        raise InputError(f"{name} must be volumes of shape (N >= 1, D, H, W) for metric 'ncc', got {a.shape}")
    return a


def _zscore(x: np.ndarray) -> np.ndarray:
    """Rows (n, V) float64 centred and scaled to unit norm; a constant row becomes all zeros.

    Then the dot product of two rows is their Pearson correlation (NCC); a constant volume has
    correlation 0 (distance 1) with every volume.
    """
    z = np.array(x, dtype=np.float64).reshape(len(x), -1)
    if not np.isfinite(z).all():
        raise InputError("volumes must be finite, got NaN/Inf")
    z -= z.mean(1, keepdims=True)
    norm = np.sqrt(np.einsum("ij,ij->i", z, z))[:, None]
    z /= np.where(norm > 0, norm, 1.0)  # a constant row stays all zeros
    return z


def _euclid_chunk(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    return pairwise_distances(q, r)


def _ncc_chunk(q: np.ndarray, r: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - q @ r.T, 0.0, 2.0)


def _blocked_argmin(query: np.ndarray, reference: np.ndarray, prep, dist, rows: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest reference (index, distance) of each query, ``rows`` queries × ``rows`` references
    at a time; ``prep`` turns a raw chunk into float64 rows, ``dist`` two such blocks into distances.

    The reference blocks are prepared once when all of them fit in one block, else once per query
    block. Ties go to the lowest reference index.
    """
    nq, nr = len(query), len(reference)
    best_i = np.zeros(nq, np.int64)
    best_d = np.full(nq, np.inf)
    ref_blocks = [prep(reference[0:nr])] if nr <= rows else None
    for q0 in range(0, nq, rows):
        q = prep(query[q0:q0 + rows])
        for j, r0 in enumerate(range(0, nr, rows)):
            r = ref_blocks[j] if ref_blocks is not None else prep(reference[r0:r0 + rows])
            d = dist(q, r)
            i = d.argmin(1)
            di = d[np.arange(len(q)), i]
            better = di < best_d[q0:q0 + len(q)]
            best_d[q0:q0 + len(q)][better] = di[better]
            best_i[q0:q0 + len(q)][better] = i[better] + r0
    return best_i, best_d


def _features64(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if not np.isfinite(a).all():
        raise InputError("features must be finite, got NaN/Inf")
    return a


def _block_rows(width: int, budget_bytes: float) -> int:
    """Block size n with 8 (3 n · width + 3 n²) <= budget: a query block, the current and the next
    reference block (float64 rows of ``width``), and the (n, n) distances with two temporaries."""
    words = budget_bytes / 8
    n = (-width + np.sqrt(width * width + 4 * words / 3)) / 2
    return max(1, int(n))


def nearest_neighbours(query: np.ndarray, reference: np.ndarray, *, metric: str,
                       memory_budget_gb: float = 0.5) -> dict:
    """For each query, its nearest reference (index into ``reference``) and the distance to it.

    ``metric="euclidean"``: features ``query`` (N, F) and ``reference`` (M, F), Euclidean distance;
    the winner's distance is recomputed directly as ``|q - r|`` (exactly 0 for a copy).
    ``metric="ncc"``: volumes (N, D, H, W) and (M, D, H, W) (any trailing shape, flattened),
    distance ``1 - NCC``, NCC the normalised cross-correlation over the whole volume (the Pearson
    correlation of the flattened voxels, float64), in [0, 2]; a constant volume has NCC 0.
    Queries and references are processed in blocks whose float64 copies take at most
    ``memory_budget_gb`` together (never an (N, M, V) array: the block's (n, m) distances come from
    one matrix product). Ties go to the lowest reference index.
    Returns ``{"index" (N,) int64, "distance" (N,) float64}``.
    """
    if metric not in METRICS:
        raise InputError(f"metric must be one of {METRICS}, got {metric!r}")
    if not memory_budget_gb > 0:
        raise InputError(f"memory_budget_gb must be > 0, got {memory_budget_gb}")
    q = _as_array(query, "query", metric)
    r = _as_array(reference, "reference", metric)
    if q.shape[1:] != r.shape[1:]:
        raise InputError(f"query and reference must have the same per-item shape, got {q.shape[1:]} "
                         f"and {r.shape[1:]}")
    rows = _block_rows(int(np.prod(q.shape[1:])), memory_budget_gb * 2 ** 30)
    if metric == "ncc":
        index, distance = _blocked_argmin(q, r, _zscore, _ncc_chunk, rows)
    else:
        index, distance = _blocked_argmin(q, r, _features64, _euclid_chunk, rows)
        diff = _features64(q) - _features64(r[index])
        distance = np.sqrt((diff * diff).sum(1))
    return {"index": index, "distance": distance}


def _distances(nn: Mapping | np.ndarray, name: str) -> np.ndarray:
    d = nn["distance"] if isinstance(nn, Mapping) else nn
    d = np.asarray(d, np.float64)
    if d.ndim != 1 or d.size < 1 or not np.isfinite(d).all():
        raise InputError(f"{name} distances must be a finite 1-D array (N >= 1,), got shape {d.shape}")
    return d


def memorisation_report(gen_to_train: Mapping, test_to_train: Mapping | np.ndarray, *,
                        quantile: float = 0.01) -> dict:
    """Which generated volumes are closer to the training set than held-out real volumes are.

    ``gen_to_train``: :func:`nearest_neighbours` of the generated set against the training set
    (``{"index" (G,), "distance" (G,)}``); ``test_to_train``: that of the held-out test set (or
    just its distances (T,)), in the same feature / NCC space. threshold = the ``quantile``
    (``numpy.quantile``, linear interpolation) of the test-to-train distances; fraction = share of
    the G generated volumes strictly closer than it; suspects = those volumes, nearest first
    (ties by index), each ``{"index", "train_index", "distance"}``. For an independent model about
    ``quantile`` of its samples are flagged by chance. Returns ``{"threshold", "fraction",
    "suspects"}``.
    """
    if not 0 <= quantile <= 1:
        raise InputError(f"quantile must be in [0, 1], got {quantile}")
    if not isinstance(gen_to_train, Mapping) or "index" not in gen_to_train:
        raise InputError("gen_to_train must be the {'index', 'distance'} result of nearest_neighbours")
    gd = _distances(gen_to_train, "gen_to_train")
    gi = np.asarray(gen_to_train["index"], np.int64)
    if gi.shape != gd.shape:
        raise InputError(f"gen_to_train index must have shape {gd.shape} like its distances, got {gi.shape}")
    threshold = float(np.quantile(_distances(test_to_train, "test_to_train"), quantile))
    flagged = np.flatnonzero(gd < threshold)
    order = flagged[np.lexsort((flagged, gd[flagged]))]
    suspects = [{"index": int(i), "train_index": int(gi[i]), "distance": float(gd[i])} for i in order]
    return {"threshold": threshold, "fraction": float(len(flagged) / len(gd)), "suspects": suspects}
