from __future__ import annotations

import pytest
import torch
from torch import nn

from diffkit.core.ema import EMA


def test_formula_fp32_and_frozen_at_one():
    m = nn.Linear(3, 2).to(torch.bfloat16)
    ema = EMA(m, decay=0.9)
    assert all(p.dtype == torch.float32 for p in ema.module.parameters())
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    for k, p in m.state_dict().items():
        torch.testing.assert_close(ema.module.state_dict()[k], 0.9 * before[k] + 0.1 * p.float())
    frozen = EMA(m, decay=1.0)
    ref = {k: v.clone() for k, v in frozen.module.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(5.0)
    frozen.update(m)
    assert all(torch.equal(ref[k], v) for k, v in frozen.module.state_dict().items())


def test_small_increments_do_not_stall():
    m = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        m.weight.fill_(1.0)
    ema = EMA(m, decay=0.99)
    with torch.no_grad():
        m.weight.fill_(1.001)
    for _ in range(100):
        ema.update(m)
    assert float(ema.module.weight) > 1.0006  # a bf16 EMA would stay at 1.0


def test_state_dict_roundtrip_and_copy_to():
    m = nn.Linear(3, 2)
    ema = EMA(m, 0.5)
    ema.update(m)
    other = EMA(nn.Linear(3, 2), 0.9)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == 0.5
    target = nn.Linear(3, 2)
    other.copy_to(target)
    assert torch.equal(target.weight, ema.module.weight)


def test_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), 0.0)
