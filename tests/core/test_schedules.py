"""Schedules agree with diffusers' schedulers; target/x0 conversions are exact inverses."""

from __future__ import annotations

import pytest
import torch

from diffkit.core.schedules import DDPM, FlowMatching


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_matches_diffusers(beta_schedule):
    from diffusers import DDPMScheduler

    ours = DDPM(beta_schedule=beta_schedule, prediction_type="v_prediction")
    ref = DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule=beta_schedule
    )
    torch.testing.assert_close(
        ours.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-6
    )
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(
        ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        ours.target(x0, noise, t), ref.get_velocity(x0, noise, t), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_prediction_roundtrip(prediction_type):
    s = DDPM(prediction_type=prediction_type)
    x0, noise = (
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
        torch.randn(3, 2, 4, 4, dtype=torch.float64),
    )
    t = torch.tensor([1, 400, 998])
    xt = s.add_noise(x0, noise, t)
    x0_hat, eps_hat = s.to_x0_eps(xt, s.target(x0, noise, t), t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)


def test_flow_matches_diffusers_shift_and_roundtrip():
    from diffusers import FlowMatchEulerDiscreteScheduler

    fm = FlowMatching(shift=3.0)
    ref = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    # At construction diffusers holds the shifted training sigmas of t/T for t = T..1.
    unshifted = torch.arange(1000, 0, -1, dtype=torch.float64) / 1000
    torch.testing.assert_close(
        fm.shift_sigma(unshifted).float(), ref.sigmas.float(), rtol=1e-5, atol=1e-6
    )
    s = fm.sigmas(10)
    assert s[0] == 1 and s[-1] == 0 and (s.diff() < 0).all()
    x0, noise = (
        torch.randn(2, 3, 4, 4, dtype=torch.float64),
        torch.randn(2, 3, 4, 4, dtype=torch.float64),
    )
    t = torch.tensor([0.25, 0.9], dtype=torch.float64)
    xt = fm.add_noise(x0, noise, t)
    torch.testing.assert_close(xt, (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise)
    x0_hat, eps_hat = fm.to_x0_eps(xt, fm.target(x0, noise, t), t)
    torch.testing.assert_close(x0_hat, x0)
    torch.testing.assert_close(eps_hat, noise)
    torch.testing.assert_close(fm.model_t(t), t * 1000)


def test_sample_t_ranges_and_determinism():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    t = DDPM().sample_t(1000, g1)
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 1000
    assert torch.equal(t, DDPM().sample_t(1000, g2))
    s = FlowMatching(shift=3.0, t_sampling="logit_normal").sample_t(
        1000, torch.Generator().manual_seed(0)
    )
    assert s.min() > 0 and s.max() < 1 and s.mean() > 0.5  # shift pushes toward noise


def test_validation_names_fields():
    with pytest.raises(ValueError, match="prediction_type"):
        DDPM(prediction_type="sample")
    with pytest.raises(ValueError, match="shift"):
        FlowMatching(shift=0)
