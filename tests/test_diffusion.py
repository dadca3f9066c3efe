"""Gaussian diffusion pieces and the samplers, with hand-checkable expectations."""

from __future__ import annotations

import math

import pytest
import torch

from wdm.diffusion import GaussianDiffusion, cosine_beta_schedule, linear_beta_schedule
from wdm.samplers import SAMPLERS, ddim, ddpm, get_sampler, timestep_sequence


def test_linear_schedule_endpoints():
    b = linear_beta_schedule(1000, 1e-4, 0.02)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    d = GaussianDiffusion(b)
    assert d.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4)
    assert d.alphas_cumprod[-1].item() < 1e-4  # essentially pure noise at t = T-1


def test_cosine_schedule_bounds():
    b = cosine_beta_schedule(300)
    assert b.shape == (300,) and (b > 0).all() and (b <= 0.999).all()


def test_from_config_rejects_unknown_schedule():
    with pytest.raises(ValueError, match="allowed"):
        GaussianDiffusion.from_config({"schedule": "quadratic", "timesteps": 10})


def test_q_sample_by_hand():
    d = GaussianDiffusion(linear_beta_schedule(10, 0.1, 0.1))  # abar_t = 0.9^(t+1)
    x0 = torch.ones(2, 3)
    noise = torch.full((2, 3), 2.0)
    t = torch.tensor([0, 1])
    out = d.q_sample(x0, t, noise)
    assert out[0, 0].item() == pytest.approx(math.sqrt(0.9) + math.sqrt(0.1) * 2)
    assert out[1, 0].item() == pytest.approx(math.sqrt(0.81) + math.sqrt(0.19) * 2)


def test_posterior_consistent_with_one_step_chain():
    # With s = t-1 the posterior variance is beta_t (1-abar_{t-1}) / (1-abar_t) (Ho et al. eq. 7).
    d = GaussianDiffusion(linear_beta_schedule(100))
    t = 50
    _, var, var_large = d.posterior(torch.zeros(1), torch.zeros(1), t, t - 1)
    bt = d.betas[t].item()
    abar_t, abar_s = d.alphas_cumprod[t].item(), d.alphas_cumprod[t - 1].item()
    assert var_large == pytest.approx(bt)
    assert var == pytest.approx(bt * (1 - abar_s) / (1 - abar_t))


def test_training_loss_zero_for_perfect_model_and_reproducible():
    d = GaussianDiffusion(linear_beta_schedule(50))
    x0 = torch.randn(3, 8, 2, 2, 2)
    perfect = lambda x_t, t: x0  # noqa: E731
    assert d.training_loss(perfect, x0, torch.Generator().manual_seed(0)).item() == 0.0
    model = lambda x_t, t: x_t * 0.5  # noqa: E731
    a = d.training_loss(model, x0, torch.Generator().manual_seed(3))
    b = d.training_loss(model, x0, torch.Generator().manual_seed(3))
    assert a.item() == b.item() and a.item() > 0


def test_timestep_sequence():
    assert timestep_sequence(1000, 1000) == list(range(999, -1, -1))
    ts = timestep_sequence(1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
    assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
    with pytest.raises(ValueError):
        timestep_sequence(10, 11)


@pytest.mark.parametrize("sampler", [ddpm, ddim])
def test_oracle_denoiser_recovers_target(sampler):
    """A denoiser that always answers x0 = target must end exactly at the target."""
    d = GaussianDiffusion(linear_beta_schedule(100))
    target = torch.linspace(-1, 1, 16).reshape(1, 2, 2, 2, 2).repeat(2, 1, 1, 1, 1)
    out = sampler(lambda x, t: target, d, target.shape, generator=torch.Generator().manual_seed(0),
                  steps=20)
    assert torch.equal(out, target)


def test_ddim_eta0_is_deterministic_in_the_generator_and_samplers_share_a_signature():
    d = GaussianDiffusion(linear_beta_schedule(100))
    seen = []

    def denoise(x, t):
        seen.append(int(t[0]))
        return 0.5 * x

    shape = (2, 8, 2, 2, 2)
    a = ddim(denoise, d, shape, generator=torch.Generator().manual_seed(7), steps=5)
    b = ddim(denoise, d, shape, generator=torch.Generator().manual_seed(7), steps=5)
    c = ddim(denoise, d, shape, generator=torch.Generator().manual_seed(8), steps=5)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert seen[:5] == timestep_sequence(100, 5)
    assert set(SAMPLERS) == {"ddpm", "ddim"} and get_sampler("ddpm") is ddpm
    with pytest.raises(ValueError, match="allowed"):
        get_sampler("euler")


def test_ddpm_marginal_variance_matches_data_when_denoiser_is_bayes_optimal():
    """For x0 ~ N(0, s^2) the optimal x0 predictor is linear; DDPM must produce var s^2."""
    d = GaussianDiffusion(linear_beta_schedule(200))
    s2 = 0.25

    def denoise(x, t):
        abar = d.alphas_cumprod[t].to(x.dtype).view(-1, 1)
        # E[x0 | x_t] = sqrt(abar) s2 / (abar s2 + 1 - abar) x_t
        return abar.sqrt() * s2 / (abar * s2 + 1 - abar) * x

    out = ddpm(denoise, d, (4000, 1), generator=torch.Generator().manual_seed(0),
               dtype=torch.float64)
    assert out.var().item() == pytest.approx(s2, rel=0.1)
    assert out.mean().item() == pytest.approx(0.0, abs=0.05)
