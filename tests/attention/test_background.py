"""The background path's fast forms equal their plain definitions, with gradients."""

import pytest
import torch
import torch.nn.functional as F

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.attention.layout import grid_positions


def _t(*shape, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(grad)


@pytest.mark.parametrize(
    "kw",
    [{}, {"inject": "concat"}, {"ape": "table", "ape_max_len": (4, 8, 8)}, {"feature_map": "elu1"}],
)
def test_grid_features_equal_features_at_grid_positions(kw):
    grid = (3, 5, 7)
    cfg = RoPeSLRConfig(rank=12, **kw)
    p = RoPeSLRParams(cfg, 2, 8).double()
    with torch.no_grad():
        p.pe_scale.fill_(0.7)  # make the APE term visible
    x = _t(2, 2, 105, 8)
    fast = p.grid_features(x, p.u_q, grid)
    plain = p.features(x, p.u_q, grid_positions(grid))
    assert (fast - plain).abs().max() < 1e-12


@pytest.mark.parametrize("merge", ["gated", "mass"])
def test_density_one_equals_sdpa_on_a_ragged_tiled_grid(merge):
    grid = (3, 10, 9)  # 270 tokens: ragged tiles and a ragged last block
    q, k, v, qp, kp = (_t(1, 2, 270, 16, seed=s) for s in range(5))
    extra = {"feature_map": "elu1"} if merge == "mass" else {}
    cfg = RoPeSLRConfig(density=1.0, rank=12, tile=(2, 4, 4), block_size=32, merge=merge, **extra)
    p = RoPeSLRParams(cfg, 2, 16).double()
    out = ropeslr_attention(q, k, v, config=cfg, params=p, q_pre=qp, k_pre=kp, grid=grid)
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() < 1e-10


@pytest.mark.parametrize("merge", ["gated", "mass"])
def test_background_gradients_pass_gradcheck(merge):
    grid = (2, 4, 8)
    q, k = _t(1, 1, 64, 4, seed=1), _t(1, 1, 64, 4, seed=2)
    qp, kp, v = (_t(1, 1, 64, 4, seed=s, grad=True) for s in (3, 4, 5))
    extra = {"feature_map": "elu1"} if merge == "mass" else {}
    cfg = RoPeSLRConfig(density=0.5, rank=6, tile=(2, 2, 4), block_size=16, merge=merge, **extra)
    p = RoPeSLRParams(cfg, 1, 4).double()
    with torch.no_grad():
        p.gate_w.normal_()

    def fn(qp, kp, v):
        return ropeslr_attention(q, k, v, config=cfg, params=p, q_pre=qp, k_pre=kp, grid=grid)

    assert torch.autograd.gradcheck(fn, (qp, kp, v), eps=1e-6, atol=1e-6)
