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


@pytest.mark.parametrize("merge", ["gated", "mass", "mass_estimate"])
def test_density_one_equals_sdpa_on_a_ragged_tiled_grid(merge):
    grid = (3, 10, 9)  # 270 tokens: ragged tiles and a ragged last block
    q, k, v, qp, kp = (_t(1, 2, 270, 16, seed=s) for s in range(5))
    extra = {"feature_map": "elu1"} if merge != "gated" else {}
    if merge == "mass_estimate":
        merge, extra = "mass", {**extra, "mass_lse": "estimate"}
    cfg = RoPeSLRConfig(density=1.0, rank=12, tile=(2, 4, 4), block_size=32, merge=merge, **extra)
    p = RoPeSLRParams(cfg, 2, 16).double()
    out = ropeslr_attention(q, k, v, config=cfg, params=p, q_pre=qp, k_pre=kp, grid=grid)
    assert (out - F.scaled_dot_product_attention(q, k, v)).abs().max() < 1e-10


@pytest.mark.parametrize("merge", ["gated", "mass", "mass_estimate"])
def test_background_gradients_pass_gradcheck(merge):
    grid = (2, 4, 8)
    q, k = _t(1, 1, 64, 4, seed=1), _t(1, 1, 64, 4, seed=2)
    qp, kp, v = (_t(1, 1, 64, 4, seed=s, grad=True) for s in (3, 4, 5))
    extra = {"feature_map": "elu1"} if merge != "gated" else {}
    if merge == "mass_estimate":
        merge, extra = "mass", {**extra, "mass_lse": "estimate"}
    cfg = RoPeSLRConfig(density=0.5, rank=6, tile=(2, 2, 4), block_size=16, merge=merge, **extra)
    p = RoPeSLRParams(cfg, 1, 4).double()
    with torch.no_grad():
        p.gate_w.normal_()

    def fn(qp, kp, v):
        return ropeslr_attention(q, k, v, config=cfg, params=p, q_pre=qp, k_pre=kp, grid=grid)

    assert torch.autograd.gradcheck(fn, (qp, kp, v), eps=1e-6, atol=1e-6)


def _readout_of(o_s, lse):
    """(o_raw, a, w) of the sink read-out for a spike with output o_s and log-mass lse."""
    z = lse.exp()
    return o_s * (z / (z + 1))[..., None], z / (z + 1), 1 / (z + 1)


def test_merge_mass_readout_equals_merge_mass():
    from diffkit.attention.background import merge_mass, merge_mass_readout

    o_s, num = _t(2, 3, 50, 8, seed=1), _t(2, 3, 50, 8, seed=2)
    lse = _t(2, 3, 50, seed=3) * 6  # spike masses from e^-18 to e^18
    den = _t(2, 3, 50, seed=4).abs() * 30
    lam = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    ref = merge_mass(o_s, lse, num, den, lam)
    fused = merge_mass_readout(*_readout_of(o_s, lse), num, den, lam)
    assert (ref - fused).abs().max() < 1e-12
    # extremes: no spike mass left (w underflowed) -> o_s; no spike mass at all -> background
    one, zero = (
        torch.ones(2, 3, 50, dtype=torch.float64),
        torch.zeros(2, 3, 50, dtype=torch.float64),
    )
    assert (merge_mass_readout(o_s.clone(), one, zero, num, den, lam) - o_s).abs().max() < 1e-12
    bg_only = merge_mass_readout(zero[..., None] * o_s, zero, one, num, den, lam)
    assert (bg_only - num / den[..., None]).abs().max() < 1e-12


def test_mass_merge_flex_readout_matches_reference_spike():
    """The fused CPU read-out merge (uncompiled flex here) equals reference spike + merge_mass."""
    from diffkit.attention.background import background, merge_mass, merge_mass_readout
    from diffkit.attention.layout import block_scores, forced_blocks, select_blocks
    from diffkit.attention.sparse import block_sparse_flex_readout, block_sparse_reference

    q, k, v, num = (_t(1, 2, 300, 16, seed=s).float() for s in range(4))
    phi = F.elu(_t(1, 2, 300, 6, seed=5).float()) + 1
    idx, valid = select_blocks(block_scores(q, k, 64), 2, forced_blocks(5))
    num, den = background(phi, phi, v, idx, valid, 64)
    lam = torch.tensor([0.3, 2.0])
    o_s, lse = block_sparse_reference(q, k, v, idx, valid, 64)
    ref = merge_mass(o_s, lse, num, den, lam)
    raw = block_sparse_flex_readout(q, k, v, idx, valid, 64, compiled=False)
    assert raw is not None
    assert (merge_mass_readout(*raw, num, den, lam) - ref).abs().max() < 1e-5
    # overflowing scores are reported (None), never returned as NaN
    assert block_sparse_flex_readout(q * 1e20, k * 1e20, v, idx, valid, 64, compiled=False) is None


