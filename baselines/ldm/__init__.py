"""3D latent diffusion baseline (Khader et al., "Medical Diffusion", Sci Rep 2023): a VQ-GAN, then
a diffusion U-Net on its latents.

One subpackage, one model name (``ldm``), two registered training stages chosen by ``ldm.stage``:
``vqgan`` (:class:`~baselines.ldm.stages.VQGANStage`) and ``diffusion``
(:class:`~baselines.ldm.stages.LatentDiffusionStage`, which freezes the stage-1 run). One config
file (``config/models/ldm.yaml``) describes both; :func:`~baselines.ldm.config.stage_config` derives
each stage's run config from it (``wdm-bench train --stage vqgan|diffusion`` calls it through
:func:`wdm.model.configure_stage`). The ``ldm`` section of a run config is validated by this
package's ``config.schema.yaml``.
"""

from baselines.ldm.stages import LatentDiffusionStage, VQGANStage

__all__ = ["VQGANStage", "LatentDiffusionStage"]
