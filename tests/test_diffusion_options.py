"""The diffusion's named choices (prediction, loss, variance, max_beta) and the EMA schedule
(training.ema_every / ema_start): Khader et al.'s medicaldiffusion settings beside WDM's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from wdm.config import resolve_run_config
from wdm.diffusion import GaussianDiffusion, cosine_beta_schedule
from wdm.ema import EMA
from wdm.io import InputError
from wdm.samplers import ddpm


def _process(**choices: str) -> GaussianDiffusion:
    return GaussianDiffusion(cosine_beta_schedule(10, max_beta=0.9999), **choices)


def test_fixed_small_is_the_posterior_variance_by_hand():
    d = _process(variance="fixed_small")
    betas = d.betas.tolist()
    t, s = 6, 5
    abar_t = math.prod(1 - b for b in betas[: t + 1])
    abar_s = math.prod(1 - b for b in betas[: s + 1])
    by_hand = betas[t] * (1 - abar_s) / (1 - abar_t)  # Ho et al. eq. 7, beta-tilde_t
    assert d.step_variance(t, s) == pytest.approx(by_hand, rel=1e-12)
    assert _process().step_variance(t, s) == pytest.approx(betas[t], rel=1e-12)
    assert by_hand < betas[t]


def test_ddpm_sampler_draws_with_the_chosen_variance():
    """With a denoiser predicting 0, x_s = c_t x_t + sqrt(var) z: replay the generator by hand."""
    shape, steps = (1, 2, 3), [9, 8]

    def run(variance: str) -> tuple[torch.Tensor, torch.Tensor]:
        d = _process(variance=variance)
        seen = []

        def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            return torch.zeros_like(x)

        gen = torch.Generator().manual_seed(3)
        ddpm(denoise, d, shape, generator=gen, steps=None)
        replay = torch.Generator().manual_seed(3)
        x_t = torch.randn(shape, generator=replay)
        z = torch.randn(shape, generator=replay)
        mean, _, _ = d.posterior(torch.zeros(shape), x_t, steps[0], steps[1])
        expected = mean + math.sqrt(d.step_variance(steps[0], steps[1])) * z
        return seen[1], expected

    for variance in ("fixed_small", "fixed_large"):
        got, expected = run(variance)
        torch.testing.assert_close(got, expected)
    assert not torch.allclose(run("fixed_small")[0], run("fixed_large")[0])


def _exact_model(d: GaussianDiffusion, x0: torch.Tensor, offset: float = 0.0):
    """A network whose output is the exact target (x0 or the noise of x_t) plus ``offset``."""

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if d.prediction == "x0":
            return x0 + offset
        abar = d.alphas_cumprod[t].float().reshape(-1, 1, 1)
        return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt() + offset

    return model


@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("loss", ["mse", "l1"])
def test_training_loss_targets_and_errors(prediction, loss):
    d = _process(prediction=prediction, loss=loss)
    x0 = torch.rand(3, 2, 4) * 2 - 1
    exact = d.training_loss(_exact_model(d, x0), x0, torch.Generator().manual_seed(0))
    assert float(exact) == pytest.approx(0.0, abs=1e-5)
    off = d.training_loss(_exact_model(d, x0, 0.5), x0, torch.Generator().manual_seed(0))
    assert float(off) == pytest.approx(0.5 if loss == "l1" else 0.25, rel=1e-4)


def test_predict_x0_inverts_the_forward_process_for_eps():
    d = _process(prediction="eps")
    x0, noise = torch.randn(2, 1, 3), torch.randn(2, 1, 3)
    t = torch.tensor([2, 7])
    torch.testing.assert_close(d.predict_x0(d.q_sample(x0, t, noise), t, noise), x0)
    assert _process().predict_x0(x0, t, noise) is noise


def _run_cfg(**diffusion: object) -> dict:
    return resolve_run_config({"model": "ddpm3d", "network": {"preset": "tiny"},
                               "diffusion": {"schedule": "cosine", "timesteps": 300, **diffusion}})


def test_config_defaults_are_ours_and_upstream_values_are_accepted():
    ours = GaussianDiffusion.from_config(_run_cfg()["diffusion"])
    assert (ours.prediction, ours.loss, ours.variance) == ("x0", "mse", "fixed_large")
    assert float(ours.betas.max()) == pytest.approx(0.999)
    cfg = _run_cfg(prediction="eps", loss="l1", variance="fixed_small", max_beta=0.9999)
    theirs = GaussianDiffusion.from_config(cfg["diffusion"])
    assert (theirs.prediction, theirs.loss, theirs.variance) == ("eps", "l1", "fixed_small")
    assert float(theirs.betas.max()) == pytest.approx(0.9999)  # the clipped last beta
    with pytest.raises(InputError, match="prediction"):
        _run_cfg(prediction="v")


def test_eps_network_is_converted_then_clipped_when_denoising():
    from wdm.model import build_model

    cfg = _run_cfg(prediction="eps")
    model = build_model(cfg, (8, 8, 8))
    c_t, t = torch.randn(1, 1, 8, 8, 8) * 3, torch.tensor([150])
    with torch.no_grad():
        out = model.network(c_t, t)
        expected = model.diffusion.predict_x0(c_t, t, out).clamp(-1, 1)
        torch.testing.assert_close(model.denoise(c_t, t), expected)


def test_ema_every_and_start_follow_khader_et_al():
    """every 2, start 4: copies at steps 0 and 2, averages at 4 and 6, nothing at odd steps."""
    w = nn.Parameter(torch.zeros(()))
    holder = nn.Module()
    holder.w = w
    ema = EMA({"m": holder}, 0.5, every=2, start=4)
    expected = 0.0
    for step in range(8):
        with torch.no_grad():
            w.fill_(float(step + 1))  # the weights after this step's optimizer update
        ema.after_step(step)
        if step % 2 == 0:
            expected = float(step + 1) if step < 4 else 0.5 * expected + 0.5 * (step + 1)
        assert float(ema.state_dict()["m"]["w"]) == pytest.approx(expected)
    assert expected == pytest.approx(0.5 * (0.5 * 3 + 0.5 * 5) + 0.5 * 7)


def test_ldm_stage_one_keeps_its_own_ema_setting():
    """training.ema is stage 2's; the VQ-GAN's is ldm.vqgan.ema (null, as Khader et al.)."""
    from baselines.ldm.config import stage_config

    cfg = resolve_run_config({"model": "ldm", "training": {"ema": 0.995, "ema_every": 10}})
    assert stage_config(cfg, "vqgan")["training"]["ema"] is None
    assert stage_config(cfg, "diffusion", "elsewhere")["training"]["ema"] == 0.995
    cfg["ldm"]["vqgan"]["ema"] = 0.9
    assert stage_config(cfg, "vqgan")["training"]["ema"] == 0.9
