"""HA-GAN's sub-volume crop (``hagan.crop``): ``upstream`` as batmanlab/HA-GAN ``train.py`` draws
it (``crop_idx = randint(0, S*7/8 + 1)``, real crop at voxel ``crop_idx``, generator slab at
``crop_idx // 4``, D told ``crop_idx / (S*7/8)``) and ``aligned`` (multiples of 4, the behaviour
before the switch, pinned by values recorded before it was added)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from baselines.hagan import Model
from baselines.hagan import model as hagan_model
from baselines.hagan.losses import downsample
from baselines.hagan.networks import feature_slab
from wdm.config import resolve_run_config
from wdm.io import InputError

REPO = Path(__file__).resolve().parents[1]

#: (d_real, d_fake, g, e, sub_e) of three seeded steps of the ``aligned`` crop, recorded with the
#: code before ``hagan.crop`` existed (CPU, torch 2.13; bit-identical there).
ALIGNED_GOLDEN = {
    16: [[0.4469800591468811, 0.9431263208389282, 0.49846023321151733, 0.5631465911865234,
          0.5317646265029907],
         [0.44232019782066345, 0.9544714689254761, 0.502739429473877, 0.5622618198394775,
          0.5300101041793823],
         [0.4357883930206299, 0.962944746017456, 0.5281715393066406, 0.5612348914146423,
          0.5272768139839172]],
    32: [[0.5533894300460815, 0.7868161797523499, 0.5917472243309021, 0.5559095740318298,
          0.5488119125366211],
         [0.5393268465995789, 0.8160241842269897, 0.606640100479126, 0.5554777383804321,
          0.5457298159599304],
         [0.5087026953697205, 0.8205652236938477, 0.54878169298172, 0.5572516322135925,
          0.5438524484634399]],
}
#: Slab starts (L grid) of ``sample_slab`` at S = 32, generator seed 123, before the switch.
ALIGNED_SLABS_32 = [6, 5, 6, 2, 4, 2, 6, 1, 3, 2, 3, 1]
LOSS_KEYS = ("d_real", "d_fake", "g", "e", "sub_e")


def _model(side: int, crop: str, seed: int = 0) -> Model:
    cfg = resolve_run_config({"model": "hagan", "hagan": {"preset": "tiny", "crop": crop},
                              "training": {"device": "cpu"}})
    torch.manual_seed(seed)
    return Model(cfg, (side,) * 3)


def _volume(side: int) -> torch.Tensor:
    """(2, 1, S, S, S) in [-1, 1] whose every depth slice is distinguishable."""
    return torch.rand(2, 1, side, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _record(obj: Any, name: str, log: list, keep: Callable[..., Any]) -> None:
    """Wrap ``obj.name`` (instance attribute) so that each call appends ``keep(*args)`` to ``log``."""
    inner = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        out = inner(*args, **kwargs)
        log.append(keep(out, *args, **kwargs))
        return out

    setattr(obj, name, wrapper)


def _instrumented_step(m: Model, x: torch.Tensor, gen: torch.Generator,
                       monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """One training step recording the generator's slab argument, D's inputs, E^H's inputs and
    the reconstruction targets."""
    rec: dict[str, list] = {"slab": [], "d": [], "e": [], "target": []}
    _record(m.generator, "forward", rec["slab"], lambda out, z, slab=None: slab)
    _record(m.discriminator, "forward", rec["d"], lambda out, sub, low, pos: (sub.clone(), pos.clone()))
    _record(m.encoder, "forward", rec["e"], lambda out, s: s.clone())
    inner = hagan_model.losses.reconstruction_loss

    def loss(x_hat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        rec["target"].append(target.clone())
        return inner(x_hat, target)

    monkeypatch.setattr(hagan_model.losses, "reconstruction_loss", loss)
    m.training_step(x, gen, m.configure_optimizers({}), 0)
    return rec


@pytest.mark.parametrize("side", [16, 32, 64, 128, 256])
def test_upstream_crop_index_covers_exactly_the_upstream_range(side):
    m = _model(side, "upstream")
    last = int(side * 7 / 8 + 1) - 1 if side >= 32 else side - 4  # S = 16: one feature voxel = 4
    assert m.last_start == last
    gen = torch.Generator().manual_seed(0)
    draws = [m.sample_crop(gen) for _ in range(100 * (last + 1))]
    assert set(draws) == set(range(last + 1))  # min 0, max S*7/8, every voxel reachable
    counts = torch.bincount(torch.tensor(draws))
    assert counts.min() > 50 and counts.max() < 150  # uniform: 100 expected per value
    assert max(draws) + m.sub_depth == side  # the last crop ends exactly at the volume's end


def test_aligned_draws_are_the_old_formula():
    m = _model(32, "aligned")
    gen = torch.Generator().manual_seed(123)
    assert [m.sample_crop(gen) for _ in range(12)] == [4 * j for j in ALIGNED_SLABS_32]
    gen, ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    n = m.low_side - m.slab_depth + 1  # the old draw, re-implemented
    old = [4 * int(torch.randint(0, n, (1,), generator=ref).item()) for _ in range(300)]
    assert [m.sample_crop(gen) for _ in range(300)] == old
    assert set(old) == set(range(0, 29, 4))


def test_feature_slab_is_upstream_floor_division():
    assert [feature_slab(c) for c in (0, 3, 4, 13, 28, 224)] == [0, 0, 1, 3, 7, 56]


@pytest.mark.parametrize(("side", "start"), [(32, 13), (32, 28), (32, 0), (16, 11), (64, 56)])
def test_chosen_crop_reaches_real_crop_generator_and_discriminator(side, start, monkeypatch):
    m = _model(side, "upstream")
    monkeypatch.setattr(m, "sample_crop", lambda g: start)
    x = _volume(side)
    rec = _instrumented_step(m, x, torch.Generator().manual_seed(0), monkeypatch)
    real = x[:, :, start: start + m.sub_depth]
    assert real.shape[2] == max(side // 8, 4)
    # G gets the slab start // 4 in the D, G and E^A updates (E^H uses G^H directly).
    assert [s for s in rec["slab"] if s is not None] == [start // 4] * 3
    d_real_sub, d_pos = rec["d"][0]  # D's first call: the real sub-volume
    assert torch.equal(d_real_sub, real)
    assert all(torch.equal(p, torch.full((2,), start / m.last_start)) for _, p in rec["d"])
    assert torch.equal(rec["e"][0], real)  # E^H on the real crop
    tiles = rec["e"][1:]  # E^A's input: E^H on the aligned tiles k * S/8, as upstream
    assert len(tiles) == m.n_slabs
    for k, tile in enumerate(tiles):
        assert torch.equal(tile, x[:, :, k * m.sub_depth: (k + 1) * m.sub_depth])
    e_target, sub_target, low_target = rec["target"]
    assert torch.equal(e_target, real) and torch.equal(sub_target, real)
    assert torch.equal(low_target, downsample(x, 4, "nearest"))


@pytest.mark.parametrize("crop", ["upstream", "aligned"])
def test_drawn_crop_reaches_the_step(crop, monkeypatch):
    """Unpatched draws: the real crop starts at the drawn voxel (aligned: at 4 * slab)."""
    m = _model(32, crop)
    drawn: list[int] = []
    name = "sample_crop" if crop == "upstream" else "sample_slab"
    _record(m, name, drawn, lambda out, g: out)
    x = _volume(32)
    rec = _instrumented_step(m, x, torch.Generator().manual_seed(3), monkeypatch)
    start = drawn[0] if crop == "upstream" else 4 * drawn[0]
    if crop == "upstream":
        assert start % 4 != 0  # this seed draws an unaligned start: the case that differs
    assert torch.equal(rec["d"][0][0], x[:, :, start: start + 4])
    assert [s for s in rec["slab"] if s is not None] == [start // 4] * 3


def test_the_two_settings_differ_only_through_the_crop():
    x = _volume(32)
    aligned, upstream = _model(32, "aligned"), _model(32, "upstream")
    upstream.sample_crop = lambda g: 4 * upstream.sample_slab(g)  # the aligned draw
    outs = []
    for m in (aligned, upstream):
        opts, gen = m.configure_optimizers({}), torch.Generator().manual_seed(3)
        outs.append([m.training_step(x, gen, opts, i) for i in range(2)])
    for a, u in zip(*outs, strict=True):
        assert all(torch.equal(a[k], u[k]) for k in a)
    for name, mod in aligned.modules().items():
        for p, q in zip(mod.parameters(), upstream.modules()[name].parameters(), strict=True):
            assert torch.equal(p, q), name
    plain = _model(32, "upstream")  # its own draw (unaligned for this seed): other numbers
    out = plain.training_step(x, torch.Generator().manual_seed(3), plain.configure_optimizers({}), 0)
    assert not torch.equal(out["d_real"], outs[0][0]["d_real"])


@pytest.mark.parametrize("side", [16, 32])
def test_aligned_reproduces_the_values_recorded_before_the_switch(side):
    m = _model(side, "aligned")
    opts, gen, x = m.configure_optimizers({}), torch.Generator().manual_seed(0), _volume(side)
    for i, expected in enumerate(ALIGNED_GOLDEN[side]):
        out = m.training_step(x, gen, opts, i)
        got = [float(out[k]) for k in LOSS_KEYS]
        assert got == pytest.approx(expected, rel=1e-6), (side, i)


@pytest.mark.parametrize("crop", ["upstream", "aligned"])
def test_same_seed_same_step(crop):
    x = _volume(16)
    runs = []
    for _ in range(2):
        m = _model(16, crop)
        gen = torch.Generator().manual_seed(5)
        runs.append([m.training_step(x, gen, m.configure_optimizers({}), i) for i in range(2)])
    for a, b in zip(*runs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_switch_default_validation_and_paper_files():
    assert resolve_run_config({"model": "hagan"})["hagan"]["crop"] == "upstream"
    with pytest.raises(InputError, match=r"hagan\.crop") as err:
        resolve_run_config({"model": "hagan", "hagan": {"crop": "random"}})
    assert "\n" not in str(err.value) and "aligned" in str(err.value)
    cfg = resolve_run_config({"model": "hagan", "hagan": {"preset": "tiny"}})
    cfg["hagan"]["crop"] = "centre"  # past the schema: the model refuses it too
    with pytest.raises(ValueError, match=r"hagan\.crop.*allowed"):
        Model(cfg, (16,) * 3)
    for rel in ("config/paper/models/hagan_128.yaml", "config/paper/models/hagan_256.yaml",
                "config/models/hagan.yaml"):
        raw = yaml.safe_load((REPO / rel).read_text())
        assert raw["hagan"]["crop"] == "upstream", rel  # set explicitly, not by default
        assert "train.py" in (REPO / rel).read_text(), rel
