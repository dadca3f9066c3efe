"""Controlled defects of 3D volumes and of sets of volumes, for the metric sanity suite.

Each corruption is a pure function with a ``strength`` (0 = the identity) and an explicit
``numpy.random.Generator``; volumes are (D, H, W) in [0, 1], every output is clipped to [0, 1]
and float64. Two kinds:

- ``"voxel"``: ``fn(volume (D, H, W), strength, rng) -> (D, H, W)``, applied to every volume of a
  set independently (noise, blur, intensity gamma, elastic deformation, slab seams, checkerboard);
- ``"set"``: ``fn(volumes (N, D, H, W), strength, rng, train (M, D, H, W)) -> (N, D, H, W)``,
  acting on the set as a whole (mode collapse, memorisation of training volumes).

The defects are those 3D generators actually show: blur and noise of under-trained diffusion
models, elastic anatomy errors, intensity drift between the slabs of slice- / patch-wise generators
(e.g. 2.5D LDMs, HA-GAN's sub-volumes), checkerboards of transposed convolutions (Odena, Dumoulin &
Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016), mode collapse and training-set
copies (Akbar et al. 2023). Metric blind spots of this kind are shown for FID by Kynkäänniemi et
al., "The Role of ImageNet Classes in Fréchet Inception Distance", ICLR 2023, and Jayasumana et al.,
"Rethinking FID: Towards a Better Evaluation Metric for Image Generation", CVPR 2024.

A new corruption is one decorated function: ``@register_corruption("name", strengths=(...),
kind="voxel", unit="...")``; :data:`CORRUPTIONS` maps names to :class:`Corruption` entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wdm.io import InputError

__all__ = ["KINDS", "Corruption", "CORRUPTIONS", "register_corruption", "get_corruption",
           "strength_grid", "corrupt_volume", "gaussian_noise", "gaussian_blur", "gamma",
           "elastic", "slab_seams", "checkerboard", "mode_collapse", "memorise_train",
           "slab_bounds"]

KINDS = ("voxel", "set")


@dataclass(frozen=True)
class Corruption:
    """A registry entry: ``fn`` (signature by ``kind``), default ``strengths`` (> 0, ascending), and
    the ``unit`` a strength is measured in (for the figure's axis)."""

    name: str
    fn: Callable[..., np.ndarray]
    strengths: tuple[float, ...]
    kind: str
    unit: str


#: name -> :class:`Corruption`, in registration order (the figure's column order).
CORRUPTIONS: dict[str, Corruption] = {}


def register_corruption(name: str, *, strengths: Sequence[float], kind: str,
                        unit: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Decorator adding ``fn`` to :data:`CORRUPTIONS` under ``name`` (an InputError on a clash)."""
    if kind not in KINDS:
        raise InputError(f"corruption {name!r}: kind {kind!r}, allowed: {list(KINDS)}")
    grid = tuple(float(s) for s in strengths)
    if not grid or any(s <= 0 for s in grid) or list(grid) != sorted(grid):
        raise InputError(f"corruption {name!r}: strengths must be > 0 and ascending, got {grid}")

    def add(fn: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in CORRUPTIONS:
            raise InputError(f"corruption {name!r} is registered twice")
        CORRUPTIONS[name] = Corruption(name, fn, grid, kind, unit)
        return fn

    return add


def get_corruption(name: str) -> Corruption:
    """The registry entry of ``name``; an InputError listing the allowed names otherwise."""
    if name not in CORRUPTIONS:
        raise InputError(f"unknown corruption {name!r}; allowed: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[name]


def strength_grid(c: Corruption, n: int | None = None) -> np.ndarray:
    """Strengths (n + 1,) float64 from 0 (clean) up: the entry's own for ``n`` None or its length,
    else ``n`` evenly spaced values from max / n to the entry's largest strength."""
    if n is not None and n < 1:
        raise InputError(f"strengths must be >= 1, got {n}")
    grid = np.asarray(c.strengths) if n in (None, len(c.strengths)) else \
        np.linspace(c.strengths[-1] / n, c.strengths[-1], n)
    return np.concatenate([[0.0], grid])


def corrupt_volume(c: Corruption, volume: np.ndarray, strength: float,
                   rng: np.random.Generator) -> np.ndarray:
    """One voxel-kind corruption of ``volume`` (D, H, W): float64, clipped to [0, 1]."""
    v = np.asarray(volume, np.float64)
    if v.ndim != 3:
        raise InputError(f"a volume must be (D, H, W), got shape {v.shape}")
    return np.clip(c.fn(v, float(strength), rng), 0.0, 1.0)


# ------------------------------------------------------------------------ voxel corruptions
@register_corruption("noise", strengths=(0.02, 0.05, 0.1, 0.2), kind="voxel", unit="σ")
def gaussian_noise(volume: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Additive i.i.d. Gaussian noise, ``strength`` = its σ in intensity units: (D, H, W) -> same."""
    return np.clip(volume + strength * rng.standard_normal(volume.shape), 0.0, 1.0)


@register_corruption("blur", strengths=(0.5, 1.0, 1.5, 2.0), kind="voxel", unit="σ (voxels)")
def gaussian_blur(volume: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Isotropic Gaussian blur, ``strength`` = σ in voxels (edges extended): (D, H, W) -> same."""
    if strength == 0:
        return volume.copy()
    return np.clip(ndimage.gaussian_filter(volume, strength, mode="nearest"), 0.0, 1.0)


@register_corruption("gamma", strengths=(0.25, 0.5, 1.0, 2.0), kind="voxel", unit="γ - 1")
def gamma(volume: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Intensity gamma (a contrast shift that keeps 0 and 1): ``x ** (1 + strength)``, (D, H, W)."""
    return np.clip(volume, 0.0, 1.0) ** (1.0 + strength)


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, smoothness: float) -> np.ndarray:
    """Displacement direction field (3, D, H, W): white noise Gaussian-filtered with σ =
    ``smoothness`` × the smallest side, scaled so that its largest |component| is 1."""
    sigma = max(1.0, smoothness * min(shape))
    field = np.stack([ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
                      for _ in range(3)])
    return field / max(float(np.abs(field).max()), 1e-12)


@register_corruption("elastic", strengths=(0.5, 1.0, 2.0, 3.0), kind="voxel",
                     unit="max displacement (voxels)")
def elastic(volume: np.ndarray, strength: float, rng: np.random.Generator, *,
            smoothness: float = 0.125) -> np.ndarray:
    """Smooth random elastic deformation of the anatomy (Simard et al. 2003, in 3D).

    ``volume`` (D, H, W) is resampled (trilinear, ``scipy.ndimage.map_coordinates``, edges
    extended) at x + ``strength`` · u(x), u a smooth random field (:func:`_smooth_field`) whose
    largest component is 1: ``strength`` = the largest displacement in voxels. The field depends on
    ``rng`` only, so with the same generator state the strengths differ by amplitude alone.
    """
    u = _smooth_field(volume.shape, rng, smoothness)
    if strength == 0:
        return volume.copy()
    grid = np.indices(volume.shape, dtype=np.float64)
    return np.clip(ndimage.map_coordinates(volume, grid + strength * u, order=1, mode="nearest"), 0, 1)


def slab_bounds(length: int, n_slabs: int) -> list[int]:
    """Start indices of the slabs after the first (the seam positions) of ``np.array_split``."""
    return list(np.cumsum([len(a) for a in np.array_split(np.arange(length), n_slabs)])[:-1])


@register_corruption("slab-seams", strengths=(0.05, 0.1, 0.2, 0.4), kind="voxel",
                     unit="relative gain")
def slab_seams(volume: np.ndarray, strength: float, rng: np.random.Generator, *,
               n_slabs: int = 4, axis: int = 0) -> np.ndarray:
    """Intensity seams of a slab-wise generator: (D, H, W) split into ``n_slabs`` slabs along
    ``axis`` (``np.array_split``), slab k multiplied by ``1 + strength · u_k``, u_k ~ U(-1, 1).

    Within a slab the volume is scaled smoothly (background stays 0), so the only new
    discontinuities are at the seams (:func:`slab_bounds`), as between the independently
    generated slabs of slice- or patch-wise models.
    """
    u = rng.uniform(-1.0, 1.0, n_slabs)
    gains = np.concatenate([np.full(len(a), 1.0 + strength * u[k]) for k, a in
                            enumerate(np.array_split(np.arange(volume.shape[axis]), n_slabs))])
    shape = [1, 1, 1]
    shape[axis] = -1
    return np.clip(volume * gains.reshape(shape), 0.0, 1.0)


@register_corruption("checkerboard", strengths=(0.05, 0.1, 0.2, 0.4), kind="voxel",
                     unit="relative ε")
def checkerboard(volume: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """The period-2 checkerboard of a stride-2 transposed convolution (Odena et al. 2016):
    ``x · (1 + strength · (-1)^(i+j+k))`` on voxel (i, j, k) of (D, H, W) (background stays 0)."""
    sign = 1.0 - 2.0 * (np.indices(volume.shape).sum(0) % 2)
    return np.clip(volume * (1.0 + strength * sign), 0.0, 1.0)


# -------------------------------------------------------------------------- set corruptions
def _count(fraction: float, n: int) -> int:
    if not 0 <= fraction <= 1:
        raise InputError(f"a set corruption's strength is a fraction in [0, 1], got {fraction}")
    return int(round(fraction * n))


@register_corruption("mode-collapse", strengths=(0.25, 0.5, 0.75, 1.0), kind="set",
                     unit="fraction of copies")
def mode_collapse(volumes: np.ndarray, strength: float, rng: np.random.Generator,
                  train: np.ndarray | None = None) -> np.ndarray:
    """Mode collapse: k = round(``strength`` · N) positions of ``volumes`` (N, D, H, W), drawn
    without replacement, all set to the volume at one of them (drawn too): exactly k identical
    volumes, the other N - k untouched. ``train`` is unused."""
    out = np.array(volumes, np.float64)
    k = _count(strength, len(out))
    if k == 0:
        return out
    pos = rng.choice(len(out), k, replace=False)
    out[pos] = out[pos[rng.integers(k)]]
    return out


@register_corruption("memorisation", strengths=(0.25, 0.5, 0.75, 1.0), kind="set",
                     unit="fraction of training copies")
def memorise_train(volumes: np.ndarray, strength: float, rng: np.random.Generator,
                   train: np.ndarray | None = None) -> np.ndarray:
    """Memorisation: k = round(``strength`` · N) positions of ``volumes`` (N, D, H, W) replaced by
    k distinct training volumes of ``train`` (M, D, H, W), both drawn without replacement."""
    out = np.array(volumes, np.float64)
    k = _count(strength, len(out))
    if k == 0:
        return out
    if train is None or len(train) < k:
        raise InputError(f"memorisation at {strength} needs {k} training volumes, got "
                         f"{0 if train is None else len(train)}")
    out[rng.choice(len(out), k, replace=False)] = np.asarray(train, np.float64)[
        rng.choice(len(train), k, replace=False)]
    return out
