"""WDM: 3D wavelet diffusion models (Friedrich et al., DGM4MICCAI 2024, arXiv 2402.19043)."""

__version__ = "0.1.0"
