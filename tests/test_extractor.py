"""The phantom-seg extractor: phantom label maps, its training (wdm.extractor), its use in evaluation.

Tiny shapes (16^3 phantoms, a few steps) so the module stays within a few seconds per test.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from eval.evaluate import _make_extractor, real_statistics
from eval.extractors import fallback_spec, load_phantom_seg, phantom_seg_meta
from eval.features import medicalnet_resnet
from eval.medicalnet_weights import PHANTOM_SEG_LABEL, resolve_weights
from wdm.config import EvaluationSettings
from wdm.data import phantom
from wdm.data.phantom import LABEL_CLASSES, load_mni_templates, make_phantom, make_phantom_labelled
from wdm.extractor import build_model, record_path, train_extractor
from wdm.io import InputError, sha256_file

pytestmark = pytest.mark.usefixtures("isolated_hub")

TINY = {"size": 16, "n_volumes": 2, "steps": 4, "batch_size": 2, "n_heldout": 2, "warmup": 1}


def _labelled(seed: int, size: int = 16, **kw):
    return make_phantom_labelled(np.random.default_rng(seed), size,
                                 templates=load_mni_templates(size), **kw)


# ------------------------------------------------------------------------------------ labels
def test_labelled_volume_is_the_plain_volume_and_labels_fit_the_image():
    for seed in range(3):
        vol, lab = _labelled(seed)
        assert np.array_equal(vol, make_phantom(np.random.default_rng(seed), 16,
                                                templates=load_mni_templates(16)))
        assert lab.dtype == np.uint8 and lab.shape == vol.shape and lab.max() < len(LABEL_CLASSES)
        # T1-like contrast: white matter brighter than grey matter, grey brighter than background
        assert vol[lab == 3].mean() > vol[lab == 2].mean() > vol[lab == 0].mean()
        assert np.all(lab[vol == 0] == 0)  # outside the brain mask: background
        assert (lab == 0).mean() > 0.5 and (lab == 2).any() and (lab == 3).any()


def test_no_lesion_label_without_lesions():
    assert all(not (_labelled(s, lesion_prob=0.0)[1] == 4).any() for s in range(4))


def test_lesion_label_exactly_where_a_lesion_was_painted(monkeypatch):
    """The twin of a phantom draws the same numbers but paints nothing: outside the painted voxels
    the two differ only by the normalisation, so a label-4 voxel must be a painted one."""
    seed = next(s for s in range(20) if (_labelled(s, lesion_prob=1.0)[1] == 4).sum() >= 3)
    vol, lab = _labelled(seed, lesion_prob=1.0)
    paint = phantom._add_lesion
    monkeypatch.setattr(phantom, "_add_lesion", lambda rng, img, mask, spacing, level, core_out=None:
                        paint(rng, img.copy(), mask, spacing, level, None))
    twin, twin_lab = _labelled(seed, lesion_prob=1.0)
    assert not (twin_lab == 4).any()
    assert np.array_equal(lab[lab != 4], twin_lab[lab != 4])  # tissue labels ignore lesions
    ok = (twin > 0.05) & (vol < 1) & (twin < 1)
    ratio = vol[ok] / twin[ok]
    scale = np.median(ratio)
    painted = np.zeros_like(ok)
    painted[ok] = np.abs(ratio - scale) > 1e-4 * scale
    lesion = (lab == 4) & ok
    assert lesion.sum() >= 1 and painted[lesion].all()


# ---------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny training run at 16^3 (one batch of 2 volumes, 4 steps): checkpoint path and record."""
    out = tmp_path_factory.mktemp("pseg") / "phantom-seg-resnet10.pt"
    return out, train_extractor(out, seed=5, progress=False, **TINY)


