"""The two training stages of the 3D latent diffusion baseline (Khader et al., Sci Rep 2023).

* :class:`VQGANStage` (``ldm.stage: vqgan``): trains the VQ-GAN of :mod:`baselines.ldm.vqgan` with
  ``l1_weight * L1 + commitment + perceptual_weight * P + image_gan_weight * G_2D +
  video_gan_weight * G_3D + gan_feat_weight * FM`` (the GAN and feature-matching terms from
  ``disc_start`` on) and, in the same step, the 2D slice and 3D patch discriminators of
  :mod:`baselines.ldm.discriminators` with ``image_gan_weight * hinge_2D + video_gan_weight *
  hinge_3D``. One depth slice per volume, drawn from the step's generator, feeds every 2D term
  (discriminator, feature matching, LPIPS) for the volume and its reconstruction. Adam, betas
  (0.5, 0.9), for both.
* :class:`LatentDiffusionStage` (``ldm.stage: diffusion``): freezes the stage-1 VQ-GAN (loaded from
  ``ldm.vqgan_run`` with weights_only=True and stored in this run's checkpoints, so sampling needs
  this run only), maps its pre-quantisation latents (B, code_dim, D/f, H/f, W/f) to [-1, 1] with
  the codebook's range (as Khader et al.: ``(z - min e) / (max e - min e) * 2 - 1``; both numbers
  are buffers of the ``codec`` module and logged), and trains the WDM U-Net
  (:func:`wdm.networks.build_network`) with :class:`wdm.diffusion.GaussianDiffusion` (cosine
  schedule, T = 300 in the default config) on them. Samples are decoded through the codebook.

Deviation, stated: stage 1 follows medicaldiffusion by default: their encoder / decoder (1 residual
block per encoder level, 2 per decoder level, GroupNorm 32 in the paper presets, replicate
padding, 1x1 pre/post-quantisation convs), 2D slice and 3D NLayer discriminators (64 channels, 3
layers), feature matching (weight 4), hinge losses with their 0.5 factor, L1 weight 4, perceptual
weight 4, the discriminators from step 10000 in the paper configs; the 3D MedicalNet perceptual
substitute is used unless LPIPS weights (``ldm.vqgan.lpips_weights`` / ``vgg_weights``) are given.
The CPU presets (small, tiny) take fewer GroupNorm groups (see
:data:`baselines.ldm.vqgan.VQGAN_PRESETS`). Upstream's Lightning loop runs the VQ-GAN forward once
per optimizer (a second codebook update and slice draw for the discriminator step); here one
forward serves both updates. Stage 2 follows upstream by default through the ``diffusion`` section
(epsilon-prediction with L1 loss, fixed-small posterior variance, beta clipped at 0.9999) and
``training.ema`` 0.995, the x0 / MSE / fixed-large variant being ours by config; the denoiser is
WDM's U-Net, not their Unet3D.

Both stages register as model ``ldm`` (:func:`wdm.model.register_model`), chosen by ``ldm.stage``.
Stage 1 trains into ``{model folder}/vqgan``, stage 2 into ``{model folder}/run`` and, unless
``ldm.vqgan_run`` says otherwise, freezes the VQ-GAN of the sibling ``vqgan`` folder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from baselines.ldm.config import stage_config
from baselines.ldm.discriminators import build_discriminators, draw_slice_indices, take_slices
from baselines.ldm.losses import (
    MedicalNetPerceptual,
    PerceptualTerm,
    build_perceptual,
    feature_matching_loss,
    hinge_d_loss,
    hinge_g_loss,
    perceptual_kind,
)
from baselines.ldm.lpips import LPIPS
from baselines.ldm.vqgan import ARCH_KEYS, VQGAN, build_vqgan, vqgan_settings
from eval.features import medicalnet_resnet
from wdm.checkpoints import latest_checkpoint, load_checkpoint
from wdm.io import InputError, sha256_file
from wdm.model import BenchmarkModel, DiffusionModel, register_model
from wdm.oom import STATUS_OOM, UpstreamOutOfMemory, read_status

__all__ = ["VQGANStage", "LatentDiffusionStage", "FrozenCodec", "load_vqgan_run"]

log = logging.getLogger(__name__)

_BETAS = (0.5, 0.9)


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """No weight gradients for ``module`` inside (as Lightning's optimizer toggling upstream)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@register_model("ldm", stage="vqgan")
class VQGANStage(BenchmarkModel):
    """Stage 1: the VQ-GAN and its 2D / 3D patch discriminators. ``cfg``: resolved run config."""

    single_objective = False  # two networks updated in alternation

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        super().__init__(cfg, volume_shape)
        self.settings = s = vqgan_settings(cfg["ldm"]["vqgan"])
        self.vqgan = build_vqgan(s)
        self.latent_shape = self.vqgan.latent_shape(self.volume_shape)
        self.disc = build_discriminators(s)
        self.set_perceptual(build_perceptual(s))
        log.info("ldm stage 1 (VQ-GAN): latents %s, %d codes; discriminators 2D %s, 3D %s; "
                 "perceptual loss %s", self.latent_shape, s["n_codes"],
                 "on" if self.disc.image is not None else "off",
                 "on" if self.disc.video is not None else "off", self.perceptual_label)

    def set_perceptual(self, term: PerceptualTerm) -> None:
        """Use ``term`` as the perceptual loss (``perceptual``: its module or None)."""
        self.perceptual_term = term
        self.perceptual = term.module
        self.perceptual_label = term.label

    @classmethod
    def stage_config(cls, cfg: dict, run_dir: Path) -> dict:
        """Steps and batch size from ``ldm.vqgan``; no stage-1 run to read."""
        return stage_config(cfg, "vqgan")

    @classmethod
    def flop_share(cls, cfg: dict) -> float:
        """``ldm.vqgan.flop_share`` of the model's training compute."""
        return float(cfg["ldm"]["vqgan"]["flop_share"])

    def modules(self) -> dict[str, nn.Module]:
        return {"vqgan": self.vqgan, "disc": self.disc}

    @classmethod
    def for_probe(cls, cfg: dict, volume_shape: Sequence[int]) -> tuple[VQGANStage, list[str]]:
        """Perceptual weights absent here get an untrained stand-in (a probe never downloads; the
        cost does not depend on weights): LPIPS files that are missing, or MedicalNet weights to
        download (``hub:``); with ``auto:`` the run trains without the term, and so does the probe."""
        vq = cfg["ldm"]["vqgan"]
        s = vqgan_settings(vq)
        if s["perceptual_weight"] > 0 and perceptual_kind(s) == "lpips":
            if all(Path(s[k]).is_file() for k in ("lpips_weights", "vgg_weights")):
                return cls(cfg, volume_shape), []
            local = {**vq, "perceptual": "medicalnet", "perceptual_weights": None}
            model = cls({**cfg, "ldm": {**cfg["ldm"], "vqgan": local}}, volume_shape)
            model.set_perceptual(PerceptualTerm(LPIPS(), "lpips", "on (untrained LPIPS, probe)"))
            return model, ["untrained LPIPS VGG-16 perceptual network"]
        weights = vq["perceptual_weights"]
        if not str(weights).startswith("hub:"):
            return cls(cfg, volume_shape), []
        local = {**cfg, "ldm": {**cfg["ldm"], "vqgan": {**vq, "perceptual_weights": "auto:" + weights[4:]}}}
        model = cls(local, volume_shape)
        if model.perceptual is not None or not s["perceptual_weight"] > 0:
            return model, []
        net = MedicalNetPerceptual(medicalnet_resnet(vq["perceptual_depth"]))
        model.set_perceptual(PerceptualTerm(net, "medicalnet", "on (untrained MedicalNet, probe)"))
        return model, ["untrained MedicalNet perceptual network"]

    def run_info(self) -> dict[str, Any]:
        """Facts recorded in ``train_profile.json`` (``model_info``)."""
        return {"stage": "vqgan", "latent_shape": list(self.latent_shape),
                "perceptual": self.perceptual_label, "perceptual_kind": self.perceptual_term.kind,
                "discriminators": {"image_2d": self.disc.image is not None,
                                   "video_3d": self.disc.video is not None},
                "vqgan": self.settings}

    def configure_optimizers(self, training: Mapping[str, Any]) -> dict[str, torch.optim.Optimizer]:
        """Adam (betas (0.5, 0.9)) for the VQ-GAN and one for both discriminators (none without)."""
        s = self.settings
        opts = {"vqgan": torch.optim.Adam(self.vqgan.parameters(), lr=s["lr"], betas=_BETAS)}
        disc = list(self.disc.parameters())
        if disc:
            opts["disc"] = torch.optim.Adam(disc, lr=s["disc_lr"], betas=_BETAS)
        return opts

    def training_step(self, x: torch.Tensor, generator: torch.Generator,
                      optimizers: dict[str, torch.optim.Optimizer], step: int, *,
                      shard: tuple[int, int] | None = None,
                      grad_clip: float | None = None) -> dict[str, torch.Tensor]:
        """One VQ-GAN update and (from ``disc_start`` on) one update of the discriminators.

        ``x``: (B, 1, D, H, W) in [-1, 1]; ``step``: 0-based. The depth slice of every 2D term is
        drawn first from ``generator``, then the quantiser's draws. Returns the loss terms
        (``loss`` first; ``g_*``, ``feat_match``, ``d_*`` unweighted, ``g_adv`` and ``d_loss`` as
        optimised). ``grad_clip`` (stage 1's ``ldm.vqgan.grad_clip``; Khader et al.: 1.0) clips
        each update's gradient norm, the VQ-GAN's and the discriminators' apart, as Lightning's
        ``gradient_clip_val`` per optimizer. ``shard`` does not apply (one process).
        """
        gan_on = step >= self.settings["disc_start"]
        idx = draw_slice_indices(x, generator)
        with _frozen(self.disc):
            x_rec, info = self.vqgan(x, generator)
            frames, frames_rec = take_slices(x, idx), take_slices(x_rec, idx)
            g = self._generator_terms(x, x_rec, frames, frames_rec, info, gan_on)
            optimizers["vqgan"].zero_grad(set_to_none=True)
            g["loss"].backward()
        _clip(self.vqgan, grad_clip)
        optimizers["vqgan"].step()
        d = self._discriminator_step(x, x_rec.detach(), frames, frames_rec.detach(), optimizers,
                                     gan_on, grad_clip)
        out = {k: v.detach() for k, v in {**g, **d}.items()}
        return {**out, "perplexity": info["perplexity"], "restarted": info["restarted"],
                "perceptual_on": torch.tensor(float(self.perceptual is not None))}

    def _generator_terms(self, x: torch.Tensor, x_rec: torch.Tensor, frames: torch.Tensor,
                         frames_rec: torch.Tensor, info: dict[str, torch.Tensor],
                         gan_on: bool) -> dict[str, torch.Tensor]:
        """The VQ-GAN's loss and its terms; volumes (B, 1, D, H, W), slices (B, 1, H, W)."""
        s = self.settings
        rec = F.l1_loss(x_rec, x)
        loss = s["l1_weight"] * rec + info["commitment"]
        perc = x.new_zeros(())
        if self.perceptual is not None:
            self.perceptual.to(x.device)
            pair = (frames_rec, frames) if self.perceptual_term.on_slices else (x_rec, x)
            perc = self.perceptual(*pair).mean()
            loss = loss + s["perceptual_weight"] * perc
        adv = self._adversarial_terms(x, x_rec, frames, frames_rec) if gan_on else {
            k: x.new_zeros(()) for k in ("g_image", "g_video", "feat_match", "g_adv")}
        loss = loss + adv["g_adv"] + s["gan_feat_weight"] * adv["feat_match"]
        return {"loss": loss, "rec_l1": rec, "commitment": info["commitment"], "perceptual": perc,
                **adv}

    def _adversarial_terms(self, x: torch.Tensor, x_rec: torch.Tensor, frames: torch.Tensor,
                           frames_rec: torch.Tensor) -> dict[str, torch.Tensor]:
        """``g_image`` / ``g_video`` (-mean logits of the reconstruction), their weighted sum
        ``g_adv`` and ``feat_match`` (both discriminators' feature matching, unweighted)."""
        s = self.settings
        out = {k: x.new_zeros(()) for k in ("g_image", "g_video", "feat_match")}
        for kind, net, fake, real in (("image", self.disc.image, frames_rec, frames),
                                      ("video", self.disc.video, x_rec, x)):
            if net is None:
                continue
            logits, feats_fake = net(fake)
            out[f"g_{kind}"] = hinge_g_loss(logits)
            if s["gan_feat_weight"] > 0:
                with torch.no_grad():
                    feats_real = net(real)[1]
                out["feat_match"] = out["feat_match"] + feature_matching_loss(feats_fake, feats_real)
        out["g_adv"] = s["image_gan_weight"] * out["g_image"] + s["video_gan_weight"] * out["g_video"]
        return out

    def _discriminator_step(self, x: torch.Tensor, x_rec: torch.Tensor, frames: torch.Tensor,
                            frames_rec: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
                            gan_on: bool, grad_clip: float | None = None) -> dict[str, torch.Tensor]:
        """One Adam step on ``image_gan_weight * hinge_2D + video_gan_weight * hinge_3D`` (detached
        reconstructions); zeros before ``disc_start`` or without discriminators."""
        s = self.settings
        out = {k: x.new_zeros(()) for k in ("d_image", "d_video", "d_loss")}
        if not gan_on or "disc" not in optimizers:
            return out
        optimizers["disc"].zero_grad(set_to_none=True)
        if self.disc.image is not None:
            out["d_image"] = hinge_d_loss(self.disc.image(frames)[0], self.disc.image(frames_rec)[0])
        if self.disc.video is not None:
            out["d_video"] = hinge_d_loss(self.disc.video(x)[0], self.disc.video(x_rec)[0])
        out["d_loss"] = s["image_gan_weight"] * out["d_image"] + s["video_gan_weight"] * out["d_video"]
        out["d_loss"].backward()
        _clip(self.disc, grad_clip)
        optimizers["disc"].step()
        return out

    def loss(self, x: torch.Tensor, generator: torch.Generator,
             shard: tuple[int, int] | None = None) -> torch.Tensor:
        """Reconstruction objective without updates of the discriminator (for inspection)."""
        x_rec, info = self.vqgan(x, generator)
        return self.settings["l1_weight"] * F.l1_loss(x_rec, x) + info["commitment"]

    def generate(self, n: int, generator: torch.Generator, **sampling: Any) -> torch.Tensor:
        """Stage 1 generates nothing: an error that names the stage to sample."""
        raise InputError("this is an ldm stage-1 (VQ-GAN) run, which generates nothing; sample the "
                         "stage-2 run (ldm.stage: diffusion) trained on it")


def _clip(module: nn.Module, max_norm: float | None) -> None:
    """Clip the gradient norm of ``module``'s parameters to ``max_norm`` (None: nothing)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.grad is not None],
                                       max_norm)


class FrozenCodec(nn.Module):
    """The frozen stage-1 VQ-GAN plus the latent normalisation (buffers ``lo``, ``hi``, ``ready``).

    ``normalize``: (B, C, d, h, w) latents -> [-1, 1] via the codebook range; ``denormalize`` inverts
    it. Always in eval mode (the codebook must not move); no parameter requires gradients.
    """

    def __init__(self, vqgan: VQGAN) -> None:
        super().__init__()
        self.vqgan = vqgan
        for p in self.vqgan.parameters():
            p.requires_grad_(False)
        self.register_buffer("lo", torch.tensor(-1.0))
        self.register_buffer("hi", torch.tensor(1.0))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.train(False)

    def train(self, mode: bool = True) -> FrozenCodec:
        return super().train(False)

    def set_range(self) -> None:
        """Record the codebook's value range as the latent normalisation."""
        emb = self.vqgan.quantizer.embeddings
        self.lo.copy_(emb.min())
        self.hi.copy_(emb.max())
        if not float(self.hi - self.lo) > 0:
            raise InputError("the stage-1 codebook is constant; the VQ-GAN run is not usable")
        self.ready.fill_(True)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.lo) / (self.hi - self.lo) * 2.0 - 1.0

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z + 1.0) / 2.0 * (self.hi - self.lo) + self.lo


