"""Recipe of moving-digits-causal: the objective trains (loss finite, parameters move)."""

from __future__ import annotations

import torch

from diffkit.core.objective import StepContext
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import causal_wan as cw
from diffkit.zoo.moving_digits_causal import TeacherForcingFlow


def test_teacher_forcing_objective_trains_every_parameter():
    cfg = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 1}
    torch.manual_seed(0)
    model = cw.build(cfg)
    data = make_moving_digits(2, MovingDigitsConfig(max_digits=1), seed=0)
    ctx = StepContext(
        step=0, generator=torch.Generator().manual_seed(0), sample_seeds=torch.arange(2)
    )
    out = TeacherForcingFlow(cfg)(model, data.get_batch(torch.arange(2)), ctx)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []
