"""Stage 1 of baselines/ldm against Khader et al.'s medicaldiffusion VQ-GAN (vq_gan_3d/model/*.py).

Architecture (layer counts, widths, GroupNorm, parameter counts by hand from their layer shapes),
the 2D slice and 3D discriminators, hinge and feature-matching losses, LPIPS loading, and the
switches that bring back the former behaviour. Tiny shapes; paper presets on the meta device.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from baselines.ldm.config import stage_config
from baselines.ldm.discriminators import NLayerDiscriminator, draw_slice_indices, take_slices
from baselines.ldm.losses import FEAT_WEIGHT, feature_matching_loss, hinge_d_loss, hinge_g_loss
from baselines.ldm.lpips import LPIPS_CHANNELS, VGG16_CFG, VGG16Features, build_lpips
from baselines.ldm.vqgan import ResBlock3D, SameConv3d, SameConvTranspose3d
from tests.test_ldm import TINY_LDM
from wdm.io import InputError
from wdm.model import build_model

SHAPE = (16, 16, 16)


def _tiny(**vqgan) -> dict:
    cfg = copy.deepcopy(TINY_LDM)
    cfg["ldm"]["vqgan"].update(vqgan)
    return stage_config(cfg, "vqgan")


def _paper(res: int):  # noqa: ANN202 - a VQGANStage built on the meta device (shapes only)
    cfg = {"model": "ldm", "ldm": {"vqgan": {"preset": f"paper-{res}", "perceptual_weights": None}}}
    with torch.device("meta"):
        return build_model(stage_config(cfg, "vqgan"), (res,) * 3)


def _n(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _volumes(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --- architecture ------------------------------------------------------------------------------

def conv(c_in: int, c_out: int, k: int, dims: int = 3) -> int:
    """Parameters of a conv (or transposed conv) with bias: weight c_in * c_out * k^dims + bias."""
    return c_in * c_out * k ** dims + c_out


def norm(c: int) -> int:
    """GroupNorm / BatchNorm affine parameters: weight and bias per channel."""
    return 2 * c


def resblock(c: int) -> int:
    """Their ResBlock(c, c): norm1, conv1 3^3, norm2, conv2 3^3, no shortcut."""
    return norm(c) + conv(c, c, 3) + norm(c) + conv(c, c, 3)


def test_paper_256_parameter_counts_equal_upstream_by_hand():
    """n_hiddens 16, downsample [8,8,8], embedding_dim 8, image_channels 1, disc 64 x 3 layers."""
    encoder = (conv(1, 16, 3)                                 # conv_first
               + conv(16, 32, 4) + resblock(32)               # conv_blocks[0]: down, res
               + conv(32, 64, 4) + resblock(64)               # conv_blocks[1]
               + conv(64, 128, 4) + resblock(128)             # conv_blocks[2]
               + norm(128))                                   # final_block
    pre_post = conv(128, 8, 1) + conv(8, 128, 1)              # pre_vq_conv, post_vq_conv
    decoder = (norm(128)                                      # final_block (first)
               + conv(128, 128, 4) + 2 * resblock(128)        # conv_blocks[0]: up, res1, res2
               + conv(128, 64, 4) + 2 * resblock(64)          # conv_blocks[1]
               + conv(64, 32, 4) + 2 * resblock(32)           # conv_blocks[2]
               + conv(32, 1, 3))                              # conv_last
    assert (encoder, pre_post, decoder) == (1_851_616, 2_184, 4_030_401)

    def nlayer(dims: int) -> int:  # NLayerDiscriminator(1, 64, 3): widths 64, 128, 256, 512, 1
        return (conv(1, 64, 4, dims) + conv(64, 128, 4, dims) + norm(128)
                + conv(128, 256, 4, dims) + norm(256) + conv(256, 512, 4, dims) + norm(512)
                + conv(512, 1, 4, dims))

    assert (nlayer(2), nlayer(3)) == (2_764_481, 11_049_665)
    m = _paper(256)
    assert _n(m.vqgan.encoder) == encoder and _n(m.vqgan.decoder) == decoder
    assert _n(m.vqgan.pre_vq) + _n(m.vqgan.post_vq) == pre_post
    assert _n(m.vqgan) == encoder + pre_post + decoder  # the codebook holds buffers only, as theirs
    assert _n(m.disc.image) == nlayer(2) and _n(m.disc.video) == nlayer(3)
    assert m.latent_shape == (8, 32, 32, 32)


@pytest.mark.parametrize("res, widths", [(128, [32, 64]), (256, [32, 64, 128])])
def test_paper_presets_groupnorm_32_and_res_blocks_per_level(res: int, widths: list[int]):
    m = _paper(res)
    norms = [x for x in m.vqgan.modules() if isinstance(x, nn.GroupNorm)]
    assert norms and all(g.num_groups == 32 and g.eps == 1e-6 for g in norms)
    enc, dec = m.vqgan.encoder, m.vqgan.decoder
    assert enc.conv_in.conv.out_channels == 16
    assert [sum(isinstance(b, ResBlock3D) for b in lv) for lv in enc.levels] == [1] * len(widths)
    assert [sum(isinstance(b, ResBlock3D) for b in lv) for lv in dec.levels] == [2] * len(widths)
    assert [lv[0].conv.out_channels for lv in enc.levels] == widths
    # decoder: the first up-sampling keeps the widest width, the last ends at 2 * n_hiddens
    assert [lv[0].convt.in_channels for lv in dec.levels] == [widths[-1], *widths[::-1][:-1]]
    assert [lv[0].convt.out_channels for lv in dec.levels] == widths[::-1]
    assert dec.conv_out.conv.in_channels == 32
    assert m.vqgan.pre_vq.kernel_size == (1, 1, 1) and m.vqgan.post_vq.out_channels == widths[-1]
    assert m.disc.image.dims == 2 and m.disc.video.dims == 3
    assert all(isinstance(x, nn.BatchNorm2d) for x in m.disc.image.modules() if "Norm" in type(x).__name__)


def test_groupnorm_that_does_not_divide_is_an_error():
    with pytest.raises(InputError, match="num_groups=32"):
        build_model(_tiny(num_groups=32), SHAPE)


def test_replicate_same_padding_and_transposed_conv():
    conv3 = SameConv3d(1, 1, 3)
    nn.init.constant_(conv3.conv.weight, 1.0)
    nn.init.zeros_(conv3.conv.bias)
    out = conv3(torch.full((1, 1, 4, 4, 4), 2.0))
    assert torch.allclose(out, torch.full_like(out, 54.0))  # 27 taps x 2, corners included
    down = SameConv3d(2, 3, 4, stride=2)
    assert down(torch.rand(1, 2, 8, 8, 8)).shape == (1, 3, 4, 4, 4)
    up = SameConvTranspose3d(2, 3, 4, stride=2, padding="zeros")
    ref = nn.ConvTranspose3d(2, 3, 4, stride=2, padding=1)
    ref.load_state_dict({k.removeprefix("convt."): v for k, v in up.state_dict().items()})
    x = torch.rand(1, 2, 3, 3, 3)
    assert up(x).shape == (1, 3, 6, 6, 6) and torch.allclose(up(x), ref(x), atol=1e-6)
    rep = SameConvTranspose3d(2, 3, 4, stride=2)
    rep.load_state_dict(up.state_dict())
    assert not torch.allclose(rep(x), ref(x))  # replicate padding changes the borders


# --- discriminators and losses -----------------------------------------------------------------

def test_nlayer_discriminator_shapes_and_features():
    d = NLayerDiscriminator(2, channels=8, n_layers=3)
    logits, feats = d(torch.rand(2, 1, 16, 16))
    # 16 -> 9 -> 5 -> 3 (stride 2: s/2 + 1) -> 4 -> 5 (stride 1: s + 1)
    assert [tuple(f.shape[1:]) for f in feats] == [(8, 9, 9), (16, 5, 5), (32, 3, 3), (64, 4, 4),
                                                    (1, 5, 5)]
    assert feats[-1] is logits
    assert all(c.bias is not None and c.padding == (2, 2) for c in d.modules() if isinstance(c, nn.Conv2d))


def test_hinge_losses_by_hand():
    real = torch.tensor([[0.5, 2.0, -1.0]])   # relu(1 - real) = 0.5, 0, 2   -> mean 5/6
    fake = torch.tensor([-2.0, 0.0])          # relu(1 + fake) = 0, 1        -> mean 1/2
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 0.5))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)


def test_feature_matching_zero_iff_same_inputs():
    assert FEAT_WEIGHT == 1.0  # their 4.0 / (3 + 1)
    d = NLayerDiscriminator(3, channels=4, n_layers=2)
    x = torch.rand(2, 1, *SHAPE)
    assert feature_matching_loss(d(x)[1], d(x.clone())[1]).item() == 0.0
    assert feature_matching_loss(d(x + 0.1 * torch.rand_like(x))[1], d(x)[1]).item() > 0
    # by hand: L1 of the first map 1, second 0; the last (logits) is left out
    fake = [torch.ones(2, 3, requires_grad=True), torch.full((2, 2), 2.0), torch.zeros(1)]
    real = [torch.zeros(2, 3, requires_grad=True), torch.full((2, 2), 2.0), torch.ones(1)]
    loss = feature_matching_loss(fake, real)
    assert loss.item() == 1.0
    loss.backward()
    assert real[0].grad is None and fake[0].grad is not None  # the real maps are detached


def test_slices_are_depth_slices():
    x = torch.arange(2 * 3 * 4 * 5).float().view(2, 1, 3, 4, 5)
    idx = torch.tensor([2, 0])
    s = take_slices(x, idx)
    assert s.shape == (2, 1, 4, 5)
    assert torch.equal(s[0, 0], x[0, 0, 2]) and torch.equal(s[1, 0], x[1, 0, 0])


def test_2d_discriminator_sees_the_generator_chosen_slice_of_real_and_fake():
    torch.manual_seed(0)
    cfg = _tiny(disc_start=0)
    model = build_model(cfg, SHAPE)
    seen, rec = [], []
    model.disc.image.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
    model.vqgan.register_forward_hook(lambda m, a, out: rec.append(out[0].detach().clone()))
    x = _volumes()
    out = model.training_step(x, torch.Generator().manual_seed(7),
                              model.configure_optimizers(cfg["training"]), 5)
    idx = draw_slice_indices(x, torch.Generator().manual_seed(7))  # the step's first draw
    real, fake = x[torch.arange(2), :, idx], rec[0][torch.arange(2), :, idx]
    assert real.shape == (2, 1, 16, 16) and len(seen) == 4
    # generator step: D(fake), D(real) for feature matching; discriminator step: D(real), D(fake)
    for got, want in zip(seen, (fake, real, real, fake), strict=True):
        assert got.shape == (2, 1, 16, 16) and torch.equal(got, want)
    assert out["g_image"] != 0 and out["d_image"] > 0 and out["feat_match"] > 0


def test_loss_terms_disc_start_and_frozen_discriminators_in_the_generator_step():
    torch.manual_seed(0)
    cfg = _tiny(disc_start=1)
    model = build_model(cfg, SHAPE)
    opts = model.configure_optimizers(cfg["training"])
    before = copy.deepcopy(model.disc.state_dict())
    gen = torch.Generator().manual_seed(0)
    first = model.training_step(_volumes(), gen, opts, 0)
    assert list(first)[:1] == ["loss"] and {
        "rec_l1", "commitment", "perceptual", "g_image", "g_video", "feat_match", "g_adv",
        "d_image", "d_video", "d_loss", "perplexity", "restarted", "perceptual_on"} == set(first) - {"loss"}
    for k in ("g_image", "g_video", "feat_match", "g_adv", "d_image", "d_video", "d_loss"):
        assert first[k].item() == 0.0, k  # disc_factor 0 before disc_start
    after = model.disc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "running" not in k)
    second = model.training_step(_volumes(), gen, opts, 1)
    for k in ("g_image", "g_video", "feat_match", "d_image", "d_video", "d_loss"):
        assert second[k].item() != 0.0, k
    s = model.settings
    assert second["d_loss"].item() == pytest.approx(
        s["image_gan_weight"] * second["d_image"].item() + s["video_gan_weight"] * second["d_video"].item())
    assert all(p.requires_grad for p in model.disc.parameters())
    assert first["perceptual_on"].item() == 0.0


def test_zero_gan_weights_build_no_discriminator():
    model = build_model(_tiny(image_gan_weight=0), SHAPE)
    assert model.disc.image is None and model.disc.video is not None
    assert model.run_info()["discriminators"] == {"image_2d": False, "video_3d": True}
    out = model.training_step(_volumes(), torch.Generator().manual_seed(0),
                              model.configure_optimizers({}), 5)
    assert out["g_image"].item() == 0 and out["d_image"].item() == 0 and out["d_video"].item() > 0
    none = build_model(_tiny(image_gan_weight=0, video_gan_weight=0), SHAPE)
    assert _n(none.disc) == 0 and set(none.configure_optimizers({})) == {"vqgan"}
    out = none.training_step(_volumes(), torch.Generator().manual_seed(0),
                             none.configure_optimizers({}), 5)
    assert out["d_loss"].item() == 0 and out["g_adv"].item() == 0 and out["rec_l1"] > 0


def test_stage1_steps_reproduce_from_the_generator():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        cfg = _tiny(disc_start=1)
        model = build_model(cfg, SHAPE)
        opts = model.configure_optimizers(cfg["training"])
        gen = torch.Generator().manual_seed(3)
        runs.append([model.training_step(_volumes(seed=s), gen, opts, s) for s in range(3)])
    for a, b in zip(*runs, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_stage1_grad_clip_bounds_each_update(monkeypatch):
    """ldm.vqgan.grad_clip reaches stage 1 and clips the VQ-GAN's and the discriminators'
    gradient norms apart, right before their optimizer steps."""
    import baselines.ldm.stages as stages

    norms: dict[str, float] = {}
    real_clip = stages._clip

    def spy(module: nn.Module, max_norm: float | None) -> None:
        real_clip(module, max_norm)
        grads = [p.grad.flatten() for p in module.parameters() if p.grad is not None]
        norms[type(module).__name__] = float(torch.cat(grads).norm())

    monkeypatch.setattr(stages, "_clip", spy)
    cfg = _tiny(disc_start=0, grad_clip=1e-3)
    assert cfg["training"]["grad_clip"] == 1e-3
    model = build_model(cfg, SHAPE)
    opts = model.configure_optimizers(cfg["training"])
    model.training_step(_volumes(), torch.Generator().manual_seed(0), opts, 0,
                        grad_clip=cfg["training"]["grad_clip"])
    assert len(norms) == 2 and all(0 < n <= 1e-3 * (1 + 1e-5) for n in norms.values())
    assert _tiny()["training"]["grad_clip"] is None  # off by default


# --- LPIPS -------------------------------------------------------------------------------------

def _vgg_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG-16 state dict with random values (features + classifier keys)."""
    g = torch.Generator().manual_seed(seed)
    sd, idx, ch = {}, 0, 3
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, ch, 3, 3, generator=g) * (2 / (9 * ch)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.zeros(v)
        idx, ch = idx + 2, v
    sd["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision's head: ignored
    return sd


def _lpips_files(tmp_path: Path) -> tuple[Path, Path]:
    lin = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}
    torch.save(lin, tmp_path / "vgg.pth")
    torch.save(_vgg_state(), tmp_path / "vgg16.pth")
    return tmp_path / "vgg.pth", tmp_path / "vgg16.pth"


def test_vgg16_features_have_torchvisions_indices():
    net = VGG16Features()
    convs = [int(k.split(".")[1]) for k in net.state_dict() if k.endswith(".weight")]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28] and len(net.features) == 31
    maps = net(torch.rand(1, 3, 32, 32))
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8),
                                                  (512, 4, 4), (512, 2, 2)]


