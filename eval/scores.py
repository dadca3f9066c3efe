"""Every feature-space score of one generated set against the real set, with the settings used.

The numbers of a ``metrics.json`` that need only the two feature arrays (N_r, F) and (N_f, F):
FID (Heusel et al. 2017) with its percentile bootstrap interval, MMD², KID (Bińkowski et al.
2018) with a bootstrap interval, FID∞ (Chong & Forsyth 2020), precision / recall (Kynkäänniemi et
al. 2019), density / coverage (Naeem et al. 2020); and the protocol guard: the paper protocols name
their sample sizes, and a number on fewer volumes is refused unless ``allow_small_n`` marks it.
All knobs come from one :class:`wdm.config.EvaluationSettings`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from eval.fidelity import fid_infinity, kid, prdc
from eval.metrics import fid_from_features, mmd
from eval.significance import fast_fid_bootstrap_ci, kid_bootstrap_ci
from wdm.config import EvaluationSettings
from wdm.io import InputError

__all__ = ["PROTOCOL_SIZES", "SMALL_N_NOTE", "protocol_note", "feature_scores", "SCORE_KEYS"]

logger = logging.getLogger(__name__)

#: protocol -> the sample sizes its paper evaluates on (None: not named). ``wdm``: Friedrich et al.
#: 2024 (1000 training volumes vs 1000 generated); ``hagan``: Sun et al. 2022 (2048 generated).
PROTOCOL_SIZES: dict[str, dict[str, int | None]] = {
    "wdm": {"n_real": 1000, "n_fake": 1000},
    "hagan": {"n_real": None, "n_fake": 2048},
}

#: what the ``protocol_note`` of a number on fewer volumes than its protocol names reads.
SMALL_N_NOTE = "n below protocol"

#: the result fields :func:`feature_scores` fills (None where a score cannot be computed).
SCORE_KEYS: tuple[str, ...] = (
    "fid", "fid_ci_low", "fid_ci_high", "mmd", "mmd_bandwidth", "kid", "kid_std", "kid_ci_low",
    "kid_ci_high", "kid_subset_size", "kid_subsets", "fid_inf", "fid_inf_slope", "fid_inf_ns",
    "fid_inf_fids", "precision", "recall", "density", "coverage", "prdc_k",
)


def protocol_note(protocol: str, n_real: int, n_fake: int, allow_small_n: bool, *,
                  protocol_extractor: bool = True, where: str = "evaluation") -> str | None:
    """None when ``n_real`` / ``n_fake`` meet :data:`PROTOCOL_SIZES`, else :data:`SMALL_N_NOTE`.

    A number on fewer volumes made with the protocol's own extractor (``protocol_extractor``: its
    MedicalNet checkpoint) would pass for a protocol number: that is an :class:`InputError` naming
    the sizes and the way out unless ``allow_small_n``. With any other extractor (an untrained
    network, the phantom-seg extractor, other weights) the number is not a protocol number
    anyway, and is only marked.
    """
    need = PROTOCOL_SIZES.get(protocol, {})
    short = [f"{k}={n} < {need[k]}" for k, n in (("n_real", n_real), ("n_fake", n_fake))
             if need.get(k) is not None and n < need[k]]
    if not short:
        return None
    if protocol_extractor and not allow_small_n:
        raise InputError(f"{where}: protocol {protocol!r} is defined on {need}, got "
                         f"{', '.join(short)}; generate more volumes, or pass --allow-small-n "
                         "(evaluation.allow_small_n: true) to report it marked 'n below protocol'")
    logger.warning("%s: %s for protocol %r, reported as %r", where, ", ".join(short), protocol,
                   SMALL_N_NOTE)
    return SMALL_N_NOTE


def feature_scores(real: np.ndarray, fake: np.ndarray, settings: EvaluationSettings) -> dict[str, Any]:
    """:data:`SCORE_KEYS` of features ``real`` (N_r, F) and ``fake`` (N_f, F), float64.

    Intervals (``settings.n_bootstrap`` resamples, level ``ci_level``, seed ``seed``; None when
    n_bootstrap is 0): FID by :func:`eval.significance.fast_fid_bootstrap_ci` (the resamples of
    :func:`eval.metrics.fid_bootstrap_ci`), KID by :func:`eval.significance.kid_bootstrap_ci`
    with ``bootstrap_kid_subsets`` subsets per replicate. KID on ``kid_subsets`` subsets of
    ``kid_subset_size``; FID∞ on ``fid_inf_points`` sizes; PRDC with ``prdc_k`` neighbours. A
    score the set sizes cannot support (FID∞ below 3 fakes, PRDC with k >= N) is None, logged.
    """
    s = settings
    k = kid(real, fake, subset_size=s.kid_subset_size, n_subsets=s.kid_subsets, seed=s.seed)
    m = mmd(real, fake)
    out: dict[str, Any] = {
        "fid": fid_from_features(real, fake), "mmd": m["mmd2"], "mmd_bandwidth": m["bandwidth"],
        "kid": k["mean"], "kid_std": k["std"], "kid_subset_size": k["subset_size"],
        "kid_subsets": k["n_subsets"], "prdc_k": s.prdc_k,
        **dict.fromkeys(("fid_ci_low", "fid_ci_high", "kid_ci_low", "kid_ci_high")),
    }
    if s.n_bootstrap:
        out["fid_ci_low"], out["fid_ci_high"] = fast_fid_bootstrap_ci(
            real, fake, n_bootstrap=s.n_bootstrap, level=s.ci_level, seed=s.seed)
        out["kid_ci_low"], out["kid_ci_high"] = kid_bootstrap_ci(
            real, fake, n_bootstrap=s.n_bootstrap, level=s.ci_level, seed=s.seed,
            n_subsets=s.bootstrap_kid_subsets, subset_size=s.kid_subset_size)
    out.update(_fid_inf(real, fake, s))
    out.update(_prdc(real, fake, s.prdc_k))
    return out


def _fid_inf(real: np.ndarray, fake: np.ndarray, s: EvaluationSettings) -> dict[str, Any]:
    if len(fake) < 3:
        logger.warning("FID-infinity needs >= 3 generated volumes, got %d: not computed", len(fake))
        return dict.fromkeys(("fid_inf", "fid_inf_slope", "fid_inf_ns", "fid_inf_fids"))
    r = fid_infinity(real, fake, n_points=s.fid_inf_points, seed=s.seed)
    return {"fid_inf": r["fid_inf"], "fid_inf_slope": r["slope"], "fid_inf_ns": r["ns"].tolist(),
            "fid_inf_fids": r["fids"].tolist()}


def _prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, Any]:
    if k >= min(len(real), len(fake)):
        logger.warning("precision/recall/density/coverage need more than k=%d volumes per side, got "
                       "%d real and %d generated: not computed", k, len(real), len(fake))
        return dict.fromkeys(("precision", "recall", "density", "coverage"))
    return prdc(real, fake, k=k)
