"""The embedded ``phantom-seg`` feature extractor: checkpoint checks, loading, the ``auto:`` fallback.

``wdm-bench train-extractor`` (:mod:`wdm.extractor`) trains a MedicalNet-architecture ResNet-10
(Chen, Ma & Zheng, "Med3D: Transfer Learning for 3D Medical Image Analysis", arXiv 1904.00625,
2019: shortcut B, dilated layer3/layer4) by segmentation of phantom-brain anatomy, as MedicalNet
was pretrained by segmentation. Its checkpoint is ``{"state_dict": {name: tensor}, "head": ...,
"meta": {"kind": "phantom-seg", "depth": 10, ...}}``. Here it is only read: the encoder with
global average pooling maps ``(N, 1, D, H, W)`` in [0, 1] to features ``(N, 512)``. Its numbers
are not MedicalNet numbers and carry :data:`eval.medicalnet_weights.PHANTOM_SEG_LABEL`.

When the MedicalNet weights that ``auto:<name>`` names are not on this machine,
:func:`fallback_spec` picks what is used instead: the phantom-seg file (``evaluation.fallback:
phantom-seg`` with ``fallback_weights``) or the untrained network (``untrained``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from eval.features import MedicalNetResNet, feature_dim
from eval.medicalnet_weights import PHANTOM_SEG, PHANTOM_SEG_LABEL, local_weights
from wdm.io import InputError

__all__ = ["FALLBACKS", "fallback_spec", "uses_phantom_seg", "phantom_seg_meta", "load_phantom_seg"]

logger = logging.getLogger(__name__)

#: the values of ``evaluation.fallback``.
FALLBACKS: tuple[str, ...] = (PHANTOM_SEG, "untrained")

_EXPECTED = "a phantom-seg checkpoint written by 'wdm-bench train-extractor'"


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: {'is a folder' if path.is_dir() else 'not found'}, expected {_EXPECTED}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise InputError(f"{path}: cannot read with weights_only=True ({type(exc).__name__}), "
                         f"expected {_EXPECTED}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise InputError(f"{path}: no field 'state_dict', expected {_EXPECTED}")
    return obj


def phantom_seg_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` of a phantom-seg checkpoint, checked: ``kind`` is ``"phantom-seg"`` and
    ``depth`` a MedicalNet depth; anything else (a MedicalNet file, another checkpoint) is a
    one-line :class:`InputError` naming the file, the field and what was expected."""
    return _checked_meta(Path(path), _read(Path(path)))


def _checked_meta(path: Path, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("meta")
    if not isinstance(meta, dict) or meta.get("kind") != PHANTOM_SEG:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise InputError(f"{path}: field 'meta.kind' is {kind!r}, expected {PHANTOM_SEG!r} "
                         f"({_EXPECTED})")
    depth = meta.get("depth")
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise InputError(f"{path}: field 'meta.depth' is {depth!r}, expected a MedicalNet depth (10)")
    feature_dim(depth)  # InputError for an unsupported depth
    return meta


def load_phantom_seg(path: str | os.PathLike) -> tuple[MedicalNetResNet, dict[str, Any]]:
    """``(encoder in eval mode, meta)`` of a phantom-seg checkpoint.

    The encoder is :class:`eval.features.MedicalNetResNet` of ``meta["depth"]`` with the file's
    ``state_dict`` loaded strictly (read with ``weights_only=True``); it maps ``(N, 1, D, H, W)``
    in [0, 1] to ``(N, F)``, F = 512 at depth 10. Missing, unexpected or mis-shaped tensors are an
    :class:`InputError` naming the file.
    """
    path = Path(path)
    obj = _read(path)
    meta = _checked_meta(path, obj)
    model = MedicalNetResNet(meta["depth"])
    sd = {k.removeprefix("module."): v for k, v in obj["state_dict"].items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # missing / unexpected keys, shape mismatches
        raise InputError(f"{path}: field 'state_dict' does not fit MedicalNet resnet{meta['depth']} "
                         f"({' '.join(str(exc).split())[:300]})") from exc
    return model.eval(), meta


def fallback_spec(spec: str | None, fallback: str, fallback_weights: str | os.PathLike | None) -> str | None:
    """The weights spec to resolve once the ``auto:`` fallback is applied.

    - ``"phantom-seg"`` alone: ``phantom-seg:<fallback_weights>`` (an :class:`InputError`
      without a path);
    - ``"auto:<name>"`` whose MedicalNet file is not found locally: with ``fallback ==
      "phantom-seg"`` and a path, ``phantom-seg:<fallback_weights>`` (a warning names the file);
      without a path, or with ``"untrained"``, the spec unchanged (the untrained network, with
      :func:`eval.medicalnet_weights.resolve_weights`'s warning);
    - anything else: unchanged.
    """
    if fallback not in FALLBACKS:
        raise InputError(f"evaluation fallback {fallback!r}; allowed: {list(FALLBACKS)}")
    if spec == PHANTOM_SEG:
        if not fallback_weights:
            raise InputError(f"weights {PHANTOM_SEG!r} need a checkpoint: give "
                             f"'{PHANTOM_SEG}:PATH' or --fallback-weights PATH")
        return f"{PHANTOM_SEG}:{fallback_weights}"
    if not _auto_missing(spec) or fallback != PHANTOM_SEG:
        return spec
    name = str(spec).partition(":")[2]
    if not fallback_weights:
        logger.warning("MedicalNet weights %r not found and evaluation.fallback is %r, but no "
                       "phantom-seg checkpoint was given (--fallback-weights): falling back to an "
                       "untrained network", name, PHANTOM_SEG)
        return spec
    logger.warning("MedicalNet weights %r not found; using the phantom-seg extractor %s "
                   "(%s): the FID is NOT a MedicalNet FID", name, fallback_weights, PHANTOM_SEG_LABEL)
    return f"{PHANTOM_SEG}:{fallback_weights}"


def _auto_missing(spec: str | None) -> bool:
    """Whether ``spec`` is ``auto:<name>`` and the MedicalNet file ``name`` is not on this machine."""
    return spec is not None and str(spec).startswith("auto:") and \
        local_weights(str(spec).partition(":")[2]) is None


def uses_phantom_seg(evaluation: Mapping[str, Any]) -> bool:
    """Whether an ``evaluation`` section (schema defaults filled) needs a phantom-seg file that it
    does not name itself (``fallback_weights`` null): weights ``"phantom-seg"``, or ``auto[:<name>]``
    whose MedicalNet file is missing here with ``fallback: phantom-seg``. The workflow then builds
    one (``workflow/rules/extractor.smk``) and passes it as ``--fallback-weights``."""
    weights = evaluation.get("weights")
    if evaluation.get("fallback_weights"):
        return False
    if weights == PHANTOM_SEG:
        return True
    if weights == "auto":  # the protocol's own checkpoint
        from eval.evaluate import PROTOCOLS

        weights = "auto:" + PROTOCOLS[evaluation.get("protocol", "wdm")]["weights"]
    return evaluation.get("fallback", PHANTOM_SEG) == PHANTOM_SEG and _auto_missing(weights)