def test_training_is_bit_identical_from_its_seed(trained, tmp_path):
    out, _ = trained
    again = tmp_path / "again.pt"
    train_extractor(again, seed=5, progress=False, **TINY)
    sa = torch.load(out, weights_only=True)["state_dict"]
    sb = torch.load(again, weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(build_model(6).encoder.conv1.weight, build_model(5).encoder.conv1.weight)


def test_training_reduces_the_loss(trained):
    losses = trained[1]["metrics"]["losses"]  # the same two volumes at every step
    assert len(losses) == TINY["steps"] and losses[-1] < losses[0]


@pytest.mark.slow
def test_training_beats_chance_dice_on_held_out_phantoms(tmp_path):
    """A short real run at 32^3: mean foreground Dice on held-out phantoms above chance."""
    rec = train_extractor(tmp_path / "p.pt", size=32, n_volumes=32, steps=30, batch_size=8,
                          n_heldout=8, progress=False)
    held = rec["metrics"]["heldout"]
    fg = [n for n in LABEL_CLASSES[1:] if held["dice"][n] is not None]
    dice = np.mean([held["dice"][n] for n in fg])
    chance = np.mean([held["chance_dice"][n] for n in fg])
    assert rec["metrics"]["loss_last"] < rec["metrics"]["loss_first"]
    assert dice > chance + 0.1 and held["dice"]["white matter"] > held["chance_dice"]["white matter"], held


def test_checkpoint_loads_with_weights_only_and_its_record(trained):
    out, rec = trained
    obj = torch.load(out, weights_only=True)
    meta = obj["meta"]
    assert meta["kind"] == "phantom-seg" and meta["depth"] == 10 and meta["size"] == 16
    assert meta["seed"] == 5 and meta["steps"] == 4 and meta["n_volumes"] == 2
    assert meta["classes"] == list(LABEL_CLASSES) and meta["label"] == PHANTOM_SEG_LABEL
    assert not any(k.startswith("module.") for k in obj["state_dict"])
    on_disk = json.loads(record_path(out).read_text())
    assert on_disk["sha256"] == sha256_file(out)
    assert on_disk["metrics"]["heldout"] == rec["metrics"]["heldout"]
    model, _ = load_phantom_seg(out)
    with torch.no_grad():
        assert model(torch.rand(2, 1, 16, 16, 16)).shape == (2, 512)


# ---------------------------------------------------------------------------- evaluation
def test_resolve_weights_phantom_seg_spec(trained, tmp_path):
    out, _ = trained
    assert resolve_weights(f"phantom-seg:{out}") == (out, PHANTOM_SEG_LABEL)
    with pytest.raises(InputError, match="not found"):
        resolve_weights(f"phantom-seg:{tmp_path / 'missing.pt'}")


def test_non_phantom_seg_files_are_one_line_errors(tmp_path):
    med = tmp_path / "resnet_10.pth"
    torch.save({"state_dict": medicalnet_resnet(10).state_dict()}, med)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)},
                "meta": {"kind": "phantom-seg", "depth": 10}}, bad)
    for path, what in ((med, "meta.kind"), (junk, "weights_only"), (bad, "does not fit")):
        with pytest.raises(InputError, match=what) as exc:
            load_phantom_seg(path)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)
    with pytest.raises(InputError, match="meta.kind"):
        _make_extractor(EvaluationSettings.from_mapping({"weights": f"phantom-seg:{med}"}))


def test_auto_falls_back_to_phantom_seg_when_given_a_path(trained, caplog):
    out, _ = trained
    with caplog.at_level(logging.WARNING):
        assert fallback_spec("auto:resnet_50_23dataset", "phantom-seg", str(out)) == f"phantom-seg:{out}"
    assert str(out) in caplog.text
    assert fallback_spec("auto:resnet_50_23dataset", "untrained", str(out)) == "auto:resnet_50_23dataset"
    assert fallback_spec("auto:resnet_50_23dataset", "phantom-seg", None) == "auto:resnet_50_23dataset"
    assert fallback_spec("phantom-seg", "untrained", str(out)) == f"phantom-seg:{out}"
    with pytest.raises(InputError, match="fallback-weights"):
        fallback_spec("phantom-seg", "phantom-seg", None)
    ext = _make_extractor(EvaluationSettings.from_mapping({"fallback_weights": str(out)}))
    assert ext.label == PHANTOM_SEG_LABEL and ext.depth == 10 and not ext.is_protocol_extractor
    assert ext.weights_sha256 == sha256_file(out) and ext.input_range == (0.0, 1.0)
    assert "untrained" in _make_extractor(EvaluationSettings.from_mapping(
        {"fallback": "untrained", "fallback_weights": str(out)})).label


def test_phantom_seg_features_are_512_and_marked_not_protocol(trained, phantom16):
    out, _ = trained
    settings = EvaluationSettings.from_mapping({"fallback_weights": str(out), "n_bootstrap": 0})
    stats = real_statistics(phantom16 / "train", settings)
    assert stats["features"].shape == (6, 512)
    assert stats["meta"]["feature_extractor"] == PHANTOM_SEG_LABEL
    assert stats["meta"]["weights_sha256"] == sha256_file(out) and stats["meta"]["depth"] == 10
    assert phantom_seg_meta(out)["n_volumes"] == 2
