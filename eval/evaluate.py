"""Evaluate generated volumes against real ones: 3D FID (MedicalNet features) and MS-SSIM diversity.

Protocols (DESIGN.md, "Evaluation protocol"):

- ``wdm`` (Friedrich et al. 2024, the WDM authors' code): MedicalNet ResNet-50 trained on 23 data
  sets (``resnet_50_23dataset.pth``), inputs in [0, 1], global average pooled 2048-d features;
  MS-SSIM among generated samples, 3D, data range 1, Gaussian kernel 7.
- ``hagan`` (Sun et al. 2022, HA-GAN's code): ``resnet_50.pth`` (8 data sets), inputs in [-1, 1].

Volumes are read as NIfTI in [0, 1]; every number is stored with the protocol and the feature
extractor that produced it, so an FID from an untrained network is never mistaken for a MedicalNet
FID.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
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
from eval.metrics import fid, max_ms_ssim_scales, pairwise_ms_ssim
from wdm.io import InputError, code_version, list_volumes, load_nifti, sha256_file, write_json_atomic

__all__ = ["PROTOCOLS", "evaluate", "write_metrics"]

logger = logging.getLogger(__name__)

#: protocol -> network input range and the MedicalNet checkpoint it prescribes.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "wdm": {"input_range": (0.0, 1.0), "weights": "resnet_50_23dataset"},
    "hagan": {"input_range": (-1.0, 1.0), "weights": "resnet_50"},
}

#: tolerance on the [0, 1] range check of input volumes.
RANGE_TOL = 1e-3


def _select(folder: str | os.PathLike, n: int | None, what: str) -> list[Path]:
    files = list_volumes(folder)
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


def evaluate(real_dir: str | os.PathLike, fake_dir: str | os.PathLike, *,
             weights: str | None = "auto", depth: int = 50, protocol: str = "wdm",
             batch_size: int = 4, seed: int = 0, kernel_size: int = 7,
             n_real: int | None = None, n_fake: int | None = None, device: str = "cpu",
             max_pairs: int | None = None) -> dict[str, Any]:
    """FID between ``real_dir`` and ``fake_dir`` and mean pairwise MS-SSIM among the fakes.

    ``weights``: a spec for :func:`eval.features.resolve_weights` (``"auto"`` = the protocol's
    checkpoint if present locally, else an untrained network, labelled as such; ``"none"`` =
    untrained). ``n_real`` / ``n_fake`` take the first volumes in sorted file order (error if fewer
    exist). Volumes must be 3D, all of one shape, with values in [0, 1] (± ``RANGE_TOL``).
    ``max_pairs`` limits MS-SSIM to a random subset of pairs drawn with ``seed``.
    Returns a JSON-ready dict (see the keys at the end of this function).
    """
    if protocol not in PROTOCOLS:
        raise InputError(f"unknown protocol {protocol!r}; allowed: {sorted(PROTOCOLS)}")
    spec = _resolve_spec(weights, protocol)
    ckpt, label = resolve_weights(spec, depth=depth, seed=seed)
    stem = ckpt.name.removesuffix(".pth") if ckpt is not None else None
    entry = MEDICALNET_WEIGHTS.get(stem) if stem else None
    if entry is not None and entry["depth"] != depth:
        raise InputError(f"weights {stem!r} are a resnet{entry['depth']}, but depth={depth}")
    if ckpt is not None and stem != PROTOCOLS[protocol]["weights"]:
        logger.warning("protocol %r prescribes %s, but %s is used", protocol,
                       PROTOCOLS[protocol]["weights"], ckpt.name)

    fake_files = _select(fake_dir, n_fake, "fake")
    real_files = _select(real_dir, n_real, "real")
    if len(fake_files) < 2 or len(real_files) < 2:
        raise InputError(f"need at least 2 real and 2 fake volumes, got {len(real_files)} real "
                         f"({real_dir}) and {len(fake_files)} fake ({fake_dir})")
    first = _load_checked(fake_files[0], None)
    shape = tuple(first.shape)
    fakes = np.stack([first] + [_load_checked(f, shape) for f in fake_files[1:]])
    scales = max_ms_ssim_scales(shape, kernel_size, max_scales=5)
    if scales == 0:
        raise InputError(f"{fake_dir}: volume shape {shape} is smaller than the MS-SSIM kernel "
                         f"{kernel_size}")

    model = medicalnet_resnet(depth, ckpt, seed=seed)  # checks the manifest SHA-256
    weights_sha = sha256_file(ckpt) if ckpt is not None else None
    input_range = PROTOCOLS[protocol]["input_range"]
    feats_fake = extract_features(model, fakes, batch_size=batch_size, device=device,
                                  input_range=input_range)
    feats_real = extract_features(model, _stream(real_files, shape), batch_size=batch_size,
                                  device=device, input_range=input_range)
    fid_value = fid(feats_real, feats_fake)

    gen = torch.Generator().manual_seed(seed)
    div = pairwise_ms_ssim(torch.from_numpy(fakes).unsqueeze(1), kernel_size=kernel_size,
                           data_range=1.0, scales=scales, max_pairs=max_pairs, generator=gen)
    logger.info("FID %.6g (%s, protocol %s), MS-SSIM %.4f over %d pairs", fid_value, label,
                protocol, div["mean"], div["n_pairs"])
    return {
        "fid": fid_value,
        "ms_ssim": div["mean"],
        "ms_ssim_std": div["std"],
        "ms_ssim_pairs": div["n_pairs"],
        "ms_ssim_scales": div["scales"],
        "ms_ssim_kernel": kernel_size,
        "n_real": len(real_files),
        "n_fake": len(fake_files),
        "feature_extractor": label,
        "feature_dim": int(feats_real.shape[1]),
        "weights_sha256": weights_sha,
        "protocol": protocol,
        "input_range": list(input_range),
        "seed": seed,
        "shape": list(shape),
        "real_dir": str(real_dir),
        "fake_dir": str(fake_dir),
        "code_version": code_version(),
    }


def write_metrics(out_file: str | os.PathLike, result: dict[str, Any],
                  config: dict[str, Any]) -> None:
    """Write ``result`` plus the resolved ``config`` (under key ``"config"``) as JSON, atomically."""
    write_json_atomic(out_file, {**result, "config": dict(config)})