def load_vqgan_run(run_dir: str | Path, settings: dict, volume_shape: Sequence[int]) -> dict:
    """The stage-1 VQ-GAN state dict of the latest checkpoint in ``run_dir`` (weights_only=True).

    Raises :class:`InputError` if the run is missing, is not an ldm stage-1 run, was trained on other
    volume shapes or with a different VQ-GAN architecture than ``settings``.
    """
    run_dir = Path(run_dir)
    status, profile = read_status(run_dir / "train_profile.json")
    if status == STATUS_OOM:
        raise UpstreamOutOfMemory(f"stage 1 (VQ-GAN, {run_dir}) ran out of memory: "
                                  f"{profile.get('error')}")
    ckpt_path = latest_checkpoint(run_dir)
    if ckpt_path is None:
        raise InputError(f"ldm.vqgan_run: {run_dir} holds no checkpoint; train stage 1 first "
                         "(ldm.stage: vqgan)")
    ckpt = load_checkpoint(ckpt_path)
    cfg = ckpt["config"]
    if cfg.get("model") != "ldm" or cfg.get("ldm", {}).get("stage") != "vqgan":
        raise InputError(f"{ckpt_path}: not an ldm stage-1 run (model={cfg.get('model')!r}, "
                         f"ldm.stage={cfg.get('ldm', {}).get('stage')!r})")
    if tuple(ckpt["data"]["shape"]) != tuple(volume_shape):
        raise InputError(f"{ckpt_path}: VQ-GAN trained on volumes {tuple(ckpt['data']['shape'])}, "
                         f"this run's data are {tuple(volume_shape)}")
    theirs = vqgan_settings(cfg["ldm"]["vqgan"])
    diff = {k: (theirs.get(k), settings.get(k)) for k in ARCH_KEYS if theirs.get(k) != settings.get(k)}
    if diff:
        raise InputError(f"{ckpt_path}: ldm.vqgan differs from this config in {diff} "
                         "(stage-1 value, this value); use the same ldm.vqgan section for both stages")
    if not (run_dir / "train_profile.json").exists():
        log.warning("%s: stage-1 run has not finished; using its latest checkpoint %s",
                    run_dir, ckpt_path.name)
    log.info("ldm stage 2: frozen VQ-GAN from %s (step %d)", ckpt_path, ckpt["step"])
    return ckpt["model"]["vqgan"]


