"""MedicalNet 3D ResNet feature extractor for 3D FID (its checkpoints: :mod:`eval.medicalnet_weights`).

Reference: Chen, Ma & Zheng, "Med3D: Transfer Learning for 3D Medical Image Analysis",
arXiv 1904.00625 (Tencent MedicalNet, ``models/resnet.py``). The network here is the upstream
encoder, layer for layer and with the same parameter names, so the released checkpoints load with
``strict=True``:

- ``conv1``: Conv3d(1, 64, 7, stride 2, padding 3, no bias) + ``bn1`` + ReLU;
  ``maxpool``: MaxPool3d(3, stride 2, padding 1);
- ``layer1`` stride 1; ``layer2`` stride 2; ``layer3`` stride 1, dilation 2;
  ``layer4`` stride 1, dilation 4 (dilated convolutions keep 1/8 of the input resolution);
- BasicBlock for depths 10/18/34, Bottleneck (expansion 4) for 50/101/152/200;
- shortcut "B" (``downsample.0`` 1×1×1 conv + ``downsample.1`` BN) for 10/50/101/152/200, shortcut
  "A" (stride-subsampled identity, zero-padded channels, no parameters) for 18/34.

The upstream segmentation head (``conv_seg``) is replaced by global average pooling, as in the WDM
authors' FID code: the module maps ``(N, 1, D, H, W) -> (N, F)`` with F = 512 (BasicBlock) or
2048 (Bottleneck). MONAI's ``ResNet`` loads these checkpoints too but has no dilation, so its
features differ: do not substitute it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eval.medicalnet_weights import MEDICALNET_WEIGHTS, read_medicalnet_checkpoint
from wdm.io import InputError

__all__ = [
    "MedicalNetResNet",
    "medicalnet_resnet",
    "load_medicalnet_weights",
    "extract_features",
    "feature_dim",
]

# ----------------------------------------------------------------------------------- network
def _conv3x3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


class _ShortcutA(nn.Module):
    """Parameter-free shortcut "A": ``avg_pool3d(kernel 1, stride)`` then zero channels appended.

    ``(N, C, D, H, W) -> (N, planes, ceil(D/s), ceil(H/s), ceil(W/s))``, as upstream
    ``downsample_basic_block``.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        pad = out.new_zeros(out.shape[0], self.planes - out.shape[1], *out.shape[2:])
        return torch.cat([out, pad], dim=1)


class BasicBlock(nn.Module):
    """Two 3×3×3 convolutions with BN; ``expansion = 1``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    """1×1×1 -> 3×3×3 (stride, dilation) -> 1×1×1 with BN; ``expansion = 4``."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3x3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


#: depth -> (block, blocks per stage, shortcut type), from MedicalNet ``models/resnet.py`` + README.
_ARCH: dict[int, tuple[type[nn.Module], tuple[int, int, int, int], str]] = {
    10: (BasicBlock, (1, 1, 1, 1), "B"),
    18: (BasicBlock, (2, 2, 2, 2), "A"),
    34: (BasicBlock, (3, 4, 6, 3), "A"),
    50: (Bottleneck, (3, 4, 6, 3), "B"),
    101: (Bottleneck, (3, 4, 23, 3), "B"),
    152: (Bottleneck, (3, 8, 36, 3), "B"),
    200: (Bottleneck, (3, 24, 36, 3), "B"),
}


def feature_dim(depth: int) -> int:
    """Feature width F of :func:`medicalnet_resnet` at ``depth`` (512 or 2048)."""
    _check_depth(depth)
    return 512 * _ARCH[depth][0].expansion  # type: ignore[attr-defined]


def _check_depth(depth: int) -> None:
    if depth not in _ARCH:
        raise InputError(f"unsupported MedicalNet depth {depth!r}; allowed: {sorted(_ARCH)}")


