"""Load the WDM authors' released checkpoints into our network and make a run folder of them.

The authors (Friedrich et al. 2024, github.com/pfriedri/wdm-3d) release the 128^3 U-Net weights on
the Hugging Face hub (huggingface.co/pfriedri/wdm-3d: ``brats_unet_128_1200k.pt`` and
``lidc-idri_unet_128_1200k.pt``, 1.2M iterations, 231,809,874 bytes each). Their training loop
(``guided_diffusion/train_util.py``, ``TrainLoop.save``) writes ``torch.save(model.state_dict())``:
a plain ``OrderedDict`` of float32 tensors, no ``module.`` prefix, no optimizer, no EMA, no buffers.

Their ``UNetModel`` (``guided_diffusion/unet.py``) built with ``run.sh``'s ``ours_unet_128`` settings
(``num_channels=64``, ``channel_mult=1,2,2,4,4``, ``num_res_blocks=2``, no attention,
``bottleneck_attention=False``, ``resblock_updown=True``, ``additive_skips=True``,
``use_scale_shift_norm=False``, ``in/out_channels=8``) has exactly the module tree of
:class:`wdm.networks.WDMUNet` with preset ``wdm-128``: 368 tensors, 57,914,824 parameters, the same
names (``time_embed.{0,2}``, ``input_blocks.N.0.{in_layers.{0,2},emb_layers.1,out_layers.{0,3},
skip_connection}``, ``middle_block.{0,1}``, ``output_blocks.N.{0,1}``, ``out.{0,2}``) and shapes.
Conversion is therefore a checked identity: unwrap the container, strip a ``module.`` prefix if a
DDP-wrapped model was saved, and verify every key and shape, with errors that list what differs.

:func:`write_converted_run` then writes a run folder that ``wdm-bench sample --run`` (and the
Snakemake ``sample`` rule, which needs ``RUN/train_profile.json``) accept.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wdm.checkpoints import CHECKPOINT_GLOB, checkpoint_path, save_torch_atomic
from wdm.config import config_hash, dump_yaml, load_run_config, resolve_run_config
from wdm.io import InputError, code_version, sha256_file, write_json_atomic, write_text_atomic
from wdm.networks import build_network
from wdm.records import TRAIN, make_record

__all__ = ["RELEASED_WEIGHTS", "load_upstream_state_dict", "convert_wdm_checkpoint", "write_converted_run"]

log = logging.getLogger(__name__)

#: The authors' released files (huggingface.co/pfriedri/wdm-3d, commit e2fa221 "First model release"):
#: name -> SHA-256 of the file (from its Git LFS pointer).
RELEASED_WEIGHTS: dict[str, str] = {
    "brats_unet_128_1200k.pt": "01346a0ab8e406c0cbe7be43d383dffd3885c212b36ecd2aa8c315f54cc73d48",
    "lidc-idri_unet_128_1200k.pt": "6339773bb7051454c434fd06460fba77fdbbc35c98e2c4d1491beb793f01fd75",
}

#: Container keys that may wrap a state dict in other savers' formats (unwrapped in this order).
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "network")
_MAX_LISTED = 12


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a raw state dict or a ``{'model': ...}``-style container."""
    for _ in range(3):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj, Mapping) and k in obj), None)
        if inner is None:
            kind = (f"keys {sorted(map(str, obj))[:_MAX_LISTED]}" if isinstance(obj, Mapping)
                    else type(obj).__name__)
            raise InputError(f"{source}: not a state dict of tensors ({kind}); expected the authors' "
                             f"raw state dict or a container with one of {list(_CONTAINER_KEYS)}")
        obj = inner
    else:
        raise InputError(f"{source}: no state dict of tensors found")
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):  # saved from a DistributedDataParallel wrapper
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_upstream_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an upstream checkpoint with ``torch.load(weights_only=True)`` on the CPU.

    Returns:
        ``name -> tensor`` with any container and ``module.`` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    return _unwrap(obj, str(path))


