"""The embedded default data set ``phantom-brain``: random brain-like T1 volumes, built offline.

The anatomy is real: nilearn ships the MNI152 2009c symmetric templates (T1 and grey/white-matter
probability maps at 1 mm, shape (197, 233, 189), skull-stripped) inside its wheel. We only locate
those files and read them with nibabel; nilearn's dataset API is never imported.

Each phantom is the template seen through a random acquisition:

1. a smooth random deformation (cubic B-spline-like upsampling of a coarse Gaussian displacement
   grid, a few mm amplitude) composed with a small global affine (rotation ≤ 8°, scale ±6 %);
2. per-tissue contrast (``t1 · (1 + c_gm·gm + c_wm·wm)``) and a gamma curve;
3. with probability ``lesion_prob`` one or two tumour-like ellipsoidal lesions inside the brain
   (hyper- or hypointense core, irregular outline, a smooth rim of the opposite sign);
4. a smooth multiplicative bias field, block-averaging to the output grid, a little Rician-free
   Gaussian noise inside the brain, clipping to the 99.9th brain percentile and scaling to [0, 1].

Background stays exactly 0, as in a skull-stripped BraTS T1. Array axes follow the template's
voxel axes (x = left→right, y = posterior→anterior, z = inferior→superior); the saved affine is
isotropic and centred on the origin. Sides (:data:`ALLOWED_SIZES`) up to 64 are sampled on a
super-sampled working grid and block-averaged; from 128 on the templates' 128³ working grid is
interpolated (linearly) onto the output, so 256³ and 512³ phantoms, for the multi-level wavelets,
are smooth at their own voxel scale (512³: ~72 s and ~7.6 GB per volume on a 2-core machine).
The data set folder is written by :mod:`wdm.data.phantom_dataset`.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from wdm.io import InputError, sha256_file

__all__ = [
    "ALLOWED_SIZES",
    "DATASET_NAME",
    "LABEL_CLASSES",
    "TEMPLATE_FILES",
    "load_mni_templates",
    "make_phantom",
    "make_phantom_labelled",
    "template_sources",
]

log = logging.getLogger(__name__)

DATASET_NAME = "phantom-brain"
ALLOWED_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256, 512)
TEMPLATE_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
NILEARN_REQUIREMENT = "nilearn<0.14"
#: Largest working grid on which the templates are kept (voxels per side).
MAX_WORK_GRID = 128
#: The cube around the brain is this much wider than the brain's longest side, so that rotation,
#: scaling and deformation never push the brain out of the field of view.
CUBE_MARGIN = 1.15
#: Label map values of :func:`make_phantom_labelled` (index = value).
LABEL_CLASSES: tuple[str, ...] = ("background", "csf/other brain", "grey matter", "white matter",
                                  "lesion")


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------
def _template_dir() -> Path:
    """The folder inside the installed nilearn package that holds the MNI152 templates."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(
            f"phantom-brain needs the MNI152 templates shipped with nilearn, which is not "
            f"installed: pip install '{NILEARN_REQUIREMENT}'")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    missing = [name for name in TEMPLATE_FILES.values() if not (folder / name).is_file()]
    if missing:
        raise InputError(
            f"{folder}: the installed nilearn lacks the MNI152 template files {missing}; "
            f"reinstall it: pip install --force-reinstall '{NILEARN_REQUIREMENT}'")
    return folder


@functools.lru_cache(maxsize=1)
def template_sources() -> dict[str, str]:
    """``{template file name: sha256}`` of the three nilearn template files used."""
    folder = _template_dir()
    return {name: sha256_file(folder / name) for name in TEMPLATE_FILES.values()}


def work_grid(size_hint: int) -> int:
    """Working grid side for an output of ``size_hint`` voxels: 2 × size, capped at 128."""
    if size_hint < 1:
        raise InputError(f"size must be a positive integer, got {size_hint}")
    return int(min(2 * size_hint, MAX_WORK_GRID))


def load_mni_templates(size_hint: int) -> dict[str, Any]:
    """The MNI152 templates cropped to the brain, padded to a cube and resampled to a work grid.

    Args:
        size_hint: the output side the templates will serve; the work grid is
            ``N = min(2 · size_hint, 128)``.

    Returns:
        A new dict (the arrays are shared, cached and read-only) with
        ``t1``, ``gm``, ``wm`` (float32 (N, N, N), values in [0, 1]), ``mask`` (float32 (N, N, N),
        1 inside the brain, soft at the edge), ``grid`` (N), ``extent_mm`` (side of the cube in mm)
        and ``spacing_mm`` (extent / N).
    """
    return dict(_load_templates(work_grid(int(size_hint))))


