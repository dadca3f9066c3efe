"""Tests for eval.evaluate on tiny NIfTI folders (16³, untrained ResNet-10: no network, fast)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from eval.evaluate import (
    PROTOCOLS,
    evaluate,
    load_real_stats,
    real_statistics,
    save_real_stats,
    write_metrics,
)
from eval.features import medicalnet_resnet
from wdm.config import EvaluationSettings
from wdm.io import InputError, save_nifti, sha256_file

SIDE = 16


def _s(**values):
    """Evaluation settings for the tiny tests: untrained ResNet-10, seed 0, else the schema's defaults."""
    return EvaluationSettings.from_mapping({"weights": None, "depth": 10, "seed": 0, **values})


def _folder(path, n, seed, shape=(SIDE, SIDE, SIDE), scale=1.0):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        save_nifti(path / f"vol_{i:03d}.nii.gz", (rng.random(shape) * scale).astype(np.float32))
    return path


#: no real MedicalNet weights or hub cache leak into these tests (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_hub")


@pytest.fixture
def dirs(tmp_path):
    return _folder(tmp_path / "real", 4, 0), _folder(tmp_path / "fake", 4, 1, scale=0.8)


def test_evaluate_untrained_returns_finite_numbers(dirs, caplog):
    real, fake = dirs
    res = evaluate(real, fake, _s(weights="auto", batch_size=3))
    assert math.isfinite(res["fid"]) and res["fid"] > 0
    assert 0 < res["ms_ssim"] < 1 and math.isfinite(res["ms_ssim_std"])
    assert res["feature_extractor"] == "untrained-resnet10-seed0 (NOT MedicalNet)"
    assert "NOT a MedicalNet FID" in caplog.text
    assert res["weights_sha256"] is None and res["feature_dim"] == 512
    assert res["ms_ssim_pairs"] == 6 and res["ms_ssim_scales"] == 2 and res["ms_ssim_kernel"] == 7
    assert (res["n_real"], res["n_fake"], res["shape"]) == (4, 4, [SIDE] * 3)
    assert res["protocol"] == "wdm" and res["input_range"] == [0.0, 1.0] and res["code_version"]
    assert evaluate(real, fake, _s(weights="none"))["fid"] == pytest.approx(res["fid"])
    assert evaluate(real, fake, _s())["fid"] == pytest.approx(res["fid"])  # null: untrained too


def test_same_folder_gives_zero_fid(dirs):
    real, _ = dirs
    assert abs(evaluate(real, real, _s())["fid"]) < 1e-6


def test_hagan_protocol_changes_input_range(dirs):
    real, fake = dirs
    a = evaluate(real, fake, _s(protocol="wdm"))
    b = evaluate(real, fake, _s(protocol="hagan"))
    assert b["input_range"] == [-1.0, 1.0] and a["fid"] != b["fid"]
    assert a["ms_ssim"] == b["ms_ssim"]  # MS-SSIM is on the [0, 1] volumes either way
    assert set(PROTOCOLS) == {"wdm", "hagan"}


def test_checkpoint_file_is_used_and_hashed(dirs, tmp_path):
    real, fake = dirs
    sd = {"module." + k: v for k, v in medicalnet_resnet(10, seed=5).state_dict().items()}
    ckpt = tmp_path / "my_resnet10.pth"
    torch.save({"state_dict": sd}, ckpt)
    res = evaluate(real, fake, _s(weights=str(ckpt)))
    assert res["weights_sha256"] == sha256_file(ckpt)
    assert res["feature_extractor"] == "resnet10-file:my_resnet10"
    assert res["fid"] != evaluate(real, fake, _s())["fid"]


def test_manifest_checkpoint_with_wrong_hash_is_refused(dirs, tmp_path, monkeypatch):
    real, fake = dirs
    wdir = tmp_path / "weights"
    wdir.mkdir()
    sd = {"module." + k: v for k, v in medicalnet_resnet(10).state_dict().items()}
    torch.save({"state_dict": sd}, wdir / "resnet_10_23dataset.pth")
    monkeypatch.setenv("WDM_MEDICALNET_DIR", str(wdir))
    with pytest.raises(InputError, match="resnet_10_23dataset.pth: SHA-256 mismatch"):
        evaluate(real, fake, _s(weights="auto:resnet_10_23dataset"))
    with pytest.raises(InputError, match="resnet10, but depth=50"):
        evaluate(real, fake, _s(weights="auto:resnet_10_23dataset", depth=50))