class MedicalNetResNet(nn.Module):
    """MedicalNet 3D ResNet encoder + global average pooling: ``(N, 1, D, H, W) -> (N, F)``."""

    def __init__(self, depth: int, shortcut_type: str | None = None) -> None:
        super().__init__()
        _check_depth(depth)
        block, layers, default_shortcut = _ARCH[depth]
        self.depth = depth
        self.shortcut_type = shortcut_type or default_shortcut
        if self.shortcut_type not in ("A", "B"):
            raise InputError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], dilation=2)
        self.layer4 = self._make_layer(block, 512, layers[3], dilation=4)
        self.num_features = 512 * block.expansion  # type: ignore[attr-defined]

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1,
                    dilation: int = 1) -> nn.Sequential:
        expansion: int = block.expansion  # type: ignore[attr-defined]
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * expansion:
            if self.shortcut_type == "A":
                downsample = _ShortcutA(planes * expansion, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self.inplanes, planes * expansion, kernel_size=1, stride=stride,
                              bias=False),
                    nn.BatchNorm3d(planes * expansion))
        layers = [block(self.inplanes, planes, stride=stride, dilation=dilation,
                        downsample=downsample)]
        self.inplanes = planes * expansion
        layers += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate maps of ``x`` (B, 1, D, H, W): the stem (after ReLU), ``layer1``,
        ``layer2`` and ``layer3`` outputs (for perceptual losses, LPIPS-style)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        h1 = self.layer1(self.maxpool(stem))
        h2 = self.layer2(h1)
        return [stem, h1, h2, self.layer3(h2)]

    def last_map(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layer4`` map (N, F, D/8, H/8, W/8) of ``x`` (N, 1, D, H, W) (stride 8: the stem
        and max-pool halve twice, layer2 once; layer3 and layer4 are dilated)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (N, 1, D, H, W) -> features (N, F), global average over the layer4 grid."""
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"expected input (N, 1, D, H, W), got {tuple(x.shape)}")
        return self.last_map(x).mean(dim=(2, 3, 4))


def medicalnet_resnet(depth: int, weights: str | os.PathLike | None = None, *, seed: int = 0,
                      expected_sha256: str | None = None) -> MedicalNetResNet:
    """Build the MedicalNet ResNet of ``depth`` in eval mode, untrained or from a checkpoint.

    ``weights=None``: MedicalNet's own initialisation (Kaiming-normal, fan_out, for convolutions;
    BN weight 1, bias 0) drawn from a generator seeded with ``seed``; the global RNG state is left
    unchanged. Otherwise ``weights`` is a checkpoint path loaded strictly with
    :func:`load_medicalnet_weights`; its SHA-256 is checked against ``expected_sha256`` or, when
    that is None and the file name is a released checkpoint, against :data:`MEDICALNET_WEIGHTS`.
    """
    _check_depth(depth)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MedicalNetResNet(depth)
        gen = torch.Generator().manual_seed(seed)
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", generator=gen)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    if weights is not None:
        if expected_sha256 is None:
            stem = Path(weights).name.removesuffix(".pth")
            expected_sha256 = MEDICALNET_WEIGHTS.get(stem, {}).get("sha256")
        load_medicalnet_weights(model, weights, expected_sha256=expected_sha256)
    return model.eval()


# ----------------------------------------------------------------------------- checkpoints
def load_medicalnet_weights(model: nn.Module, path: str | os.PathLike, *,
                            expected_sha256: str | None = None) -> str:
    """Load a MedicalNet checkpoint into ``model`` with ``strict=True``; return its SHA-256.

    Missing, unexpected or mis-shaped keys raise :class:`InputError` naming the file and the keys.
    """
    sd, sha256 = read_medicalnet_checkpoint(path, expected_sha256=expected_sha256)
    what = (f"{path}: checkpoint does not match MedicalNet resnet{getattr(model, 'depth', '?')} "
            f"(shortcut {getattr(model, 'shortcut_type', '?')})")
    expected = model.state_dict().keys()
    # BN ``num_batches_tracked`` buffers are absent from PyTorch 0.4-era files; torch fills them.
    missing = sorted(k for k in expected - sd.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(sd.keys() - expected)
    if missing or unexpected:
        raise InputError(f"{what}: missing keys {_short(missing)}; unexpected keys "
                         f"{_short(unexpected)}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise InputError(f"{what}: {' '.join(str(exc).split())}") from exc
    return sha256


def _short(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return "[" + ", ".join(keys[:limit]) + "]" + more


# -------------------------------------------------------------------------------- features
def extract_features(model: nn.Module, volumes: Iterable[np.ndarray | torch.Tensor], *,
                     batch_size: int = 4, device: str | torch.device = "cpu",
                     input_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Features ``(N, F)`` float64 of volumes given in [0, 1] with shape (D, H, W).

    Each volume is mapped linearly from [0, 1] to ``input_range`` (``(0, 1)`` for the WDM protocol,
    ``(-1, 1)`` for HA-GAN's), batched as ``(B, 1, D, H, W)`` float32 and passed through ``model``
    in inference mode. ``volumes`` may be a generator (volumes are then loaded lazily).
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lo, hi = float(input_range[0]), float(input_range[1])
    model = model.to(device).eval()
    total = len(volumes) if hasattr(volumes, "__len__") else None  # type: ignore[arg-type]
    feats: list[np.ndarray] = []
    batch: list[torch.Tensor] = []

    def flush() -> None:
        x = torch.stack(batch).unsqueeze(1).to(device)
        feats.append(model(x * (hi - lo) + lo).double().cpu().numpy())
        batch.clear()

    with torch.inference_mode():
        for vol in tqdm(volumes, total=total, desc="features", disable=None, leave=False):
            t = torch.as_tensor(vol, dtype=torch.float32)
            if t.ndim != 3:
                raise ValueError(f"expected a (D, H, W) volume, got shape {tuple(t.shape)}")
            if batch and t.shape != batch[0].shape:
                raise ValueError(f"volume shapes differ: {tuple(t.shape)} vs "
                                 f"{tuple(batch[0].shape)}")
            batch.append(t)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    if not feats:
        raise ValueError("no volumes given")
    return np.concatenate(feats, axis=0)
