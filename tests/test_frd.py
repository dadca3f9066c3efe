"""Fréchet Radiomics Distance (eval.frd) against frd-score: identity, sensitivity, bad input.

Skipped when the optional backend (frd-score + pyradiomics) is not installed. Radiomic extraction
costs about 1 s per 16³ volume and each Fréchet distance a few seconds (``sqrtm`` of a 1010 × 1010
matrix), so the sets are tiny (3 volumes), extracted once per module, and distances are reused.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

#: radiomics cost seconds a volume and each distance a 1010 x 1010 sqrtm: the slow step (CI
#: installs the optional backend, `pip install -e ".[frd]"`, before it).
pytestmark = pytest.mark.slow

pytest.importorskip("SimpleITK")
pytest.importorskip("frd_score")
pytest.importorskip("radiomics.featureextractor")

from eval import frd as frd_mod  # noqa: E402
from wdm.io import InputError  # noqa: E402

SIZE, N = 16, 3


def _smooth_volumes(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """(n, size, size, size) smooth random volumes, each min-max scaled to [0, 1]."""
    v = ndi.gaussian_filter(np.random.default_rng(seed).random((n, size, size, size)), (0, 1.5, 1.5, 1.5))
    v -= v.min(axis=(1, 2, 3), keepdims=True)
    return v / v.max(axis=(1, 2, 3), keepdims=True)


@pytest.fixture(scope="module")
def sets() -> dict[str, np.ndarray]:
    real, other = _smooth_volumes(N, 0), _smooth_volumes(N, 1)
    blurred = ndi.gaussian_filter(other, (0, 1.5, 1.5, 1.5))
    noised = np.clip(other + np.random.default_rng(2).normal(0.0, 0.1, other.shape), 0.0, 1.0)
    return {"real": real, "other": other, "blurred": blurred, "noised": noised}


@pytest.fixture(scope="module")
def feats(sets) -> dict[str, np.ndarray]:
    return {k: frd_mod.radiomics_features(v) for k, v in sets.items()}


def test_available_and_backend_string():
    ok, info = frd_mod.frd_available()
    assert ok, info
    assert info.startswith("frd-score ") and " + pyradiomics" in info


def test_unavailable_reason(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *a, **k):
        if name.startswith("radiomics"):
            raise ImportError("No module named 'radiomics'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(frd_mod.importlib, "import_module", fake_import)
    ok, reason = frd_mod.frd_available()
    assert not ok and "pyradiomics" in reason and "wdm-bench[frd]" in reason
    with pytest.raises(ImportError, match="pyradiomics"):
        frd_mod.frd_from_features(np.zeros((2, 3)), np.zeros((2, 3)))


def test_features_shape(feats):
    f = feats["real"]
    assert f.shape == (N, 1014) and f.dtype == np.float64
    assert np.isfinite(f).all()


@pytest.fixture(scope="module")
def dist(feats) -> dict[str, dict]:
    """FRD of the real set against each set; computed once (each sqrtm of 1010 × 1010 costs seconds)."""
    return {k: frd_mod.frd_from_features(feats["real"], f) for k, f in feats.items()}


def test_self_distance_is_zero(dist):
    base, same = dist["other"], dist["real"]
    assert abs(same["frechet_d2"]) < 1e-4 * base["frechet_d2"]
    assert same["frd"] < base["frd"] - 5.0  # log(d²): -inf or far below
    assert same["n_real"] == same["n_fake"] == N and 0 < same["n_features"] <= 1014


@pytest.mark.parametrize("degraded", ["blurred", "noised"])
def test_frd_grows_with_degradation(dist, degraded):
    base = dist["other"]["frd"]
    assert math.isfinite(base) and dist[degraded]["frd"] > base + 0.5


def _write_set(folder, name: str, vols: np.ndarray, masks: bool) -> tuple[list[str], list[str]]:
    import SimpleITK as sitk

    imgs, msks = [], []
    for i, v in enumerate(vols.astype(np.float32)):
        img = sitk.GetImageFromArray(v)
        imgs.append(str(folder / f"{name}_img_{i}.nii.gz"))
        sitk.WriteImage(img, imgs[-1])
        if masks:
            m = sitk.GetImageFromArray((v > frd_mod.FG_THRESHOLD).astype(np.uint8))
            m.CopyInformation(img)
            msks.append(str(folder / f"{name}_mask_{i}.nii.gz"))
            sitk.WriteImage(m, msks[-1])
    return imgs, msks


def _compute_frd_reference(tmp_path, a: np.ndarray, b: np.ndarray, masks: bool) -> float:
    from frd_score import compute_frd

    ia, ma = _write_set(tmp_path, "a", a, masks)
    ib, mb = _write_set(tmp_path, "b", b, masks)
    return float(compute_frd([ia, ib], paths_masks=[ma, mb] if masks else None, num_workers=1))


def test_equals_frd_score_compute_frd(tmp_path, sets, dist):
    """radiomics_features + frd_from_features == frd_score.compute_frd on the same NIfTI files + masks."""
    ref = _compute_frd_reference(tmp_path, sets["real"], sets["blurred"], masks=True)
    assert dist["blurred"]["frd"] == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert dist["blurred"]["backend"] == frd_mod.backend_version()


@pytest.mark.slow
def test_equals_frd_score_without_masks(tmp_path, sets):
    """frd() end to end, mask="full", 2 + 2 volumes == compute_frd without masks."""
    a, b = sets["real"][:2], sets["noised"][:2]
    ref = _compute_frd_reference(tmp_path, a, b, masks=False)
    ours = frd_mod.frd(a, b, mask="full")
    assert ours["frd"] == pytest.approx(ref, rel=1e-9, abs=1e-9)
    assert ours["n_real"] == ours["n_fake"] == 2 and ours["mask"] == "full"


@pytest.mark.slow
def test_parallel_extraction_matches_serial(sets, feats):
    par = frd_mod.radiomics_features(sets["real"][:2], num_workers=2)
    np.testing.assert_array_equal(par, feats["real"][:2])


GOOD = np.full((2, 8, 8, 8), 0.5)


@pytest.mark.parametrize("bad, match", [
    (np.full((8, 8, 8), 0.5), "shape"),
    (np.full((2, 2, 8, 8, 8), 0.5), "shape"),
    (np.full((1, 8, 8, 8), 0.5), "at least 2 volume"),
    (np.full((2, 8, 8, 8), 1.5), r"\[0, 1\]"),
    (np.full((2, 8, 8, 8), -0.1), r"\[0, 1\]"),
    (np.full((2, 8, 8, 8), np.nan), "finite"),
    (np.full((2, 2, 8, 8), 0.5), "4 voxels"),
])
def test_bad_volumes(bad, match):
    with pytest.raises(InputError, match=match):
        frd_mod.frd(GOOD, bad)
    if bad.shape[0] > 1:  # a single volume is fine for extraction, not for FRD
        with pytest.raises(InputError, match=match):
            frd_mod.radiomics_features(bad)


def test_bad_masks_and_features():
    with pytest.raises(InputError, match="mask must be"):
        frd_mod.radiomics_features(GOOD, mask="brain")
    with pytest.raises(InputError, match="mask voxel"):
        frd_mod.radiomics_features(np.zeros((2, 8, 8, 8)))
    with pytest.raises(InputError, match="mask must have shape"):
        frd_mod.radiomics_features(GOOD, mask=np.ones((4, 4, 4), bool))
    with pytest.raises(InputError, match="spacing"):
        frd_mod.radiomics_features(GOOD, spacing=0.0)
    with pytest.raises(InputError, match="same width"):
        frd_mod.frd_from_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(InputError, match="N >= 2"):
        frd_mod.frd_from_features(np.zeros((1, 4)), np.zeros((3, 4)))


def test_evaluate_reports_frd_with_the_real_side_cached(tmp_path, monkeypatch):
    """wdm-bench's evaluate: FRD from the real-feature file's radiomics, the training volumes unread."""
    import eval.evaluate as ev
    from eval.evaluate import evaluate, real_statistics, save_real_stats
    from wdm.config import EvaluationSettings
    from wdm.io import save_nifti

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    real_dir, fake_dir = tmp_path / "real", tmp_path / "fake"
    for folder, seed in ((real_dir, 0), (fake_dir, 1)):
        folder.mkdir()
        for i, v in enumerate(_smooth_volumes(N, seed)):
            save_nifti(folder / f"v{i}.nii.gz", v.astype(np.float32))
    settings = EvaluationSettings.from_mapping({"weights": None, "depth": 10, "n_bootstrap": 0,
                                                "frd": "required"})
    stats = real_statistics(real_dir, settings)
    assert stats["radiomics"].shape[0] == N and stats["meta"]["radiomics_backend"].startswith("frd-score")
    cache = tmp_path / "real.npz"
    save_real_stats(cache, stats)
    direct = frd_mod.frd_from_features(stats["radiomics"], frd_mod.radiomics_features(_smooth_volumes(N, 1)))

    import eval.volumes as volumes

    load = volumes.load_checked

    def no_real(path, shape):
        assert real_dir not in Path(path).parents, f"training volume {path} was read"
        return load(path, shape)

    for mod in (ev, volumes):  # every path that reads a volume
        monkeypatch.setattr(mod, "load_checked", no_real)
    res = evaluate(None, fake_dir, settings, real_stats=cache)
    assert res["frd"] == pytest.approx(direct["frd"], rel=1e-4)
    assert res["frd_features"] == direct["n_features"] and res["frd_backend"] == direct["backend"]
