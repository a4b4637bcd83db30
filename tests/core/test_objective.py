from __future__ import annotations

import pytest
import torch

from diffkit.core.objective import LossOutput, StepContext


def test_loss_output_requires_scalar():
    with pytest.raises(ValueError, match="0-d"):
        LossOutput(torch.ones(2))


def test_per_sample_noise_independent_of_batch_split():
    seeds = torch.arange(10, 16)
    full = StepContext(step=0, generator=torch.Generator(), sample_seeds=seeds).randn(3)
    a = StepContext(step=0, generator=torch.Generator(), sample_seeds=seeds[:2]).randn(3)
    b = StepContext(step=0, generator=torch.Generator(), sample_seeds=seeds[2:]).randn(3)
    assert torch.equal(full, torch.cat([a, b]))
    u = StepContext(step=0, generator=torch.Generator(), sample_seeds=seeds).rand(2, salt=1)
    assert u.shape == (6, 2) and (u >= 0).all() and (u < 1).all()
    assert not torch.equal(
        full, StepContext(step=0, generator=torch.Generator(), sample_seeds=seeds).randn(3, salt=1)
    )
