"""The shipped RoPeSLR zoo member: loads onto its backbone, and alignment lowered the error."""

import torch

from diffkit import models
from diffkit.models import moving_digits_wan as mdw


def test_shipped_member_loads_with_ropeslr_and_alignment_helped():
    m = models.load("moving-digits-wan-ropeslr")
    procs = [mod.processor for n, mod in m.named_modules() if n.endswith("attn1")]
    assert procs and all(type(p).__name__ == "RoPeSLRWanProcessor" for p in procs)
    metrics = models.metrics("moving-digits-wan-ropeslr")
    before = metrics["heldout_layer_rel_mse_before"]
    after = metrics["heldout_layer_rel_mse_after"]
    assert all(after[k] < before[k] for k in before), (before, after)
    v = mdw.VIDEO
    x = torch.randn(1, 1, v["num_frames"], v["size"], v["size"])
    cond = mdw.condition(torch.tensor([3]), m.config.text_dim)
    with torch.no_grad():
        out = m(x, torch.tensor([500.0]), cond, return_dict=False)[0]
    assert out.shape == x.shape and torch.isfinite(out).all()
