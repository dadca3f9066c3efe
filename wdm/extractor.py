"""Train the embedded ``phantom-seg`` feature extractor: a MedicalNet ResNet-10 by segmentation.

MedicalNet (Chen, Ma & Zheng, "Med3D: Transfer Learning for 3D Medical Image Analysis", arXiv
1904.00625, 2019) pretrained its 3D ResNets by segmentation and FID takes the encoder's globally
pooled last feature map. Its weights cannot be downloaded everywhere; this module trains the same
architecture (:class:`eval.features.MedicalNetResNet` of depth 10: shortcut B, layer3 dilated 2,
layer4 dilated 4) to segment phantom-brain anatomy (:func:`wdm.data.phantom.make_phantom_labelled`:
background, CSF/other brain, grey matter, white matter, lesion), so that FID has an extractor that
knows brains. Its numbers are NOT MedicalNet numbers and are labelled so.

- Training data: its own phantoms, volume ``i`` drawn with ``np.random.default_rng(seed + i)``
  (default seed 7 000 000; the benchmark's volumes come from ``SeedSequence(seed).spawn``, a
  different stream), inputs ``(N, 1, S, S, S)`` in [0, 1] exactly as the evaluation feeds them;
  the last ``n_heldout`` volumes are held out for the Dice record.
- Network: the encoder's layer4 map ``(N, 512, S/8, S/8, S/8)`` -> 3×3×3 conv (32) + BN + ReLU ->
  1×1×1 conv (5 classes) -> trilinear upsampling to ``(N, 5, S, S, S)``.
- Loss: cross-entropy + soft Dice over the 4 foreground classes; AdamW, linear warm-up then
  cosine decay. Deterministic from ``seed`` at a given thread count: seeded initialisation and
  batch order, and only CPU kernels that are deterministic (the tests train twice and compare
  bits). ``torch.use_deterministic_algorithms`` is not called: its first call imports
  ``torch._inductor`` (seconds) and changes no CPU kernel used here.

The output is ``{"state_dict": encoder, "head": head, "meta": {...}}`` (read by
:mod:`eval.extractors`, ``torch.load(weights_only=True)``) and a JSON record beside it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval.features import MedicalNetResNet, medicalnet_resnet
from eval.medicalnet_weights import PHANTOM_SEG, PHANTOM_SEG_LABEL
from wdm.checkpoints import save_torch_atomic
from wdm.data.phantom import LABEL_CLASSES, load_mni_templates, make_phantom_labelled
from wdm.io import InputError, code_version, sha256_file, write_json_atomic

__all__ = ["DEFAULTS", "PhantomSegNet", "build_model", "phantom_label_set", "segmentation_scores",
           "train_extractor", "record_path"]

log = logging.getLogger(__name__)

#: Defaults of ``wdm-bench train-extractor`` (about 1.5-2 minutes on 2 CPU cores at 32³).
DEFAULTS: dict[str, Any] = {"seed": 7_000_000, "size": 32, "n_volumes": 128, "steps": 50,
                            "batch_size": 8, "lr": 1e-3, "n_heldout": 16, "warmup": 5}
DEPTH = 10
HEAD_CHANNELS = 32


class PhantomSegNet(nn.Module):
    """MedicalNet ResNet encoder + a small segmentation head: ``(N, 1, D, H, W) -> (N, C, D, H, W)``.

    ``encoder`` is the evaluation's :class:`eval.features.MedicalNetResNet` (its ``forward`` gives
    the pooled features); :meth:`forward` gives segmentation logits upsampled to the input size.
    """

    def __init__(self, encoder: MedicalNetResNet, n_classes: int = len(LABEL_CLASSES)) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(
            nn.Conv3d(encoder.num_features, HEAD_CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm3d(HEAD_CHANNELS), nn.ReLU(inplace=True),
            nn.Conv3d(HEAD_CHANNELS, n_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, C, D, H, W)`` of ``x`` (N, 1, D, H, W) in [0, 1], from the encoder's
        layer4 map (:meth:`eval.features.MedicalNetResNet.last_map`)."""
        return F.interpolate(self.head(self.encoder.last_map(x)), size=x.shape[2:],
                             mode="trilinear", align_corners=False)


