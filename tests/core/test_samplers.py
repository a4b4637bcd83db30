"""Samplers: exactness on analytic models, CFG algebra, MaskGIT decoding invariants."""

from __future__ import annotations

import pytest
import torch

from diffkit.core.samplers import ddim_sample, euler_sample, guided, maskgit_sample
from diffkit.core.schedules import DDPM, FlowMatching


def test_ddim_with_oracle_eps_recovers_point_mass():
    # Data = a single point c: the optimal eps-prediction is (x_t - sqrt(abar) c) / sqrt(1 - abar).
    s = DDPM()
    c = torch.full((1, 1, 2, 2), 0.7)
    ac = s.alphas_cumprod

    def oracle(x, t):
        a = ac[t].view(-1, 1, 1, 1).float()
        return (x - a.sqrt() * c) / (1 - a).sqrt()

    out = ddim_sample(oracle, s, (4, 1, 2, 2), steps=10, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, c.expand(4, -1, -1, -1), rtol=1e-3, atol=1e-3)


def test_euler_with_oracle_velocity_recovers_point_mass():
    fm = FlowMatching(shift=2.0)
    c = torch.tensor([[0.3, -0.5]])

    def oracle(x, t):  # v = eps - x0 with eps = (x - (1 - t) c) / t
        tt = t.view(-1, 1)
        return (x - (1 - tt) * c) / tt - c

    out = euler_sample(oracle, fm, (3, 2), steps=4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, c.expand(3, -1), rtol=1e-5, atol=1e-5)


def test_guided_is_linear_combination():
    cond = lambda x, t: x + 1  # noqa: E731
    unc = lambda x, t: x * 0  # noqa: E731
    x = torch.ones(2, 3)
    torch.testing.assert_close(
        guided(cond, unc, 3.0)(x, None), unc(x, None) + 3 * (cond(x, None) - unc(x, None))
    )


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_maskgit_unmasks_everything_and_is_deterministic(steps):
    K, L, mask_id = 5, 16, 5
    torch.manual_seed(0)
    table = torch.randn(L, K)

    def logits_fn(tok):
        return table.expand(tok.shape[0], -1, -1)

    a = maskgit_sample(
        logits_fn, (3, L), mask_id, steps=steps, generator=torch.Generator().manual_seed(0)
    )
    b = maskgit_sample(
        logits_fn, (3, L), mask_id, steps=steps, generator=torch.Generator().manual_seed(0)
    )
    assert (a != mask_id).all() and a.max() < K
    assert torch.equal(a, b)


def test_maskgit_cfg_and_low_temperature_follow_guided_argmax():
    K, L, mask_id = 4, 6, 4
    cond = torch.zeros(L, K)
    cond[:, 1] = 2.0
    unc = torch.zeros(L, K)
    unc[:, 1] = 3.0  # unconditional prefers 1 more strongly -> guidance pushes away from 1
    unc[:, 2] = 2.5
    cond[:, 2] = 2.5

    out = maskgit_sample(
        lambda t: cond.expand(t.shape[0], -1, -1),
        (2, L),
        mask_id,
        steps=3,
        uncond_logits_fn=lambda t: unc.expand(t.shape[0], -1, -1),
        guidance_scale=5.0,
        temperature=1e-4,
        generator=torch.Generator().manual_seed(0),
    )
    assert (out == 2).all()


def test_maskgit_keeps_given_tokens():
    start = torch.tensor([[0, 4, 1, 4]])
    out = maskgit_sample(
        lambda t: torch.zeros(1, 4, 4),
        (1, 4),
        4,
        steps=2,
        tokens=start,
        generator=torch.Generator().manual_seed(0),
    )
    assert out[0, 0] == 0 and out[0, 2] == 1 and (out != 4).all()