def test_out_of_range_volume_is_an_error(dirs):
    real, fake = dirs
    bad = np.full((SIDE,) * 3, 0.5, np.float32)
    bad[0, 0, 0] = 1.5
    save_nifti(fake / "vol_002.nii.gz", bad)
    with pytest.raises(InputError, match=r"vol_002\.nii\.gz: values in \[0\.5, 1\.5\], expected"):
        evaluate(real, fake, _s())
    save_nifti(real / "vol_001.nii.gz", bad * 2 - 1.5)  # [-1, 1]-scaled input, a common slip
    with pytest.raises(InputError, match=r"real/vol_001\.nii\.gz: values in"):
        evaluate(real, real, _s())


def test_shape_mismatch_names_the_file(dirs):
    real, fake = dirs
    save_nifti(real / "vol_003.nii.gz", np.zeros((SIDE, SIDE, SIDE + 2), np.float32))
    with pytest.raises(InputError, match=r"vol_003\.nii\.gz: shape \(16, 16, 18\) differs"):
        evaluate(real, fake, _s())


def test_counts_protocol_and_size_errors(dirs, tmp_path):
    real, fake = dirs
    with pytest.raises(InputError, match="fewer than n_fake=5"):
        evaluate(real, fake, _s(), n_fake=5)
    res = evaluate(real, fake, _s(n_real=3), n_fake=3)
    assert (res["n_real"], res["n_fake"], res["ms_ssim_pairs"]) == (3, 3, 3)
    with pytest.raises(InputError, match=r"protocol: 'x' is not one of"):  # the schema refuses it
        _s(protocol="x")
    unchecked = dataclasses.replace(_s(), protocol="x")  # and evaluate itself, if it slips through
    with pytest.raises(InputError, match=r"unknown protocol 'x'; allowed: \['hagan', 'wdm'\]"):
        evaluate(real, fake, unchecked)
    tiny_r = _folder(tmp_path / "tr", 2, 0, (6, 8, 8))
    tiny_f = _folder(tmp_path / "tf", 2, 1, (6, 8, 8))
    with pytest.raises(InputError, match="smaller than the MS-SSIM kernel 7"):
        evaluate(tiny_r, tiny_f, _s())
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no NIfTI volumes"):
        evaluate(real, tmp_path / "empty", _s())


def test_write_metrics_atomic_json(dirs, tmp_path):
    real, fake = dirs
    settings = _s(max_pairs=2)
    res = evaluate(real, fake, settings)
    assert res["ms_ssim_pairs"] == 2
    out = tmp_path / "results" / "metrics.json"
    write_metrics(out, res, settings)
    data = json.loads(out.read_text())
    assert data["fid"] == pytest.approx(res["fid"]) and data["config"] == settings.as_dict()
    assert data["config"]["max_pairs"] == 2 and data["config"]["ci_level"] == settings.ci_level
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]


# ------------------------------------------------------------------ cached real features
def test_real_stats_cache_is_reused_without_touching_real_volumes(dirs, tmp_path, monkeypatch):
    import eval.evaluate as ev
    import eval.volumes as volumes

    real, fake = dirs
    stats = real_statistics(real, _s())
    cache = tmp_path / "cache" / "real_features_wdm.npz"
    save_real_stats(cache, stats)
    meta = load_real_stats(cache)["meta"]
    assert meta["protocol"] == "wdm" and meta["n_real"] == 4 and meta["weights_sha256"] is None
    assert meta["files"] == [f"vol_{i:03d}.nii.gz" for i in range(4)]
    assert meta["files_sha256"][0] == sha256_file(real / "vol_000.nii.gz")
    direct = evaluate(real, fake, _s())

    seen = []
    orig = ev.extract_features

    def counting(model, volumes, **kw):
        vols = list(volumes)
        seen.append(len(vols))
        return orig(model, vols, **kw)

    monkeypatch.setattr(ev, "extract_features", counting)
    for mod in (ev, volumes):  # every path that reads a volume
        monkeypatch.setattr(mod, "load_checked", _forbid_real(mod.load_checked, real))
    for _ in range(2):  # two "models" against the same cache
        res = evaluate(None, fake, _s(), real_stats=cache)
        assert res["fid"] == pytest.approx(direct["fid"], rel=1e-9, abs=1e-9)
        assert res["mmd"] == pytest.approx(direct["mmd"], rel=1e-9, abs=1e-12)
        assert res["n_real"] == 4 and res["real_stats"] == str(cache)
    assert seen == [4, 4]  # only the 4 fakes went through the extractor, each time


