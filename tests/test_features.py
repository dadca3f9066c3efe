"""Tests for eval.features and eval.medicalnet_weights: MedicalNet ResNet structure, seeded init,
strict checkpoint loading, weights lookup and download."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest
import torch

from eval.features import extract_features, feature_dim, load_medicalnet_weights, medicalnet_resnet
from eval.medicalnet_weights import MEDICALNET_WEIGHTS, load_medicalnet_state_dict, resolve_weights
from wdm.io import InputError, sha256_file


def _x(n: int = 2, side: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, side, side, side, generator=torch.Generator().manual_seed(0))


def _write_checkpoint(path, model, *, rename: tuple[str, str] | None = None,
                      drop_num_batches: bool = False):
    """A checkpoint in the released format: {'state_dict': {'module.<key>': tensor}} + conv_seg."""
    sd = {}
    for k, v in model.state_dict().items():
        if drop_num_batches and k.endswith("num_batches_tracked"):
            continue
        if rename and k == rename[0]:
            k = rename[1]
        sd["module." + k] = v.clone()
    sd["module.conv_seg.0.weight"] = torch.zeros(model.num_features, 32, 2, 2, 2)
    sd["module.conv_seg.4.weight"] = torch.zeros(2, 32, 1, 1, 1)
    torch.save({"state_dict": sd}, path)
    return path


#: no real MedicalNet weights or hub cache leak into these tests (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_hub")


@pytest.mark.parametrize("depth,dim", [(10, 512), (50, 2048)])
def test_output_shape_at_32(depth, dim):
    model = medicalnet_resnet(depth)
    assert not model.training
    with torch.no_grad():
        out = model(_x())
    assert out.shape == (2, dim) and torch.isfinite(out).all()
    assert feature_dim(depth) == dim == model.num_features


def test_parameter_names_match_medicalnet_keys():
    keys = set(medicalnet_resnet(50).state_dict())
    for k in ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight",
              "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
              "layer2.0.downsample.0.weight", "layer4.2.bn3.bias"):
        assert k in keys
    assert not any(k.startswith(("conv_seg", "fc")) for k in keys)


def test_architecture_details():
    m = medicalnet_resnet(10)
    assert m.conv1.kernel_size == (7, 7, 7) and m.conv1.stride == (2, 2, 2)
    assert m.conv1.padding == (3, 3, 3) and m.conv1.bias is None
    assert m.layer2[0].conv1.stride == (2, 2, 2)
    assert m.layer3[0].conv1.dilation == (2, 2, 2) and m.layer3[0].conv1.stride == (1, 1, 1)
    assert m.layer4[0].conv1.dilation == (4, 4, 4) and m.layer4[0].conv1.padding == (4, 4, 4)
    # Parameter counts of the upstream encoders (README: 14.36M for ResNet-10).
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(14.36e6, rel=1e-3)


def test_shortcut_a_for_resnet18_has_no_downsample_parameters():
    m = medicalnet_resnet(18)
    assert m.shortcut_type == "A"
    assert not any("downsample" in k for k in m.state_dict())
    with torch.no_grad():
        assert m(_x(1, 20)).shape == (1, 512)  # odd grid sizes through the stride-2 shortcut
    assert medicalnet_resnet(10).shortcut_type == "B"


def test_unknown_depth_lists_allowed():
    with pytest.raises(InputError, match=r"allowed: \[10, 18, 34, 50, 101, 152, 200\]"):
        medicalnet_resnet(42)


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = medicalnet_resnet(10, seed=0), medicalnet_resnet(10, seed=0), medicalnet_resnet(10, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


def test_strict_load_of_released_format(tmp_path, monkeypatch):
    source = medicalnet_resnet(10, seed=7)
    path = _write_checkpoint(tmp_path / "ckpt.pth", source)
    sd = load_medicalnet_state_dict(path, expected_sha256=sha256_file(path))
    assert "conv1.weight" in sd and not any(k.startswith(("module.", "conv_seg")) for k in sd)
    loaded = medicalnet_resnet(10, path, seed=0)
    x = _x()
    with torch.no_grad():
        out_loaded, out_source, out_seed0 = loaded(x), source(x), medicalnet_resnet(10, seed=0)(x)
    torch.testing.assert_close(out_loaded, out_source, rtol=0, atol=0)
    assert not torch.allclose(out_loaded, out_seed0)
    # the SHA-256 returned is the one checked: the file is hashed once
    expected, calls, sha256 = sha256_file(path), [], hashlib.sha256
    monkeypatch.setattr(hashlib, "sha256", lambda *a: calls.append(a) or sha256(*a))
    assert load_medicalnet_weights(medicalnet_resnet(10), path) == expected and len(calls) == 1


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    path = _write_checkpoint(tmp_path / "old.pth", medicalnet_resnet(10, seed=3),
                             drop_num_batches=True)
    medicalnet_resnet(10, path)  # PyTorch 0.4-era checkpoints lack these buffers


def test_renamed_key_fails_loudly(tmp_path):
    path = _write_checkpoint(tmp_path / "bad.pth", medicalnet_resnet(10),
                             rename=("layer1.0.conv1.weight", "layer1.0.convX.weight"))
    with pytest.raises(InputError, match=r"bad\.pth.*layer1\.0\.conv(1|X)\.weight"):
        medicalnet_resnet(10, path)


def test_wrong_depth_checkpoint_fails(tmp_path):
    path = _write_checkpoint(tmp_path / "r10.pth", medicalnet_resnet(10))
    with pytest.raises(InputError, match="does not match MedicalNet resnet18"):
        medicalnet_resnet(18, path)


def test_wrong_sha256_raises(tmp_path):
    path = _write_checkpoint(tmp_path / "ckpt.pth", medicalnet_resnet(10))
    actual = sha256_file(path)
    with pytest.raises(InputError, match=f"ckpt.pth: SHA-256 mismatch: expected {'0' * 64}, "
                                         f"got {actual}"):
        load_medicalnet_state_dict(path, expected_sha256="0" * 64)


def test_non_tensor_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": object()}}, path)
    with pytest.raises(InputError, match="weights_only=True"):
        load_medicalnet_state_dict(path, expected_sha256=None)


def test_manifest():
    for name in ("resnet_10_23dataset", "resnet_50_23dataset", "resnet_50", "resnet_18"):
        e = MEDICALNET_WEIGHTS[name]
        assert e["file"] == name + ".pth"
        assert e["url"] == (f"https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet"
                            f"{e['depth']}/resolve/main/{name}.pth")
    assert MEDICALNET_WEIGHTS["resnet_50_23dataset"]["sha256"].startswith("ff48a622")
    assert MEDICALNET_WEIGHTS["resnet_50"]["datasets"] == 8
    assert MEDICALNET_WEIGHTS["resnet_34"]["shortcut"] == "A"


def test_resolve_weights(tmp_path, monkeypatch, caplog):
    assert resolve_weights(None, depth=50, seed=3) == (None,
                                                       "untrained-resnet50-seed3 (NOT MedicalNet)")
    assert resolve_weights("none")[0] is None
    with pytest.raises(InputError, match="not found.*hub:resnet_50_23dataset"):
        resolve_weights("resnet_50_23dataset")
    with pytest.raises(InputError, match="unknown MedicalNet weights 'resnet_9'; allowed"):
        resolve_weights("auto:resnet_9")
    with caplog.at_level(logging.WARNING):
        path, label = resolve_weights("auto:resnet_50_23dataset", depth=50)
    assert path is None and "NOT MedicalNet" in label and "NOT a MedicalNet FID" in caplog.text
    # Found in $WDM_MEDICALNET_DIR, then in the torch hub cache.
    wdir = tmp_path / "weights"
    wdir.mkdir()
    (wdir / "resnet_10_23dataset.pth").write_bytes(b"x")
    monkeypatch.setenv("WDM_MEDICALNET_DIR", str(wdir))
    assert resolve_weights("auto:resnet_10_23dataset") == (wdir / "resnet_10_23dataset.pth",
                                                           "medicalnet-resnet10-23datasets")
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet_50.pth").write_bytes(b"x")
    assert resolve_weights("resnet_50") == (cache / "resnet_50.pth", "medicalnet-resnet50-8datasets")
    # A plain file path.
    other = tmp_path / "mine.pth"
    other.write_bytes(b"x")
    assert resolve_weights(str(other), depth=10) == (other, "resnet10-file:mine")


def test_hub_download_is_hash_checked(tmp_path, monkeypatch):
    def fake_download(url, dst, hash_prefix=None, progress=True):
        assert url == MEDICALNET_WEIGHTS["resnet_50_23dataset"]["url"]
        with open(dst, "wb") as f:
            f.write(b"not the real checkpoint")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(InputError, match="SHA-256 mismatch"):
        resolve_weights("hub:resnet_50_23dataset")
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    assert not (cache / "resnet_50_23dataset.pth").exists()
    assert not any(cache.iterdir())  # no temporary left behind either


def test_extract_features_batches_and_ranges():
    model = medicalnet_resnet(10)
    vols = [np.random.default_rng(i).random((16, 16, 16), dtype=np.float32) for i in range(5)]
    f1 = extract_features(model, vols, batch_size=2)
    f2 = extract_features(model, iter(vols), batch_size=5)  # a generator works too
    assert f1.shape == (5, 512) and f1.dtype == np.float64
    np.testing.assert_allclose(f1, f2, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        direct = model(torch.from_numpy(np.stack(vols)).unsqueeze(1) * 2 - 1).double().numpy()
    np.testing.assert_allclose(extract_features(model, vols, input_range=(-1.0, 1.0)), direct,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        extract_features(model, [vols[0], np.zeros((16, 16, 8), np.float32)])


def test_released_file_name_is_hash_checked_by_default(tmp_path):
    path = _write_checkpoint(tmp_path / "resnet_50.pth", medicalnet_resnet(10))
    with pytest.raises(InputError, match="resnet_50.pth: SHA-256 mismatch: expected 5b6189ca"):
        medicalnet_resnet(10, path)
