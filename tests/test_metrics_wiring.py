"""The new metrics as the suite runs them: evaluate's fields and files, the protocol guard,
memorisation by name, the pairwise table and the table's rank (16³, untrained ResNet-10)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import eval.evaluate as ev
from eval.evaluate import evaluate, real_statistics, save_real_stats
from eval.feature_cache import load_real_stats
from eval.metrics import fid
from eval.pairwise import pairwise_table
from eval.scores import SMALL_N_NOTE, feature_scores, protocol_note
from eval.tables import add_ranks
from wdm.cli import main
from wdm.config import EvaluationSettings
from wdm.io import InputError, save_nifti

SIDE = 16


def _s(**values):
    return EvaluationSettings.from_mapping({"weights": None, "depth": 10, "seed": 0, "frd": "off",
                                            "n_bootstrap": 20, "pairwise_bootstrap": 50, **values})


def _blobs(path, names, seed, shift=0.0):
    """Smooth random volumes in [0, 1] (so NCC and features see structure), optionally brighter."""
    from scipy.ndimage import gaussian_filter

    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        v = gaussian_filter(rng.random((SIDE,) * 3), 1.5)
        v = (v - v.min()) / (v.max() - v.min())
        save_nifti(path / name, np.clip(v * (1 - shift) + shift, 0, 1).astype(np.float32))
    return path


#: no real MedicalNet weights or hub cache leak into these tests (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_hub")


@pytest.fixture
def cell(tmp_path):
    """train (10), test (8) and its features, real features; the paths of one tiny cell."""
    train = _blobs(tmp_path / "train", [f"train_{i:02d}.nii.gz" for i in range(10)], 0)
    test = _blobs(tmp_path / "test", [f"test_{i:02d}.nii.gz" for i in range(8)], 1)
    real = tmp_path / "real.npz"
    save_real_stats(real, real_statistics(train, _s()))
    ref = evaluate(None, test, _s(), real_stats=real, features_out=tmp_path / "ref" / "features.npz")
    return {"train": train, "test": test, "real": real, "ref": ref,
            "test_features": tmp_path / "ref" / "features.npz"}


def test_copies_of_training_volumes_are_flagged_by_name(cell, tmp_path):
    fake = _blobs(tmp_path / "fake", [f"sample_{i:02d}.nii.gz" for i in range(6)], 7)
    for i in (2, 5):  # two exact copies of training volumes under generated names
        shutil.copy(cell["train"] / f"train_0{i}.nii.gz", fake / f"sample_9{i}.nii.gz")
    out = tmp_path / "m"
    cfg = tmp_path / "ev.yaml"
    cfg.write_text("evaluation: {frd: 'off'}\n")
    assert main(["evaluate", "--real-stats", str(cell["real"]), "--fake", str(fake), "--weights", "none",
                 "--depth", "10", "--seed", "0", "--n-bootstrap", "0", "--config", str(cfg),
                 "--out", str(out / "metrics.json"),
                 "--test-features", str(cell["test_features"]), "--features-out", str(out / "f.npz"),
                 "--memorisation-out", str(out / "mem.csv"), "--nearest-figure", str(out / "nn.png")]) == 0
    rows = list(csv.DictReader(open(out / "mem.csv")))
    flagged = {(r["space"], r["fake_file"], r["train_file"]) for r in rows}
    for space in ("feature", "voxel"):
        assert (space, "sample_92.nii.gz", "train_02.nii.gz") in flagged
        assert (space, "sample_95.nii.gz", "train_05.nii.gz") in flagged
    voxel = [r for r in rows if r["space"] == "voxel"]
    assert [r["fake_file"] for r in voxel[:2]] == ["sample_92.nii.gz", "sample_95.nii.gz"]
    assert float(voxel[0]["distance"]) == 0.0
    m = json.loads((out / "metrics.json").read_text())
    assert m["memorisation_voxel"] >= 2 / 8 and m["memorisation_quantile"] == 0.01
    assert (out / "nn.png").stat().st_size > 10_000
    feats = load_real_stats(out / "f.npz")
    assert feats["features"].shape == (8, 512) and feats["meta"]["files"][-1] == "sample_95.nii.gz"


def test_evaluate_records_every_new_metric(cell, tmp_path):
    res = cell["ref"]
    for key in ("kid", "kid_ci_low", "kid_ci_high", "fid_inf", "precision", "recall", "density",
                "coverage"):
        assert np.isfinite(res[key]), key
    assert res["kid_ci_low"] <= res["kid_ci_high"] and res["fid_ci_low"] <= res["fid_ci_high"]
    assert len(res["fid_inf_ns"]) == len(res["fid_inf_fids"]) == 15 and res["fid_inf_ns"][-1] == 8
    assert res["protocol_note"] == SMALL_N_NOTE  # untrained extractor: marked, not refused
    assert res["frd"] is None and res["frd_backend"].startswith("off")
    assert res["memorisation_voxel"] is None  # no held-out set given for the reference itself


def test_split_upstream_is_noted_on_every_row(cell, tmp_path):
    """A data set that trains on its test cases (dataset.json ``test_in_train``) marks the note."""
    assert "split" not in (cell["ref"]["protocol_note"] or "")
    (tmp_path / "dataset.json").write_text(json.dumps({"split": "upstream", "test_in_train": True}))
    res = evaluate(None, cell["test"], _s(), real_stats=cell["real"])
    assert res["protocol_note"] == (f"{SMALL_N_NOTE}; test set in training (split: upstream): the "
                                    "reference row and the memorisation check are not held out")
    (tmp_path / "dataset.json").write_text(json.dumps({"split": "holdout", "test_in_train": False}))
    assert evaluate(None, cell["test"], _s(), real_stats=cell["real"])["protocol_note"] == SMALL_N_NOTE


def test_protocol_guard_refuses_a_medicalnet_number_on_few_volumes(cell, monkeypatch):
    with pytest.raises(InputError, match=r"n_fake=8 < 1000.*--allow-small-n"):
        protocol_note("wdm", 10, 8, False, protocol_extractor=True)
    assert protocol_note("wdm", 1000, 1000, False, protocol_extractor=True) is None
    assert protocol_note("hagan", 5, 2048, False, protocol_extractor=True) is None
    assert protocol_note("hagan", 5, 2047, True, protocol_extractor=True) == SMALL_N_NOTE

    make = ev._make_extractor

    def as_protocol(settings):  # pretend the protocol's MedicalNet checkpoint is in use
        ext = make(settings)
        ext.is_protocol_extractor = True
        return ext

    monkeypatch.setattr(ev, "_make_extractor", as_protocol)
    with pytest.raises(InputError, match="protocol 'wdm' is defined on"):
        evaluate(None, cell["test"], _s(), real_stats=cell["real"])
    res = evaluate(None, cell["test"], _s(allow_small_n=True), real_stats=cell["real"])
    assert res["protocol_note"] == SMALL_N_NOTE


def test_fewer_volumes_than_feature_dimensions_need_no_padding():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(5, 2048)), rng.normal(0.3, 1.0, size=(5, 2048))
    out = feature_scores(real, fake, _s(n_bootstrap=10))
    # FID lives in the span of the 10 rows: the F x F formula on coordinates in an orthonormal
    # basis of that span is the same FID, computed independently and with no padded rows
    q, _ = np.linalg.qr(np.concatenate([real, fake]).T)  # (2048, 10)
    assert out["fid"] == pytest.approx(fid(real @ q, fake @ q), rel=1e-9)
    assert np.isfinite(out["kid"]) and out["kid_subset_size"] == 5
    assert out["precision"] is None  # k = 5 neighbours need more than 5 volumes per side: not faked
    assert out["fid_inf_ns"][0] == 2 and out["fid_inf_ns"][-1] == 5


def test_pairwise_table_separates_a_shifted_set_and_not_a_resample(tmp_path):
    rng = np.random.default_rng(0)
    ident = {"protocol": "wdm", "feature_extractor": "x", "weights_sha256": None, "depth": 10,
             "input_range": [0.0, 1.0]}

    def save(path, feats):
        save_real_stats(path, {"features": feats, "mu": feats.mean(0),
                               "sigma": np.cov(feats, rowvar=False), "meta": {**ident, "n_real": len(feats)}})
        return path

    base = rng.normal(size=(120, 8))
    real = save(tmp_path / "real.npz", base[:60])
    same = save(tmp_path / "a.npz", base[60:])
    again = save(tmp_path / "b.npz", base[rng.permutation(60) + 60])  # the same volumes, reordered
    shifted = save(tmp_path / "c.npz", rng.normal(0.8, 1.0, size=(60, 8)))
    df = pairwise_table({"d/16": real}, {"d/16/a": same, "d/16/b": again, "d/16/c": shifted},
                        _s(pairwise_bootstrap=200))
    assert list(df["model_a"] + df["model_b"]) == ["ab", "ab", "ac", "ac", "bc", "bc"]
    tie = df[(df.model_a == "a") & (df.model_b == "b")]
    assert (tie["p_value"] > 0.05).all() and (tie["closer"] == "tie").all()
    far = df[df.model_b == "c"]
    assert (far["p_value"] < 0.01).all() and (far["closer"] != "c").all()
    assert (far["difference"] < 0).all() and (df["resolution"] == 16).all()

    other = save(tmp_path / "o.npz", base[60:])
    z = np.load(other)
    meta = {**json.loads(str(z["meta"])), "feature_extractor": "y"}
    save_real_stats(other, {"features": z["features"], "mu": z["mu"], "sigma": z["sigma"], "meta": meta})
    with pytest.raises(InputError, match="o.npz: field 'feature_extractor' is 'y'"):
        pairwise_table({"d/16": real}, {"d/16/a": same, "d/16/o": other}, _s())


def test_rank_shares_overlapping_kid_intervals():
    df = pd.DataFrame({
        "dataset": ["d"] * 5, "resolution": [16] * 5,
        "model": ["reference", "a", "b", "c", "oom"],
        "kid": [0.0, 0.10, 0.12, 0.50, "OOM"],
        "kid_ci_low": [0.0, 0.05, 0.11, 0.40, "OOM"],
        "kid_ci_high": [0.0, 0.115, 0.20, 0.60, "OOM"],
    })
    ranks = add_ranks(df)["rank"].tolist()
    assert ranks[1:4] == [1, 1, 3] and pd.isna(ranks[0]) and pd.isna(ranks[4])