def _forbid_real(load, real_dir):
    def guarded(path, shape):
        assert real_dir not in Path(path).parents, f"real volume {path} was read"
        return load(path, shape)
    return guarded


def test_real_stats_mismatch_is_refused(dirs, tmp_path):
    real, fake = dirs
    cache = tmp_path / "rf.npz"
    save_real_stats(cache, real_statistics(real, _s()))
    with pytest.raises(InputError, match=r"rf\.npz: field 'protocol' is 'wdm'.*'hagan'"):
        evaluate(None, fake, _s(protocol="hagan"), real_stats=cache)
    with pytest.raises(InputError, match="field 'feature_extractor'"):
        evaluate(None, fake, _s(seed=1), real_stats=cache)
    with pytest.raises(InputError, match="field 'n_real' is 4, but n_real=3"):
        evaluate(None, fake, _s(n_real=3), real_stats=cache)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz: not a real-feature statistics file"):
        evaluate(None, fake, _s(), real_stats=tmp_path / "junk.npz")


def test_metrics_record_provenance_intervals_and_mmd(dirs):
    real, fake = dirs
    (fake / "sample_profile.json").write_text(json.dumps({"seed": 77}))
    res = evaluate(real, fake, _s(seed=5, n_bootstrap=50))
    assert res["seeds"] == {"evaluation": 5, "extractor_init": 5, "pair_subset": 5,
                            "bootstrap": 5, "sampling": 77}
    assert {"protocol", "weights_sha256", "n_real", "n_fake"} <= res.keys()
    assert res["fid_ci_low"] <= res["fid_ci_high"] and res["n_bootstrap"] == 50
    assert res["ms_ssim_ci_low"] <= res["ms_ssim"] <= res["ms_ssim_ci_high"]
    assert math.isfinite(res["mmd"]) and res["mmd_bandwidth"] > 0
    assert res == {**evaluate(real, fake, _s(seed=5, n_bootstrap=50)),
                   "code_version": res["code_version"]}
    none = evaluate(real, fake, _s(n_bootstrap=0))
    assert none["fid_ci_low"] is None and none["ms_ssim_ci_high"] is None


def test_cli_real_stats_then_evaluate(dirs, tmp_path):
    from wdm.cli import main

    real, fake = dirs
    cache, out = tmp_path / "rs.npz", tmp_path / "m.json"
    common = ["--weights", "none", "--depth", "10", "--seed", "0"]
    assert main(["real-stats", "--real", str(real), "--out", str(cache), *common]) == 0
    assert main(["evaluate", "--real-stats", str(cache), "--fake", str(fake), "--out", str(out),
                 *common, "--n-bootstrap", "20", "--max-pairs", "3"]) == 0
    data = json.loads(out.read_text())
    assert data["ms_ssim_pairs"] == 3 and data["ms_ssim_se"] > 0 and data["n_bootstrap"] == 20
    assert data["config"]["max_pairs"] == 3
    assert main(["evaluate", "--real-stats", str(cache), "--fake", str(fake), "--out", str(out),
                 "--weights", "none", "--depth", "10", "--protocol", "hagan"]) == 1


# ------------------------------------------------------------------ FID sanity on phantoms
@pytest.fixture(scope="module")
def phantom_features():
    """8 phantom volumes at 16³, an untrained seeded ResNet-10 and the volumes' features."""
    from eval.features import extract_features
    from wdm.data.phantom import make_phantom

    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(3).spawn(8)]
    vols = np.stack([make_phantom(r, SIDE) for r in rngs])
    model = medicalnet_resnet(10, seed=0)
    return vols, model, extract_features(model, vols)


@pytest.mark.parametrize("kind", ["noise", "blur"])
def test_fid_rises_monotonically_with_degradation(kind, phantom_features):
    from scipy.ndimage import gaussian_filter

    from eval.features import extract_features
    from eval.metrics import fid

    vols, model, ref = phantom_features
    noise = np.random.default_rng(4).normal(size=vols.shape)
    levels = [0.0, 0.05, 0.1, 0.2, 0.4] if kind == "noise" else [0.0, 0.5, 1.0, 1.5, 2.5]
    fids = []
    for lv in levels:
        if kind == "noise":
            deg = np.clip(vols + lv * noise, 0, 1)
        else:
            deg = np.stack([gaussian_filter(v, lv) if lv else v for v in vols])
        fids.append(fid(ref, extract_features(model, deg)))
    assert abs(fids[0]) < 1e-6  # the undegraded volumes: identical features
    assert all(a < b for a, b in zip(fids, fids[1:], strict=False)), fids
