"""HA-GAN baseline (Sun et al., IEEE JBHI 2022): ``networks`` (generator, discriminators,
encoders and width presets), ``losses`` (BCE, L1, downsampling), ``model`` (the alternating
training step and sampling on the interface of :mod:`wdm.model`)."""

from baselines.hagan.model import Model
from baselines.hagan.networks import HAGAN_PRESETS

__all__ = ["Model", "HAGAN_PRESETS"]