def test_lpips_loads_both_formats_and_is_zero_for_identical_inputs(tmp_path):
    lin, vgg = _lpips_files(tmp_path)
    lp = build_lpips(lin, vgg)
    assert torch.equal(lp.net.features[28].weight, _vgg_state()["features.28.weight"])
    assert lp.shift.flatten().tolist() == pytest.approx([-0.030, -0.088, -0.188])
    assert lp.scale.flatten().tolist() == pytest.approx([0.458, 0.448, 0.450])
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    y = torch.rand(2, 1, 16, 16) * 2 - 1
    assert lp(x, x).shape == (2,) and torch.equal(lp(x, x), torch.zeros(2))
    d = lp(x, y)
    assert (d > 0).all()
    # a 1-channel slice is the grey image broadcast to RGB by the ScalingLayer
    assert torch.allclose(d, lp(x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)))
    for lin_layer in lp.heads.layers():  # linear in the lin weights, which are used
        lin_layer[1].weight.data *= 2
    assert torch.allclose(lp(x, y), 2 * d)
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())


def test_lpips_wrong_keys_are_a_one_line_error(tmp_path):
    lin, vgg = _lpips_files(tmp_path)
    bad = {("lin9.model.1.weight" if k.startswith("lin4") else k): v for k, v in torch.load(lin).items()}
    torch.save(bad, tmp_path / "bad_lin.pth")
    with pytest.raises(InputError) as err:
        build_lpips(tmp_path / "bad_lin.pth", vgg)
    msg = str(err.value)
    assert "\n" not in msg and "bad_lin.pth" in msg
    assert "missing [lin4.model.1.weight]" in msg and "unexpected [lin9.model.1.weight]" in msg
    sd = _vgg_state()
    sd["features.1.weight"] = sd.pop("features.0.weight")
    torch.save(sd, tmp_path / "bad_vgg.pth")
    with pytest.raises(InputError, match=r"bad_vgg\.pth.*missing \[features\.0\.weight\].*"
                                         r"unexpected \[features\.1\.weight\]"):
        build_lpips(lin, tmp_path / "bad_vgg.pth")
    with pytest.raises(InputError, match="not found"):
        build_lpips(tmp_path / "nothing.pth", vgg)


