"""3D MS-SSIM and the pairwise MS-SSIM diversity of a set of volumes; pure functions, no I/O.

Wang, Simoncelli & Bovik, "Multiscale structural similarity for image quality assessment",
Asilomar 2003; conventions follow MONAI's ``compute_ms_ssim`` (see :func:`ms_ssim`). Its bootstrap
interval over volumes is :func:`eval.metrics.ms_ssim_bootstrap_ci`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MS_SSIM_WEIGHTS", "max_ms_ssim_scales", "ms_ssim", "pairwise_ms_ssim"]

#: Wang et al. (2003) scale weights, finest first (sum 1.0001, used unchanged at 5 scales as MONAI).
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ----------------------------------------------------------------------------------- MS-SSIM
def _gaussian_1d(kernel_size: int, sigma: float, monai_window: bool = False) -> torch.Tensor:
    """Normalised sampled Gaussian, centred (MONAI's ``_gaussian_kernel`` 1-D factor), float64.

    ``monai_window``: reproduce MONAI's window instead, which is normalised in float32 and takes its
    3-D outer product in float32, so it sums to 1 + ε (ε = 7.7e-8 at kernel 7, σ 1.5). With
    σ² = E[x²] - E[x]² the excess enters the variances as -ε μ², which c2 amplifies to ~1e-5 in the
    contrast-structure term cs (Wang et al. 2003) where flat regions of different intensity meet.
    The same float32 taps are used, scaled by one factor so that the window has MONAI's exact sum.
    """
    if not monai_window:
        x = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
        g = torch.exp(-0.5 * (x / sigma) ** 2)
        return g / g.sum()
    d = torch.arange(start=(1 - kernel_size) / 2, end=(1 + kernel_size) / 2, step=1,
                     dtype=torch.float32)
    g = torch.exp(-torch.pow(d / sigma, 2) / 2)
    g = g / g.sum()
    window_sum = ((g[:, None] * g[None, :])[:, :, None] * g).double().sum()
    g = g.double()
    return g * (window_sum / g.sum() ** 3) ** (1 / 3)


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over the last three axes, "valid" (no padding): (..., D, H, W) -> smaller.

    Implemented as shifted multiply-adds (the same correlation as a separable conv3d): in float64
    on CPU this is ~6× faster than ``conv3d``, which has no fast float64 kernel.
    """
    taps = [float(v) for v in g]
    k = len(taps)
    for dim in (-3, -2, -1):
        length = x.shape[dim] - k + 1
        out = x.narrow(dim, 0, length) * taps[0]
        for i in range(1, k):
            out.add_(x.narrow(dim, i, length), alpha=taps[i])
        x = out
    return x


def max_ms_ssim_scales(shape: Sequence[int], kernel_size: int = 7, max_scales: int = 5) -> int:
    """Largest s <= ``max_scales`` with every side ``n // 2**(s-1) >= kernel_size`` (0 if none).

    That is the condition for the "valid" Gaussian filter to fit at the coarsest scale of
    :func:`ms_ssim` (2× average pooling floors odd sides). 32³, kernel 7 -> 3; 16³ -> 2; 128³ -> 5.
    """
    s = 0
    while s < max_scales and all(int(n) // 2 ** s >= kernel_size for n in shape):
        s += 1
    return s


def _resolve_weights(scales: int, weights: Sequence[float] | None) -> torch.Tensor:
    if weights is None:
        if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
            raise ValueError(f"scales must be in 1..{len(MS_SSIM_WEIGHTS)}, got {scales}")
        w = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
        return w if scales == len(MS_SSIM_WEIGHTS) else w / w.sum()
    if len(weights) != scales:
        raise ValueError(f"{len(weights)} weights given for {scales} scales")
    return torch.tensor(list(weights), dtype=torch.float64)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, *, kernel_size: int = 7, sigma: float = 1.5,
            data_range: float = 1.0, scales: int = 5, weights: Sequence[float] | None = None,
            monai_window: bool = False) -> torch.Tensor:
    """3D MS-SSIM of pairs ``x[i]``, ``y[i]``: (N, C, D, H, W) each -> (N,) float64.

    At every scale: Gaussian window (``kernel_size``, ``sigma``; separable, no padding),
    c1 = (0.01 L)², c2 = (0.03 L)², L = ``data_range``; biased local (co)variances
    E[xy] - E[x]E[y]; cs = (2σxy + c2)/(σx² + σy² + c2) and ssim = l · cs, each averaged over
    positions (and channels) then clamped at 0 (ReLU); then 2× average pooling. Result:
    ∏_{j<s} cs_j^{w_j} · ssim_s^{w_s}. This is MONAI's ``compute_ms_ssim`` convention, computed in
    float64. ``weights=None`` uses :data:`MS_SSIM_WEIGHTS` (5 scales, unchanged), or its first
    ``scales`` entries renormalised to sum 1 for fewer scales (MONAI has no default for that: pass
    it these weights to compare). Differences from MONAI: its size check (``side // (s-1)² > k-1``)
    is a heuristic, here the exact requirement of :func:`max_ms_ssim_scales` is enforced; and its
    window sums to 1 + 7.7e-8 (float32), which moves values by up to ~2e-5 (``monai_window=True``
    uses that window and then agrees with MONAI run in float64 to ~1e-8; see :func:`_gaussian_1d`).
    """
    if x.shape != y.shape or x.ndim != 5:
        raise ValueError(f"x and y must both be (N, C, D, H, W); got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    w = _resolve_weights(scales, weights)
    fits = max_ms_ssim_scales(x.shape[2:], kernel_size, max_scales=scales)
    if fits < scales:
        need = kernel_size * 2 ** (scales - 1)
        raise ValueError(f"volume spatial shape {tuple(x.shape[2:])} too small for {scales} "
                         f"MS-SSIM scales with kernel {kernel_size}: every side must be >= {need} "
                         f"(at most {fits} scale(s) fit)")
    x, y = x.to(torch.float64), y.to(torch.float64)
    g = _gaussian_1d(kernel_size, sigma, monai_window).to(x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    n, c = x.shape[:2]
    values = []
    for j in range(scales):
        stats = _filter_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), g)
        mx, my, mxx, myy, mxy = stats.split(c, dim=1)
        vx, vy, cov = mxx - mx * mx, myy - my * my, mxy - mx * my
        cs_map = (2 * cov + c2) / (vx + vy + c2)
        if j < scales - 1:
            values.append(torch.relu(cs_map.reshape(n, -1).mean(1)))
            x, y = F.avg_pool3d(x, 2), F.avg_pool3d(y, 2)
        else:
            lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
            values.append(torch.relu((lum * cs_map).reshape(n, -1).mean(1)))
    return torch.prod(torch.stack(values) ** w.to(x.device).view(-1, 1), dim=0)


def _scale_stats(v: torch.Tensor, g: torch.Tensor, scales: int) -> list[tuple[torch.Tensor, ...]]:
    """Per-scale ``(volume, local mean, local variance)`` of volumes (B, C, D, H, W), float64.

    The per-volume half of :func:`ms_ssim`: the local mean E[x] and biased variance E[x²] - E[x]²
    under the Gaussian window at each scale, 2× average pooling between scales.
    """
    out = []
    for j in range(scales):
        mu = _filter_valid(v, g)
        var = _filter_valid(v * v, g) - mu * mu
        out.append((v, mu, var))
        if j < scales - 1:
            v = F.avg_pool3d(v, 2)
    return out


def _cross_ms_ssim(sx: list[tuple[torch.Tensor, ...]], sy: list[tuple[torch.Tensor, ...]],
                   g: torch.Tensor, w: torch.Tensor, c1: float, c2: float) -> torch.Tensor:
    """MS-SSIM (B,) from per-scale statistics of B volume pairs: only E[xy] is filtered here."""
    values = []
    last = len(sx) - 1
    for j, ((x, mx, vx), (y, my, vy)) in enumerate(zip(sx, sy, strict=True)):
        cov = _filter_valid(x * y, g) - mx * my
        cs_map = (2 * cov + c2) / (vx + vy + c2)
        if j < last:
            values.append(torch.relu(cs_map.reshape(x.shape[0], -1).mean(1)))
        else:
            lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
            values.append(torch.relu((lum * cs_map).reshape(x.shape[0], -1).mean(1)))
    return torch.prod(torch.stack(values) ** w.to(values[0].device).view(-1, 1), dim=0)


def _stats_bytes(shape: Sequence[int], kernel_size: int, scales: int) -> int:
    """Bytes of :func:`_scale_stats` for one single-channel volume of spatial ``shape``."""
    total = 0
    for j in range(scales):
        side = [int(n) // 2 ** j for n in shape]
        valid = [max(n - kernel_size + 1, 0) for n in side]
        total += 8 * (int(np.prod(side)) + 2 * int(np.prod(valid)))
    return total


def _pairwise_scales(volumes: torch.Tensor, kernel_size: int, scales: int | None,
                     batch_size: int) -> int:
    """Check the arguments of :func:`pairwise_ms_ssim`; the number of scales to use.

    ``volumes`` is (N, C, D, H, W) with N >= 2; ``scales=None`` resolves to
    :func:`max_ms_ssim_scales` of the spatial shape, which must fit at least one scale.
    """
    if volumes.ndim != 5:
        raise ValueError(f"volumes must be (N, C, D, H, W), got {tuple(volumes.shape)}")
    n = volumes.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 volumes for pairwise MS-SSIM, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scales is None:
        scales = max_ms_ssim_scales(volumes.shape[2:], kernel_size)
        if scales == 0:
            raise ValueError(f"volume shape {tuple(volumes.shape[2:])} is smaller than the "
                             f"MS-SSIM kernel {kernel_size}")
    fits = max_ms_ssim_scales(volumes.shape[2:], kernel_size, max_scales=scales)
    if fits < scales:
        raise ValueError(f"volume spatial shape {tuple(volumes.shape[2:])} too small for {scales} "
                         f"MS-SSIM scales with kernel {kernel_size} (at most {fits} fit)")
    return scales


def _pick_pairs(n: int, max_pairs: int | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The pairs to evaluate: ``(ii, jj, total)``, ii < jj int64 (k,), total = N(N-1)/2.

    All pairs in row-major upper-triangle order, or ``max_pairs`` of them drawn without
    replacement with ``generator`` (one ``randperm``), sorted back into that order.
    """
    ii, jj = torch.triu_indices(n, n, offset=1)
    total = ii.numel()
    if max_pairs is not None and max_pairs < total:
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        pick = torch.randperm(total, generator=generator)[:max_pairs].sort().values
        ii, jj = ii[pick], jj[pick]
    return ii, jj, total


def _blocked_pair_values(volumes: torch.Tensor, ii: torch.Tensor, jj: torch.Tensor,
                         g: torch.Tensor, w: torch.Tensor, c1: float, c2: float, scales: int,
                         block: int, batch_size: int) -> torch.Tensor:
    """MS-SSIM (k,) float64 on CPU of the pairs ``(ii[t], jj[t])`` of ``volumes`` (N, C, D, H, W).

    Volumes are taken ``block`` at a time: the statistics of row block a are computed once,
    those of each later column block b once per row block; pairs within a block pair are
    evaluated ``batch_size`` at a time.
    """
    n = volumes.shape[0]
    n_blocks = (n + block - 1) // block

    def stats(lo: int) -> list[tuple[torch.Tensor, ...]]:
        return _scale_stats(volumes[lo:lo + block].to(torch.float64), g, scales)

    out = torch.empty(ii.numel(), dtype=torch.float64)
    bi, bj = ii // block, jj // block
    for a in range(0, n_blocks):
        in_row = bi == a
        if not bool(in_row.any()):
            continue
        sa = stats(a * block)
        for b in range(a, n_blocks):
            sel = torch.nonzero(in_row & (bj == b)).flatten()
            if sel.numel() == 0:
                continue
            sb = sa if b == a else stats(b * block)
            for start in range(0, sel.numel(), batch_size):
                idx = sel[start:start + batch_size]
                la = (ii[idx] - a * block).to(volumes.device)
                lb = (jj[idx] - b * block).to(volumes.device)
                sx = [tuple(t.index_select(0, la) for t in level) for level in sa]
                sy = [tuple(t.index_select(0, lb) for t in level) for level in sb]
                out[idx] = _cross_ms_ssim(sx, sy, g, w, c1, c2).cpu()
    return out


def pairwise_ms_ssim(volumes: torch.Tensor, *, kernel_size: int = 7, sigma: float = 1.5,
                     data_range: float = 1.0, scales: int | None = None,
                     max_pairs: int | None = None, generator: torch.Generator | None = None,
                     batch_size: int = 8, memory_budget_gb: float = 4.0,
                     return_values: bool = False, monai_window: bool = False) -> dict:
    """Mean :func:`ms_ssim` over the N(N-1)/2 unordered pairs of ``volumes`` (N, C, D, H, W).

    The usual diversity score of a generative model (lower = more diverse; Friedrich et al. 2024
    use 3D, kernel 7, data range 1, all pairs). Each volume's per-scale local means and variances
    are computed once (:func:`_scale_stats`); per pair only the cross term E[xy] is filtered, so
    a pair costs one separable filter per scale instead of five. Volumes are handled in blocks
    whose statistics fit ``memory_budget_gb`` (a block's statistics are recomputed for each later
    row block when N does not fit at once). Values equal :func:`ms_ssim` pair by pair (also with
    ``monai_window``).

    ``scales=None`` uses :func:`max_ms_ssim_scales` of the spatial shape. ``max_pairs``
    evaluates a uniformly random subset of that many distinct pairs (drawn with ``generator``):
    an unbiased estimate of the all-pairs mean, with standard error
    ``se = s / sqrt(k) · sqrt(1 - k / K)`` (s: sample std, ddof=1, of the k pair values; K: all
    pairs; finite-population correction, so se = 0 when every pair is used).
    Pairs are processed ``batch_size`` at a time.

    Returns ``{"mean", "std" (ddof=0, over pairs), "se", "n_pairs", "n_pairs_total", "scales",
    "kernel_size"}``, plus ``"values"`` (k,) float64 and ``"pairs"`` (k, 2) int64 numpy arrays
    with ``return_values`` (used by :func:`ms_ssim_bootstrap_ci`).
    """
    scales = _pairwise_scales(volumes, kernel_size, scales, batch_size)
    n = volumes.shape[0]
    w = _resolve_weights(scales, None)
    ii, jj, total = _pick_pairs(n, max_pairs, generator)
    g = _gaussian_1d(kernel_size, sigma, monai_window).to(volumes.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_volume = _stats_bytes(volumes.shape[2:], kernel_size, scales) * volumes.shape[1]
    block = int(max(1, min(n, memory_budget_gb * 2 ** 30 // (2 * per_volume))))
    out = _blocked_pair_values(volumes, ii, jj, g, w, c1, c2, scales, block, batch_size)
    k = out.numel()
    se = float(out.std(unbiased=True)) / math.sqrt(k) * math.sqrt(1.0 - k / total) if k > 1 else 0.0
    res = {"mean": float(out.mean()), "std": float(out.std(unbiased=False)), "se": se,
           "n_pairs": int(k), "n_pairs_total": int(total), "scales": int(scales),
           "kernel_size": int(kernel_size)}
    if return_values:
        res["values"] = out.numpy()
        res["pairs"] = torch.stack([ii, jj], dim=1).numpy()
    return res
