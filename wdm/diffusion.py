"""Gaussian diffusion (Ho et al. 2020; WDM, Friedrich et al. 2024, Sec. 2).

The process is plain data: schedules are named pure functions and :class:`GaussianDiffusion`
holds only float64 schedule tensors and three named choices. It never owns the network (the model
is an argument) and knows nothing of wavelets: WDM runs it on wavelet coefficients, the
voxel-space baseline on voxels, the latent diffusion baseline on VQ-GAN latents. Shapes below:
``x`` is any (B, ...) tensor, ``t`` a (B,) long tensor of timesteps.

Forward process:  q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).
Choices (``diffusion`` section of a run config):

* ``prediction``: the network's output is x_0 (``x0``, WDM's) or the noise (``eps``, Ho et al.;
  Khader et al.'s "Medical Diffusion"). Samplers always see x_0 (:meth:`GaussianDiffusion.predict_x0`).
* ``loss``: mean squared (``mse``, WDM's) or absolute (``l1``, Khader et al.'s) error of that output.
* ``variance``: the ancestral sampler's per-step variance, ``fixed_large`` (beta_t, Ho et al.'s
  sigma^2 = beta choice, WDM's) or ``fixed_small`` (the posterior variance
  beta_t (1 - abar_{t-1}) / (1 - abar_t), Khader et al.'s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = [
    "PREDICTIONS",
    "LOSSES",
    "VARIANCES",
    "linear_beta_schedule",
    "cosine_beta_schedule",
    "SCHEDULES",
    "GaussianDiffusion",
    "Denoiser",
]

#: A denoiser maps (x_t, t) to a prediction of x_0 (same shape as x_t).
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

PREDICTIONS: tuple[str, ...] = ("x0", "eps")
LOSSES: tuple[str, ...] = ("mse", "l1")
VARIANCES: tuple[str, ...] = ("fixed_large", "fixed_small")


def linear_beta_schedule(timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas (Ho et al. 2020), WDM's choice: T = 1000, 1e-4 .. 0.02. Returns (T,) float64."""
    return torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)


def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Cosine schedule (Nichol & Dhariwal 2021, eq. 17), used by the 3D LDM baseline. (T,) float64.

    Betas are clipped at ``max_beta``: 0.999 in Nichol & Dhariwal, 0.9999 in Khader et al.'s code.
    """
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    abar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


SCHEDULES: dict[str, Callable[..., torch.Tensor]] = {
    "linear": linear_beta_schedule,
    "cosine": cosine_beta_schedule,
}


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] reshaped to (B, 1, ..., 1) in ``like``'s dtype and device."""
    out = values.to(t.device)[t].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1))).to(like.device)