@register_model("ldm", stage="diffusion")
class LatentDiffusionStage(DiffusionModel):
    """Stage 2: diffusion U-Net on normalised VQ-GAN latents. ``cfg``: resolved run config.

    A :class:`~wdm.model.DiffusionModel` whose representation is the frozen codec: ``encode`` =
    VQ-GAN encoder + normalisation, ``decode`` = denormalisation + (optionally quantised) decoder,
    ``clip_x0`` = the default clamp of the normalised latents to [-1, 1].
    """

    def __init__(self, cfg: dict, volume_shape: Sequence[int]) -> None:
        lcfg = cfg["ldm"]
        self.settings = vqgan_settings(lcfg["vqgan"])
        self.quantize = bool(lcfg["quantize_samples"])
        self.codec = FrozenCodec(build_vqgan(self.settings))
        self.latent_shape = self.codec.vqgan.latent_shape(volume_shape)
        super().__init__(cfg, volume_shape, self.latent_shape)
        self.vqgan_run = lcfg["vqgan_run"]
        if self.vqgan_run and Path(self.vqgan_run).is_dir():
            sd = load_vqgan_run(self.vqgan_run, self.settings, volume_shape)
            self.codec.vqgan.load_state_dict(sd)
            self.codec.set_range()
            log.info("ldm stage 2: latents %s normalised with codebook range [%.4g, %.4g]",
                     self.latent_shape, float(self.codec.lo), float(self.codec.hi))
        elif self.vqgan_run:
            log.info("ldm.vqgan_run %s not found: the VQ-GAN must come from this run's checkpoint",
                     self.vqgan_run)

    @classmethod
    def stage_config(cls, cfg: dict, run_dir: Path) -> dict:
        """``ldm.vqgan_run`` defaults to the stage-1 folder beside ``run_dir`` (``../vqgan``)."""
        return stage_config(cfg, "diffusion", cfg["ldm"].get("vqgan_run") or run_dir.parent / "vqgan")

    @classmethod
    def flop_share(cls, cfg: dict) -> float:
        """The training compute stage 1 leaves: ``1 - ldm.vqgan.flop_share``."""
        return 1.0 - float(cfg["ldm"]["vqgan"]["flop_share"])

    @classmethod
    def upstream_identity(cls, cfg: dict) -> dict[str, Any]:
        """The SHA-256 of the stage-1 checkpoint this stage freezes (a retrained VQ-GAN makes
        another run)."""
        last = latest_checkpoint(cfg["ldm"]["vqgan_run"]) if cfg["ldm"]["vqgan_run"] else None
        return {"vqgan_checkpoint": last.name if last else None,
                "vqgan_checkpoint_sha256": sha256_file(last) if last else None}

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network, "codec": self.codec}

    def run_info(self) -> dict[str, Any]:
        """Facts recorded in ``train_profile.json`` (``model_info``)."""
        return {"stage": "diffusion", "vqgan_run": self.vqgan_run,
                "latent_shape": list(self.latent_shape),
                "latent_range": [float(self.codec.lo), float(self.codec.hi)],
                "n_trainable_parameters": sum(p.numel() for p in self.network.parameters())}

    @classmethod
    def for_probe(cls, cfg: dict, volume_shape: Sequence[int]) -> tuple[LatentDiffusionStage, list[str]]:
        """Without its stage-1 run a probe gets the random VQ-GAN's codebook range."""
        model = cls(cfg, volume_shape)
        if bool(model.codec.ready):
            return model, []
        model.codec.set_range()
        return model, ["untrained stage-1 VQ-GAN"]

    def _check_ready(self) -> None:
        if not bool(self.codec.ready):
            raise InputError(f"ldm stage 2 has no VQ-GAN: ldm.vqgan_run={self.vqgan_run!r} is not a "
                             "stage-1 run folder and no stage-2 checkpoint was loaded")

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) in [-1, 1] -> normalised latents (B, C, D/f, H/f, W/f)."""
        self._check_ready()
        return self.codec.normalize(self.codec.vqgan.encode(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> (B, 1, D, H, W) voxels through the (quantising) decoder."""
        return self.codec.vqgan.decode(self.codec.denormalize(z), quantize=self.quantize)

    def generate(self, n: int, generator: torch.Generator, **sampling: Any) -> torch.Tensor:
        """Sample ``n`` latents and decode them: (n, 1, D, H, W) voxels in [-1, 1]."""
        self._check_ready()
        return super().generate(n, generator, **sampling)