@pytest.mark.slow
def test_ropeslr_mass_merge_flex_cpu_equals_reference_backend():
    """ropeslr_attention's compiled-flex CPU path (fused read-out merge) = the reference path."""
    grid = (2, 16, 16)
    q, k, v, qp, kp = (_t(1, 2, 512, 16, seed=s).float() for s in range(5))
    kw = dict(density=0.25, rank=8, tile=(1, 8, 8), block_size=64, merge="mass", feature_map="elu1")
    cfg_r = RoPeSLRConfig(backend="reference", **kw)  # not "auto": it may pick flex
    cfg_f = RoPeSLRConfig(backend="flex", **kw)
    p = RoPeSLRParams(cfg_r, 2, 16)
    with torch.no_grad():
        out_r = ropeslr_attention(q, k, v, config=cfg_r, params=p, q_pre=qp, k_pre=kp, grid=grid)
        out_f = ropeslr_attention(q, k, v, config=cfg_f, params=p, q_pre=qp, k_pre=kp, grid=grid)
    assert (out_r - out_f).abs().max() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("merge", ["gated", "mass"])
def test_ropeslr_flex_cuda_equals_reference_backend(merge):
    """CUDA: compiled flex (its own lse, the tuned kernel options) = the reference backend."""
    grid = (4, 16, 16)
    q, k, v, qp, kp = (_t(1, 2, 1024, 64, seed=s).float().cuda() for s in range(5))
    extra = {"feature_map": "elu1"} if merge == "mass" else {}
    kw = dict(density=0.25, tile=(2, 8, 8), block_size=128, merge=merge, **extra)
    cfg_r = RoPeSLRConfig(backend="reference", **kw)  # not "auto": it may pick flex
    cfg_f = RoPeSLRConfig(backend="flex", **kw)
    p = RoPeSLRParams(cfg_r, 2, 64).cuda()
    with torch.no_grad():
        out_r = ropeslr_attention(q, k, v, config=cfg_r, params=p, q_pre=qp, k_pre=kp, grid=grid)
        out_f = ropeslr_attention(q, k, v, config=cfg_f, params=p, q_pre=qp, k_pre=kp, grid=grid)
    assert (out_r - out_f).abs().max() < 1e-4


def test_mass_estimate_uses_no_exact_lse(monkeypatch):
    """mass_lse="estimate": the spike is asked for no lse (the fast path), and the output is the
    mass merge of the estimated lse."""
    from diffkit.attention import ropeslr as R
    from diffkit.attention.background import background, merge_mass
    from diffkit.attention.sparse import estimate_lse

    grid = (2, 8, 8)
    q, k, v, qp, kp = (_t(1, 2, 128, 8, seed=s) for s in range(5))
    cfg = RoPeSLRConfig(density=0.5, rank=6, tile=(1, 4, 8), block_size=32, merge="mass",
                        feature_map="elu1", mass_lse="estimate")  # fmt: skip
    p = RoPeSLRParams(cfg, 2, 8).double()
    asked = []
    real_spike = R.spike
    monkeypatch.setattr(R, "spike", lambda *a, **kw: asked.append(kw.get("need_lse", a[-1]))
                        or real_spike(*a, **kw))  # fmt: skip
    with torch.no_grad():
        out = ropeslr_attention(q, k, v, config=cfg, params=p, q_pre=qp, k_pre=kp, grid=grid)
        plan = R.plan_blocks(q, k, cfg, grid)
        qt, kt, vt = plan.tiled(q), plan.tiled(k), plan.tiled(v)
        o_s, _ = real_spike(qt, kt, vt, plan, cfg, need_lse=False)
        pq, pk, _ = R.background_features(p, qp, kp, plan)
        num, den = background(pq, pk, vt, plan.idx, plan.valid, 32)
        lse = estimate_lse(qt, kt, plan.idx, plan.valid, 32)
        ref = plan.untiled(merge_mass(o_s, lse, num, den, p.log_lambda.exp()))
    assert asked == [False]
    assert (out - ref).abs().max() < 1e-12


def test_merge_mass_extremes_stay_finite():
    """A spike with no mass (lse = -inf) or a negligible one gives the background alone; a spike
    that dwarfs the background gives o_s."""
    from diffkit.attention.background import merge_mass

    o_s, num = _t(1, 2, 6, 4, seed=1), _t(1, 2, 6, 4, seed=2)
    den = _t(1, 2, 6, seed=3).abs() + 1
    lam = torch.tensor([1.0, 2.0], dtype=torch.float64)
    for lse_val in (float("-inf"), -800.0):
        out = merge_mass(o_s, torch.full((1, 2, 6), lse_val, dtype=torch.float64), num, den, lam)
        assert (out - num / den[..., None]).abs().max() < 1e-12
    out = merge_mass(o_s, torch.full((1, 2, 6), 800.0, dtype=torch.float64), num, den, lam)
    assert (out - o_s).abs().max() < 1e-12


@pytest.mark.slow
def test_mass_estimate_compiled_cpu_path_matches_the_reference_backend():
    """Compiled CPU inference (flex spike + compiled lse estimate + folded background Z) gives the
    reference backend's output."""
    grid = (2, 16, 16)
    q, k, v, qp, kp = (_t(1, 2, 512, 16, seed=s).float() for s in range(5))
    kw = dict(density=0.3, rank=12, tile=(1, 4, 8), block_size=64, merge="mass",
              feature_map="elu1", mass_lse="estimate")  # fmt: skip
    ref_cfg = RoPeSLRConfig(backend="reference", **kw)
    p = RoPeSLRParams(ref_cfg, 2, 16)
    with torch.no_grad():
        ref = ropeslr_attention(q, k, v, config=ref_cfg, params=p, q_pre=qp, k_pre=kp, grid=grid)
        out = ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend="flex", **kw), params=p,
                                q_pre=qp, k_pre=kp, grid=grid)  # fmt: skip
    assert (out - ref).abs().max() < 1e-5