def build_model(seed: int) -> PhantomSegNet:
    """The untrained network: MedicalNet's initialisation of the encoder (seeded), the head from a
    generator seeded with ``seed + 1``; the global RNG state is left unchanged."""
    model = PhantomSegNet(medicalnet_resnet(DEPTH, seed=seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        for m in model.head.modules():
            if isinstance(m, nn.Conv3d):
                m.reset_parameters()
    return model.train()


def phantom_label_set(n: int, size: int, seed: int, first: int = 0,
                      progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Phantoms ``first … first + n - 1`` and their labels: x float32 ``(n, 1, S, S, S)`` in [0, 1],
    y int64 ``(n, S, S, S)`` (:data:`wdm.data.phantom.LABEL_CLASSES`); volume ``i`` is drawn with
    ``np.random.default_rng(seed + i)`` (lesion probability 0.5, as the benchmark's)."""
    from tqdm.auto import tqdm

    templates = load_mni_templates(size)
    xs, ys = [], []
    for i in tqdm(range(first, first + n), desc=f"phantoms {size}³", unit="vol",
                  disable=not progress or None, leave=False):
        vol, lab = make_phantom_labelled(np.random.default_rng(seed + i), size, templates=templates)
        xs.append(vol)
        ys.append(lab)
    return (torch.from_numpy(np.stack(xs)).unsqueeze(1),
            torch.from_numpy(np.stack(ys).astype(np.int64)))


def seg_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + (1 − mean soft Dice of the foreground classes); logits (N, C, ...), y (N, ...)."""
    ce = F.cross_entropy(logits, y)
    prob = logits.softmax(1)
    onehot = F.one_hot(y, logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    dims = (0, *range(2, logits.ndim))
    inter, total = (prob * onehot).sum(dims), (prob + onehot).sum(dims)
    dice = (2 * inter + 1.0) / (total + 1.0)
    return ce + (1.0 - dice[1:].mean())


@torch.no_grad()
def segmentation_scores(model: PhantomSegNet, x: torch.Tensor, y: torch.Tensor,
                        batch_size: int = 8) -> dict[str, Any]:
    """Per-class Dice (None for a class absent from both), voxel accuracy and chance Dice (the
    class frequency: the expected Dice of labels drawn at random with those frequencies) of
    ``model`` (eval mode) on x (N, 1, S, S, S), y (N, S, S, S)."""
    was = model.training
    model.eval()
    pred = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was)
    dice, chance = {}, {}
    for c, name in enumerate(LABEL_CLASSES):
        p, t = pred == c, y == c
        denom = int(p.sum() + t.sum())
        dice[name] = 2.0 * int((p & t).sum()) / denom if denom else None
        chance[name] = float(t.float().mean())
    fg = [dice[n] for n in LABEL_CLASSES[1:] if dice[n] is not None]
    return {"dice": dice, "chance_dice": chance, "accuracy": float((pred == y).float().mean()),
            "mean_foreground_dice": float(np.mean(fg)) if fg else None, "n_volumes": len(x)}


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _fit(model: PhantomSegNet, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int,
         lr: float, warmup: int, seed: int, progress: bool) -> list[float]:
    """``steps`` AdamW steps on batches drawn without replacement per epoch (generator ``seed``);
    the loss of every step."""
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(steps), desc="train-extractor", unit="step", disable=not progress or None)
    for step in bar:
        while len(order) < batch_size:
            order += torch.randperm(len(x), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        loss = seg_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % 10 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.4f lr %.2e", step + 1, steps, losses[-1], opt.param_groups[0]["lr"])
    return losses


def _check_args(size: int, n_volumes: int, steps: int, batch_size: int, n_heldout: int) -> None:
    if size < 16 or size % 8:
        raise InputError(f"size {size}: expected a multiple of 8, at least 16")
    for name, value in (("n_volumes", n_volumes), ("steps", steps), ("batch_size", batch_size),
                        ("n_heldout", n_heldout)):
        if value < 1:
            raise InputError(f"{name} {value}: expected an integer >= 1")


def record_path(out: str | os.PathLike) -> Path:
    """The JSON record beside checkpoint ``out`` (``X.pt`` -> ``X.json``)."""
    return Path(out).with_suffix(".json")


def train_extractor(out: str | os.PathLike, *, seed: int = DEFAULTS["seed"], size: int = DEFAULTS["size"],
                    n_volumes: int = DEFAULTS["n_volumes"], steps: int = DEFAULTS["steps"],
                    batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                    n_heldout: int = DEFAULTS["n_heldout"], warmup: int = DEFAULTS["warmup"],
                    progress: bool = True) -> dict[str, Any]:
    """Train the phantom-seg extractor; write ``out`` (checkpoint) and :func:`record_path` (JSON),
    both atomically; return the record.

    ``n_volumes`` training phantoms (volumes ``0 … n_volumes − 1`` of ``seed``) and ``n_heldout``
    held-out ones (the next indices) of side ``size``; ``steps`` steps of ``batch_size``.
    """
    _check_args(size, n_volumes, steps, batch_size, n_heldout)
    t0 = time.perf_counter()
    x, y = phantom_label_set(n_volumes + n_heldout, size, seed, progress=progress)
    t_data = time.perf_counter() - t0
    log.info("%d phantoms of %d³ with labels in %.1f s", len(x), size, t_data)
    model = build_model(seed)
    losses = _fit(model, x[:n_volumes], y[:n_volumes], steps=steps, batch_size=batch_size,
                  lr=lr, warmup=warmup, seed=seed, progress=progress)
    t_train = time.perf_counter() - t0 - t_data
    scores = segmentation_scores(model, x[n_volumes:], y[n_volumes:], batch_size)
    k = max(1, min(5, steps // 4))
    metrics = {"heldout": scores, "loss_first": float(np.mean(losses[:k])),
               "loss_last": float(np.mean(losses[-k:])), "losses": losses}
    meta = {"kind": PHANTOM_SEG, "depth": DEPTH, "seed": int(seed), "n_volumes": int(n_volumes),
            "n_heldout": int(n_heldout), "steps": int(steps), "batch_size": int(batch_size),
            "lr": float(lr), "size": int(size), "classes": list(LABEL_CLASSES),
            "label": PHANTOM_SEG_LABEL, "feature_dim": model.encoder.num_features,
            "input_range": [0.0, 1.0], "threads": torch.get_num_threads(), "metrics": metrics}
    out = Path(out)
    save_torch_atomic({"state_dict": model.encoder.state_dict(), "head": model.head.state_dict(),
                       "meta": meta}, out)
    record = {**meta, "checkpoint": out.name, "sha256": sha256_file(out),
              "seconds": {"data": t_data, "train": t_train, "total": time.perf_counter() - t0},
              "torch": torch.__version__, "code_version": code_version()}
    write_json_atomic(record_path(out), record)
    log.info("wrote %s (held-out Dice %s, accuracy %.3f) in %.1f s", out,
             {n: None if d is None else round(d, 3) for n, d in scores["dice"].items()},
             scores["accuracy"], record["seconds"]["total"])
    return record