@functools.lru_cache(maxsize=4)
def _load_templates(grid: int) -> dict[str, Any]:
    import nibabel as nib

    t0 = time.perf_counter()
    folder = _template_dir()
    raw: dict[str, np.ndarray] = {}
    for key, name in TEMPLATE_FILES.items():
        try:
            img = nib.load(str(folder / name))
            raw[key] = np.asarray(img.dataobj, dtype=np.float32) / 255.0
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise InputError(f"{folder / name}: unreadable template ({exc})") from exc
        if not np.allclose(np.abs(np.diag(img.affine)[:3]), 1.0):
            raise InputError(f"{folder / name}: expected a 1 mm template, got {img.affine}")
    mask = ndi.binary_fill_holes(raw["t1"] > 0).astype(np.float32)
    raw["mask"] = mask

    # Cube of side L (mm = voxels) centred on the brain's bounding box.
    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(0), idx.max(0) + 1
    side = int(np.ceil((hi - lo).max() * CUBE_MARGIN))
    start = (lo + hi) // 2 - side // 2
    scale = side / grid  # mm per work voxel
    sigma = max(0.0, (scale - 1.0) / 2.0)  # anti-aliasing before down-sampling
    out: dict[str, Any] = {}
    for key, vol in raw.items():
        cube = np.zeros((side,) * 3, np.float32)
        src = tuple(slice(max(s, 0), min(s + side, n))
                    for s, n in zip(start, vol.shape, strict=True))
        dst = tuple(slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start, strict=True))
        cube[dst] = vol[src]
        if sigma > 0:
            cube = ndi.gaussian_filter(cube, sigma, mode="constant")
        # Voxel centres: work voxel j covers [j, j+1)·scale in cube voxels.
        res = ndi.affine_transform(cube, np.full(3, scale), offset=0.5 * scale - 0.5,
                                   output_shape=(grid,) * 3, order=1, mode="constant")
        res = np.clip(res, 0.0, 1.0).astype(np.float32)
        res.setflags(write=False)
        out[key] = res
    out.update(grid=grid, extent_mm=float(side), spacing_mm=float(side) / grid)
    log.debug("MNI templates on a %d³ grid (cube %d mm) in %.2f s", grid, side,
              time.perf_counter() - t0)
    return out


# --------------------------------------------------------------------------------------------
# One phantom
# --------------------------------------------------------------------------------------------
def _smooth_field(rng: np.random.Generator, n_ctrl: int, shape: tuple[int, ...],
                  channels: int = 1) -> np.ndarray:
    """Smooth random field: iid N(0, 1) control grid upsampled by separable cubic interpolation.

    Returns float64 ``(channels, *shape)``; the upsampling is a tensor product of 1D cubic
    interpolation matrices, so it costs a few matrix products instead of a 3D spline zoom.
    """
    ctrl = rng.standard_normal((channels,) + (n_ctrl,) * len(shape))
    field = ctrl
    for axis, n in enumerate(shape):
        w = ndi.zoom(np.eye(n_ctrl), (n / n_ctrl, 1.0), order=3, mode="nearest", grid_mode=True)
        field = np.moveaxis(np.tensordot(field, w, axes=([axis + 1], [1])), -1, axis + 1)
    return field