def test_stage_uses_lpips_on_the_discriminators_slices(tmp_path):
    lin, vgg = _lpips_files(tmp_path)
    cfg = _tiny(lpips_weights=str(lin), vgg_weights=str(vgg), disc_start=0)  # perceptual: auto
    model = build_model(cfg, SHAPE)
    info = model.run_info()
    assert info["perceptual_kind"] == "lpips" and info["perceptual"].startswith("on (LPIPS")
    lp_in, d_in = [], []
    model.perceptual.register_forward_pre_hook(lambda m, a: lp_in.append(a[1].clone()))
    model.disc.image.register_forward_pre_hook(lambda m, a: d_in.append(a[0].detach().clone()))
    out = model.training_step(_volumes(), torch.Generator().manual_seed(1),
                              model.configure_optimizers(cfg["training"]), 0)
    assert out["perceptual_on"].item() == 1.0 and out["perceptual"].item() > 0
    assert lp_in[0].shape == (2, 1, 16, 16) and torch.equal(lp_in[0], d_in[1])  # the real slices
    with pytest.raises(InputError, match="lpips needs"):
        build_model(_tiny(perceptual="lpips"), SHAPE)
    with pytest.raises(InputError, match="lpips_weights is set without"):
        build_model(_tiny(lpips_weights=str(lin)), SHAPE)
    med = build_model(_tiny(perceptual="medicalnet", lpips_weights=str(lin), vgg_weights=str(vgg)), SHAPE)
    assert med.run_info()["perceptual_kind"] == "off" and med.perceptual is None  # no MedicalNet here
