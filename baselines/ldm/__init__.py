"""3D latent diffusion baseline (Khader et al., "Medical Diffusion", Sci Rep 2023): a VQ-GAN, then
a diffusion U-Net on its latents.

One subpackage, one model name (``ldm``), two training stages chosen by ``ldm.stage`` in the run
config: ``vqgan`` (:class:`~baselines.ldm.stages.VQGANStage`) and ``diffusion``
(:class:`~baselines.ldm.stages.LatentDiffusionStage`, which reads the stage-1 run named by
``ldm.vqgan_run``). One config file (``config/models/ldm.yaml``) describes both stages;
:func:`~baselines.ldm.config.stage_config` (CLI: ``python -m baselines.ldm stage-config``) derives
each stage's run config from it, which is what the two Snakemake rules in
``workflow/rules/models/ldm.smk`` do before calling ``wdm-bench train``.
"""

from __future__ import annotations

from collections.abc import Sequence

from baselines.ldm.stages import LatentDiffusionStage, VQGANStage

__all__ = ["Model", "VQGANStage", "LatentDiffusionStage"]


class Model:
    """The ``ldm`` entry of the benchmark: ``Model(cfg, shape)`` is the stage ``cfg['ldm']['stage']``
    names (a :class:`VQGANStage` or a :class:`LatentDiffusionStage`)."""

    name = "ldm"

    def __new__(cls, cfg: dict, volume_shape: Sequence[int]) -> VQGANStage | LatentDiffusionStage:  # type: ignore[misc]
        stage = cfg["ldm"]["stage"]
        return VQGANStage(cfg, volume_shape) if stage == "vqgan" else LatentDiffusionStage(cfg, volume_shape)