def _rotation(angles: np.ndarray) -> np.ndarray:
    """3×3 rotation matrix from three angles (radians) about the x, y and z axes."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _add_lesion(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray,
                spacing_mm: float, level: float, core_out: np.ndarray | None = None) -> None:
    """Paint one tumour-like lesion into ``img`` (S, S, S) in place, weighted by ``mask``.

    ``core_out`` (S, S, S), if given, receives the elementwise maximum of itself and the painted
    core weight (the blend factor of the lesion value, in [0, 1]); it draws no random numbers.

    An ellipsoid (radii 8–25 mm, random orientation, outline perturbed by a smooth field) with a
    hyper- or hypointense textured core, a soft edge and a rim of the opposite sign (enhancing
    ring around a dark core, hypointense oedema around a bright one).
    """
    s = img.shape[0]
    inside = np.argwhere(mask[::4, ::4, ::4] > 0.99) * 4
    if len(inside) == 0:
        return
    # Prefer centres away from the brain edge: draw a few and keep the most central.
    picks = inside[rng.integers(0, len(inside), size=4)]
    centre = picks[np.argmin(np.abs(picks - (s - 1) / 2).sum(1))].astype(np.float64)
    radii = rng.uniform(8.0, 25.0, size=3) / spacing_mm  # in voxels
    rot = _rotation(rng.uniform(-np.pi, np.pi, size=3))
    reach = int(np.ceil(radii.max() * 1.6)) + 1
    lo = np.maximum(centre.astype(int) - reach, 0)
    hi = np.minimum(centre.astype(int) + reach + 1, s)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    axes = [np.arange(a, b, dtype=np.float64) for a, b in zip(lo, hi, strict=True)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))
    local = np.tensordot(rot.T, grid - centre[:, None, None, None], axes=1)
    r = np.sqrt(((local / radii[:, None, None, None]) ** 2).sum(0))
    r = r * (1.0 + 0.15 * _smooth_field(rng, 4, shape)[0])  # irregular outline
    core = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / 0.08, -50, 50)))
    rim = np.exp(-(((r - 1.2) / 0.18) ** 2))
    texture = 1.0 + 0.08 * _smooth_field(rng, 6, shape)[0]
    w = mask[box]
    region = img[box]
    if rng.random() < 0.5:  # hyperintense core, darker oedema rim
        value = level * rng.uniform(1.0, 1.25) * texture
        region = region * (1.0 - rim * rng.uniform(0.2, 0.45) * w)
    else:  # hypointense (necrotic-looking) core, brighter ring
        value = level * rng.uniform(0.12, 0.35) * texture
        region = region + rim * rng.uniform(0.1, 0.3) * level * w
    cw = core * w
    img[box] = region * (1.0 - cw) + value * cw
    if core_out is not None:
        np.maximum(core_out[box], cw, out=core_out[box])


def _warp_coords(rng: np.random.Generator, n: int, s: int, work_mm: float) -> np.ndarray:
    """Sampling positions (3, S, S, S) float64, in N-grid voxels, of a random warp of the work grid.

    ``x_N = c + A (u - c) + t + d(u)``: u the S-grid voxel centres in N-grid units, A a rotation
    (≤ 8° per axis) times a scaling (±6 % overall, ±2 % per axis), t a shift (±3 mm) and d a
    smooth displacement field (2–5 mm scale). Draws, in order: angles, scales, shift, amplitude,
    the displacement control grid.
    """
    c = (n - 1) / 2.0
    angles = np.deg2rad(rng.uniform(-8.0, 8.0, size=3))
    scales = rng.uniform(0.94, 1.06) * rng.uniform(0.98, 1.02, size=3)
    a = _rotation(angles) @ np.diag(scales)
    shift = rng.uniform(-3.0, 3.0, size=3) / work_mm
    amp = rng.uniform(2.0, 5.0) / work_mm  # displacement scale, mm → work voxels
    coords = _smooth_field(rng, 6, (s, s, s), channels=3) * amp
    u = (np.arange(s, dtype=np.float64) + 0.5) * (n / s) - 0.5 - c
    for i in range(3):
        coords[i] += (c + shift[i]
                      + a[i, 0] * u[:, None, None] + a[i, 1] * u[None, :, None]
                      + a[i, 2] * u[None, None, :])
    return coords


def _contrast_and_warp(rng: np.random.Generator, templates: dict[str, Any],
                       coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` float64 (S, S, S): the templates with random contrast, warped to ``coords``.

    The per-tissue gain ``1 + c_gm·gm + c_wm·wm`` is applied on the template grid (linear, so
    before warping); then a random gamma. Draws, in order: c_gm and c_wm, the gamma.
    """
    c_gm, c_wm = rng.uniform(-0.1, 0.1, size=2)
    t1 = templates["t1"] * (1.0 + c_gm * templates["gm"] + c_wm * templates["wm"])
    img = ndi.map_coordinates(t1.astype(np.float32), coords, order=1, mode="constant",
                              output=np.float32).astype(np.float64)
    mask = ndi.map_coordinates(templates["mask"], coords, order=1, mode="constant",
                               output=np.float32).astype(np.float64)
    img = np.clip(img, 0.0, None) ** rng.uniform(0.8, 1.25)
    return img, mask