@dataclass
class GaussianDiffusion:
    """Schedule tensors and the closed-form pieces of a DDPM.

    Args:
        betas: (T,) noise variances; ``alphas_cumprod`` etc. are derived in float64.
        prediction: what the network outputs, one of :data:`PREDICTIONS`.
        loss: the training error, one of :data:`LOSSES`.
        variance: the ancestral sampler's variance, one of :data:`VARIANCES`.
    """

    betas: torch.Tensor
    prediction: str = "x0"
    loss: str = "mse"
    variance: str = "fixed_large"
    alphas_cumprod: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
        for name, value, allowed in (("prediction", self.prediction, PREDICTIONS),
                                     ("loss", self.loss, LOSSES),
                                     ("variance", self.variance, VARIANCES)):
            if value not in allowed:
                raise ValueError(f"diffusion.{name}: {value!r} is not one of {list(allowed)}")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)

    @classmethod
    def from_config(cls, cfg: dict) -> GaussianDiffusion:
        """Build from the ``diffusion`` config section (schedule, timesteps, beta_start, beta_end,
        max_beta, prediction, loss, variance; absent choices take the dataclass defaults)."""
        name = cfg.get("schedule", "linear")
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; allowed: {sorted(SCHEDULES)}")
        if name == "linear":
            betas = linear_beta_schedule(cfg["timesteps"], cfg["beta_start"], cfg["beta_end"])
        elif "max_beta" in cfg:
            betas = cosine_beta_schedule(cfg["timesteps"], max_beta=cfg["max_beta"])
        else:
            betas = cosine_beta_schedule(cfg["timesteps"])
        choices = {k: cfg[k] for k in ("prediction", "loss", "variance") if k in cfg}
        return cls(betas, **choices)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0): sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. Shapes as x0."""
        abar = _gather(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def training_loss(
        self,
        model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        generator: torch.Generator | None = None,
        shard: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The training error with uniform timesteps. Returns a scalar.

        Mean of ``(model(x_t, t) - target)^2`` (``loss: mse``) or of its absolute value (``l1``)
        over all elements, the target being x0 (``prediction: x0``; WDM's objective) or the noise
        (``eps``; Khader et al.'s, with ``l1``). Timesteps and noise come from ``generator`` (on
        x0's device) so training reproduces.

        Args:
            model: the network (x_t, t) -> its output (x0 or noise, as ``prediction``).
            x0: (B, ...) clean batch.
            generator: source of all randomness.
            shard: ``(start, global_batch)`` when ``x0`` holds rows ``start:start+B`` of a larger
                data-parallel batch: t (global_batch,) and noise (global_batch, ...) are drawn for
                the whole global batch and this shard's rows are used, so every process consumes
                the generator exactly as a single process with the global batch would.
        """
        b = x0.shape[0]
        start, total = (0, b) if shard is None else (int(shard[0]), int(shard[1]))
        if not 0 <= start <= total - b:
            raise ValueError(f"shard {shard} does not hold a batch of {b} rows")
        dev = generator.device if generator is not None else x0.device
        rows = slice(start, start + b)
        t = torch.randint(0, self.num_timesteps, (total,), generator=generator, device=dev)[rows]
        noise = torch.randn((total, *x0.shape[1:]), generator=generator, device=dev, dtype=x0.dtype)
        t, noise = t.to(x0.device), noise[rows].to(x0.device)
        x_t = self.q_sample(x0, t, noise)
        err = model(x_t, t) - (x0 if self.prediction == "x0" else noise)
        return err.abs().mean() if self.loss == "l1" else torch.mean(err**2)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The x0 a network output ``out`` implies at (B,) timesteps ``t``; shapes as ``x_t``.

        ``prediction: x0``: ``out`` itself. ``eps``: (x_t - sqrt(1 - abar_t) out) / sqrt(abar_t)
        (Ho et al. eq. 15 solved for x0).
        """
        if self.prediction == "x0":
            return out
        abar = _gather(self.alphas_cumprod, t, x_t)
        return (x_t - (1 - abar).sqrt() * out) / abar.sqrt()

    def alpha_bar(self, t: int) -> float:
        """abar_t for an integer t; abar_{-1} = 1 (the clean end of the chain)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def eps_from_x0(self, x_t: torch.Tensor, t: int, x0: torch.Tensor) -> torch.Tensor:
        """Noise implied by a prediction of x0: (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t)."""
        abar = self.alpha_bar(t)
        return (x_t - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)

    def posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: int, s: int
    ) -> tuple[torch.Tensor, float, float]:
        """q(x_s | x_t, x0) for s < t on a possibly respaced chain (Ho et al. eq. 7).

        With abar_t, abar_s and beta' = 1 - abar_t / abar_s:
            mean = sqrt(abar_s) beta' / (1 - abar_t) x0 + sqrt(1 - beta') (1 - abar_s) / (1 - abar_t) x_t
            posterior variance = beta' (1 - abar_s) / (1 - abar_t);  "fixed large" variance = beta'.
        Returns (mean, posterior_variance, fixed_large_variance).
        """
        abar_t, abar_s = self.alpha_bar(t), self.alpha_bar(s)
        beta = 1.0 - abar_t / abar_s
        c0 = math.sqrt(abar_s) * beta / (1.0 - abar_t)
        ct = math.sqrt(1.0 - beta) * (1.0 - abar_s) / (1.0 - abar_t)
        return c0 * x0 + ct * x_t, beta * (1.0 - abar_s) / (1.0 - abar_t), beta

    def step_variance(self, t: int, s: int) -> float:
        """The ancestral sampler's variance of the step t -> s (``variance``; see :meth:`posterior`)."""
        abar_t, abar_s = self.alpha_bar(t), self.alpha_bar(s)
        beta = 1.0 - abar_t / abar_s
        return beta * (1.0 - abar_s) / (1.0 - abar_t) if self.variance == "fixed_small" else beta