def _listed(items: list[str]) -> str:
    more = f" ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def convert_wdm_checkpoint(
    src: str | os.PathLike | Mapping[str, torch.Tensor],
    network_cfg: Mapping[str, Any] | None = None,
    in_channels: int = 8,
    out_channels: int = 8,
) -> dict[str, torch.Tensor]:
    """Map an upstream (guided-diffusion layout) WDM state dict onto :class:`~wdm.networks.WDMUNet`.

    Args:
        src: checkpoint file (loaded with ``weights_only=True``) or an already loaded mapping.
        network_cfg: our ``network`` config section; default ``{"preset": "wdm-128"}``.
        in_channels: input channels (8 Haar sub-bands).
        out_channels: output channels (8: x0 prediction without learned variance).

    Returns:
        A state dict in our key order, float32, that loads with ``strict=True``.

    Raises:
        InputError: listing the missing, unexpected and shape-mismatched keys.
    """
    source = str(src) if not isinstance(src, Mapping) else "state dict"
    sd = load_upstream_state_dict(src) if not isinstance(src, Mapping) else _unwrap(src, source)
    cfg = dict(network_cfg or {"preset": "wdm-128"})
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = build_network(cfg, in_channels, out_channels).state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    mismatched = [f"{k} {tuple(sd[k].shape)} vs ours {tuple(v.shape)}"
                  for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {_listed(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {_listed(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es): {_listed(mismatched)}")
        raise InputError(f"{source}: does not fit network {cfg} with {in_channels}->{out_channels} "
                         f"channels ({len(sd)} tensors vs our {len(expected)}): " + "; ".join(problems))
    bad = [k for k in expected if not sd[k].is_floating_point()]
    if bad:
        raise InputError(f"{source}: non-float tensors {_listed(bad)}")
    return {k: sd[k].detach().to(torch.float32).contiguous() for k in expected}


def _step_from_name(path: Path) -> int:
    """Training step from upstream file names: ``brats_unet_128_1200k.pt`` -> 1200000,
    ``brats_1200000.pt`` -> 1200000; 0 if the name carries none."""
    m = re.search(r"_(\d+)(k?)\.pt$", path.name)
    return int(m.group(1)) * (1000 if m.group(2) else 1) if m else 0


def _checked_config(config: str | os.PathLike | Mapping[str, Any], size: int, out: Path,
                    overwrite: bool) -> dict:
    """The resolved WDM run config; errors for another model, an odd size or a taken folder."""
    cfg = load_run_config(config) if not isinstance(config, Mapping) else resolve_run_config(dict(config))
    if cfg["model"] != "wdm":
        raise InputError(f"{config}: model is {cfg['model']!r}; released WDM weights need model: wdm")
    if cfg["diffusion"]["levels"] != 1:
        raise InputError(f"{config}: diffusion.levels is {cfg['diffusion']['levels']}; the released WDM "
                         "weights are for levels: 1 (8 Haar bands)")
    if size < 2 or size % 2:
        raise InputError(f"--size must be an even cube side, got {size}")
    ckpt_dir = out / "checkpoints"
    if not overwrite and ckpt_dir.is_dir() and any(ckpt_dir.glob("step_*.pt")):
        raise InputError(f"{out}: holds checkpoints already; choose a new folder or pass --overwrite")
    return cfg


def _provenance(src: Path) -> dict[str, Any]:
    """Path, SHA-256 and (if it is one) the name of the released file ``src``."""
    provenance = {"path": str(src.resolve()), "sha256": sha256_file(src), "format": "pfriedri/wdm-3d"}
    known = {v: k for k, v in RELEASED_WEIGHTS.items()}.get(provenance["sha256"])
    provenance["released_file"] = known
    if known is None:
        log.warning("%s: not one of the released files %s (SHA-256 differs); converting anyway",
                    src, sorted(RELEASED_WEIGHTS))
    return provenance


def _write_checkpoint(ckpt_dir: Path, state: dict, overwrite: bool) -> Path:
    """``step_NNNNNNN.pt`` atomically; with ``overwrite`` the folder's other checkpoints go."""
    path = checkpoint_path(ckpt_dir.parent, state["step"])
    save_torch_atomic(state, path)
    if overwrite:
        for old in ckpt_dir.glob(CHECKPOINT_GLOB):
            if old != path:
                old.unlink(missing_ok=True)
    return path


def _check_loads(network_cfg: Mapping[str, Any], sd: dict[str, Any], size: int) -> None:
    """Build the network of ``network_cfg`` (8 -> 8 channels) and load ``sd`` strictly (proves the
    layout once more); ``size / 2`` must suit its down-sampling."""
    network = build_network(network_cfg, 8, 8)
    f = network.downsample_factor
    if (size // 2) % f:
        raise InputError(f"--size {size}: the wavelet grid side {size // 2} must be divisible by {f}")
    network.load_state_dict(sd, strict=True)


def _checked_affine(affine: np.ndarray | None) -> np.ndarray:
    """The 4x4 voxel-to-world matrix (identity by default, as upstream writes)."""
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise InputError(f"affine must be 4x4, got shape {affine.shape}")
    return affine


def write_converted_run(
    src: str | os.PathLike,
    out: str | os.PathLike,
    config: str | os.PathLike | Mapping[str, Any],
    *,
    size: int = 128,
    affine: np.ndarray | None = None,
    step: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a run folder holding the converted upstream weights.

    Layout (as :mod:`wdm.train` writes it): ``OUT/checkpoints/step_NNNNNNN.pt`` (keys ``step``,
    ``model`` = ``{"network": state dict}``, ``config``, ``data``, ``best``, ``optimizer`` = {},
    ``converted_from``), ``OUT/config.yaml`` and ``OUT/train_profile.json``.

    Args:
        src: the upstream checkpoint file.
        out: the run folder to create.
        config: our run config (file or dict) whose ``network``/``diffusion``/``sampling`` are used,
            e.g. ``config/paper/models/wdm_128.yaml``; its ``model`` must be ``wdm``.
        size: cube side of the generated volumes (the network runs on ``size/2`` wavelet grids).
        affine: 4x4 voxel-to-world matrix for the NIfTI output; default identity, as upstream's
            ``scripts/generation_sample.py`` writes.
        step: training step to record; default parsed from the file name (``..._1200k.pt``).
        overwrite: replace checkpoints already in ``out``.

    Returns:
        The checkpoint path.
    """
    src, out = Path(src), Path(out)
    cfg = _checked_config(config, size, out, overwrite)
    sd = convert_wdm_checkpoint(src, cfg["network"])
    _check_loads(cfg["network"], sd, size)
    step = _step_from_name(src) if step is None else int(step)
    affine = _checked_affine(affine)
    provenance = _provenance(src)
    state = {
        "step": step,
        "model": {"network": sd},
        "optimizer": {},
        "config": cfg,
        "data": {"shape": [size] * 3, "affine": affine.tolist(), "data_dir": None, "n_train": None},
        "best": {"step": step, "loss": math.inf},
        "code_version": code_version(),
        "converted_from": provenance,
    }
    path = _write_checkpoint(out / "checkpoints", state, overwrite)
    write_text_atomic(out / "config.yaml", dump_yaml(cfg))
    write_json_atomic(out / "train_profile.json", make_record(
        TRAIN, model="wdm", steps_trained=step, steps_total=step, best_checkpoint_step=step,
        finished=True, n_parameters=sum(v.numel() for v in sd.values()),
        data={"shape": [size] * 3}, converted_from=provenance, config_hash=config_hash(cfg),
        code_version=code_version()))  # s/iteration and memory: not trained here
    log.info("converted %s (%d tensors, step %d) into %s", src, len(sd), step, path)
    return path
