"""Samplers: small stateless functions with one signature (k-diffusion style).

    sampler(denoise, diffusion, shape, *, generator, steps, eta, progress, device, dtype) -> x0

``denoise(x_t, t)`` returns a prediction of x_0 for a (B,) long tensor of timesteps; for WDM it is
the network followed by wavelet clipping, so the samplers never see a wavelet. All randomness comes
from the explicit ``torch.Generator`` (on the device the sample is made on): the same generator
state gives the same sample. ``steps`` < T runs on an evenly spaced sub-chain of timesteps
(Nichol & Dhariwal 2021, Sec. 4); steps = T (or None) is the full chain. Every sampler takes the
same options; one that has no use for an option (``eta`` for ancestral DDPM) ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from wdm.diffusion import Denoiser, GaussianDiffusion

__all__ = ["SAMPLERS", "timestep_sequence", "ddpm", "ddim", "get_sampler"]


def timestep_sequence(num_timesteps: int, steps: int) -> list[int]:
    """Evenly spaced timesteps from T-1 down to 0, ``steps`` of them, strictly decreasing."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    ts = torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(ts), reverse=True)


def _randn(shape: Sequence[int], generator: torch.Generator, like_device: torch.device | str,
           dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, device=generator.device,
                       dtype=dtype).to(like_device)


def _chain(ts: list[int], batch: int, device: torch.device | str, desc: str,
           progress: bool) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Walk the timestep chain: (t, next timestep s or -1 at the end, (batch,) tensor of t)."""
    for i, t in enumerate(tqdm(ts, desc=desc, disable=not progress, leave=False)):
        s = ts[i + 1] if i + 1 < len(ts) else -1
        yield t, s, torch.full((batch,), t, dtype=torch.long, device=device)


def ddpm(
    denoise: Denoiser,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    steps: int | None = None,
    progress: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    eta: float = 1.0,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2).

    x_T ~ N(0, I); for each (t, s) on the chain: x0_hat = denoise(x_t, t),
    x_s = posterior_mean(x0_hat, x_t) + sqrt(var) z with z ~ N(0, I), except at the last step;
    var = beta' (``diffusion.variance`` fixed_large, WDM's) or the posterior variance
    (fixed_small, Khader et al.'s), see :meth:`GaussianDiffusion.step_variance`. WDM uses
    steps = T = 1000. ``eta`` is ignored. Returns the final x0 prediction, shape ``shape``.
    """
    ts = timestep_sequence(diffusion.num_timesteps, steps or diffusion.num_timesteps)
    x = _randn(shape, generator, device, dtype)
    x0 = x
    for t, s, tt in _chain(ts, shape[0], device, "DDPM", progress):
        x0 = denoise(x, tt)
        if s < 0:
            break
        mean, _, _ = diffusion.posterior(x0, x, t, s)
        x = mean + math.sqrt(diffusion.step_variance(t, s)) * _randn(shape, generator, device, dtype)
    return x0


def ddim(
    denoise: Denoiser,
    diffusion: GaussianDiffusion,
    shape: Sequence[int],
    *,
    generator: torch.Generator,
    steps: int | None = None,
    progress: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    eta: float = 0.0,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12); eta = 0 is deterministic given x_T.

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s).
    Returns the final x0 prediction, shape ``shape``.
    """
    ts = timestep_sequence(diffusion.num_timesteps, steps or diffusion.num_timesteps)
    x = _randn(shape, generator, device, dtype)
    x0 = x
    for t, s, tt in _chain(ts, shape[0], device, "DDIM", progress):
        x0 = denoise(x, tt)
        if s < 0:
            break
        abar_t, abar_s = diffusion.alpha_bar(t), diffusion.alpha_bar(s)
        eps = diffusion.eps_from_x0(x, t, x0)
        sigma = eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)
        x = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _randn(shape, generator, device, dtype)
    return x0


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm, "ddim": ddim}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """Look a sampler up by name; an unknown name lists the allowed ones."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; allowed: {sorted(SAMPLERS)}") from None