def _bias_pool_noise(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray,
                     size: int, f: int) -> np.ndarray:
    """Bias field, masking, f× block-averaging of (S, S, S) to (size,)³, noise, scaling to [0, 1].

    Returns float32 ``(size, size, size)``, clipped at the 99.9th percentile of the brain. Draws,
    in order: bias strength, bias control grid, noise level, noise.
    """
    s = img.shape[0]
    img *= np.exp(rng.uniform(0.03, 0.12) * _smooth_field(rng, 4, (s, s, s))[0])
    img *= mask
    if f > 1:
        img = img.reshape(size, f, size, f, size, f).mean(axis=(1, 3, 5))
        mask = mask.reshape(size, f, size, f, size, f).mean(axis=(1, 3, 5))
    img += rng.uniform(0.005, 0.02) * rng.standard_normal(img.shape) * mask
    brain = img[mask > 0.5]
    hi = float(np.percentile(brain, 99.9)) if brain.size else float(img.max())
    img = np.clip(img / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(img)
    return img.astype(np.float32)


def _label_map(tissue: np.ndarray, mask: np.ndarray, core: np.ndarray, size: int,
               f: int) -> np.ndarray:
    """uint8 ``(size,)*3`` labels (:data:`LABEL_CLASSES`) of the warped maps on the S grid.

    ``tissue`` (2, S, S, S): warped gm and wm probabilities; ``mask`` (S, S, S) the warped brain
    mask; ``core`` (S, S, S) the painted lesion core weight. Each is block-averaged by ``f`` like
    the image; background where the mask is below 0.5, lesion where the core weight is at least
    0.5, else the argmax of (mask − gm − wm, gm, wm) → 1, 2, 3.
    """
    gm, wm, m, c = (a.reshape(size, f, size, f, size, f).mean(axis=(1, 3, 5)) if f > 1 else a
                    for a in (tissue[0], tissue[1], mask, core))
    label = 1 + np.argmax(np.stack([np.clip(m - gm - wm, 0.0, None), gm, wm]), axis=0)
    label[c >= 0.5] = 4
    label[m < 0.5] = 0
    return label.astype(np.uint8)


def make_phantom(rng: np.random.Generator, size: int, *, lesion_prob: float = 0.5,
                 templates: dict[str, Any] | None = None) -> np.ndarray:
    """One random brain-like T1 volume.

    Args:
        rng: the generator that drives every random choice (same state → same volume).
        size: output side in voxels.
        lesion_prob: probability of painting 1–2 tumour-like lesions.
        templates: output of :func:`load_mni_templates` (loaded for ``size`` when omitted).

    Returns:
        float32 ``(size, size, size)`` in [0, 1], background 0, brain max about 1.
    """
    return _phantom(rng, size, lesion_prob, templates, labels=False)[0]


def make_phantom_labelled(rng: np.random.Generator, size: int, *, lesion_prob: float = 0.5,
                          templates: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(volume, labels)``: :func:`make_phantom`'s float32 volume (bit-identical for the same
    ``rng`` state) and its uint8 ``(size,)*3`` label map, indices of :data:`LABEL_CLASSES` (0
    background, 1 CSF/other brain, 2 grey matter, 3 white matter, 4 lesion), from the same warped
    template maps and painted lesions."""
    vol, labels = _phantom(rng, size, lesion_prob, templates, labels=True)
    return vol, labels  # type: ignore[return-value]


def _phantom(rng: np.random.Generator, size: int, lesion_prob: float,
             templates: dict[str, Any] | None, labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """The volume of :func:`make_phantom` and, with ``labels``, its label map (else None)."""
    if not 0.0 <= lesion_prob <= 1.0:
        raise InputError(f"lesion_prob must lie in [0, 1], got {lesion_prob}")
    if templates is None:
        templates = load_mni_templates(size)
    n = int(templates["grid"])
    f = max(1, round(n / size))  # super-sampling factor: sample on S = f·size, then block-average
    s = f * size
    spacing = float(templates["extent_mm"]) / s  # mm per S-grid voxel

    # --- geometry and contrast
    coords = _warp_coords(rng, n, s, float(templates["spacing_mm"]))
    img, mask = _contrast_and_warp(rng, templates, coords)
    tissue = np.stack([ndi.map_coordinates(templates[k], coords, order=1, mode="constant",
                                           output=np.float32) for k in ("gm", "wm")]) if labels else None
    del coords

    # --- lesions (their core weight recorded for the labels; no extra random draws)
    core = np.zeros_like(img) if labels else None
    if rng.random() < lesion_prob:
        level = float(np.percentile(img[mask > 0.99], 99)) if (mask > 0.99).any() else 1.0
        for _ in range(int(rng.integers(1, 3))):
            _add_lesion(rng, img, mask, spacing, level, core_out=core)
    label = _label_map(tissue, mask, core, size, f) if tissue is not None and core is not None else None

    # --- bias field, block-average to the output grid, noise, normalisation
    return _bias_pool_noise(rng, img, mask, size, f), label
