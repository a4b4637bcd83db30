"""Exactness of the spike path and the two backends (reference, FlexAttention)."""

import pytest
import torch
import torch.nn.functional as F

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.attention.layout import (
    block_scores,
    forced_blocks,
    num_blocks,
    select_blocks,
    selection_mask,
)
from diffkit.attention.sparse import block_sparse_flex, block_sparse_reference


def _qkv(L, H=2, d=16, dtype=torch.float64, seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, H, L, d, generator=g, dtype=dtype) for _ in range(n)]


def _select(q, k, block, kk):
    n = num_blocks(q.shape[2], block)
    return select_blocks(block_scores(q, k, block), kk, forced_blocks(n))


def _dense_mask(idx, valid, n, block, L):
    m = selection_mask(idx, valid, n)
    return m.repeat_interleave(block, -1).repeat_interleave(block, -2)[..., :L, :L]


@pytest.mark.parametrize("L", [257, 1000, 4096])
def test_density_one_equals_sdpa_fp64(L):
    q, k, v, qp, kp = _qkv(L, n=5)
    cfg = RoPeSLRConfig(density=1.0, rank=12)
    params = RoPeSLRParams(cfg, 2, 16).double()
    out = ropeslr_attention(q, k, v, config=cfg, params=params, q_pre=qp, k_pre=kp)
    ref = F.scaled_dot_product_attention(q, k, v)
    assert (out - ref).abs().max() < 1e-10


@pytest.mark.parametrize("L,kk", [(257, 2), (1000, 5)])
def test_background_off_equals_masked_sdpa(L, kk):
    q, k, v = _qkv(L)
    cfg = RoPeSLRConfig(density=kk / num_blocks(L, 64), block_size=64, background=False)
    out = ropeslr_attention(q, k, v, config=cfg)
    idx, valid = _select(q, k, 64, kk)
    mask = _dense_mask(idx, valid, num_blocks(L, 64), 64, L)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (out - ref).abs().max() < 1e-10


def test_gradients_agree_with_masked_sdpa():
    L = 300
    q, k, v = (t.requires_grad_() for t in _qkv(L, d=8))
    idx, valid = _select(q.detach(), k.detach(), 64, 2)
    o, _ = block_sparse_reference(q, k, v, idx, valid, 64)
    w = torch.randn_like(o)
    g1 = torch.autograd.grad((o * w).sum(), (q, k, v))
    mask = _dense_mask(idx, valid, num_blocks(L, 64), 64, L)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    g2 = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        assert (a - b).abs().max() < 1e-10


def test_lse_is_the_row_logsumexp():
    q, k, v = _qkv(200)
    idx, valid = _select(q, k, 64, 4)
    _, lse = block_sparse_reference(q, k, v, idx, valid, 64)
    ref = torch.logsumexp(q @ k.transpose(-1, -2) / 4.0, -1)
    assert (lse - ref).abs().max() < 1e-10


@pytest.mark.parametrize("L,kk,mode", [(256, 2, "topk"), (300, 2, "topk"), (1000, 6, "topp")])
def test_flex_eager_matches_reference(L, kk, mode):
    """Uncompiled FlexAttention: same BlockMask (incl. ragged tail and top-p rows), same result."""
    q, k, v = _qkv(L, dtype=torch.float32)
    n = num_blocks(L, 64)
    idx, valid = select_blocks(block_scores(q, k, 64), kk, forced_blocks(n), mode, 0.5)
    o1, l1 = block_sparse_reference(q, k, v, idx, valid, 64)
    o2, l2 = block_sparse_flex(q, k, v, idx, valid, 64, compiled=False)
    assert (o1 - o2).abs().max() < 1e-5
    assert (l1 - l2).abs().max() < 1e-4


@pytest.mark.parametrize("L,kk,mode", [(256, 2, "topk"), (300, 2, "topk"), (1000, 6, "topp")])
def test_flex_lse_readout_matches_reference(L, kk, mode):
    """The CPU lse read-out (sink key + two value columns), run through eager flex: same output
    and log-sum-exp as the reference, incl. ragged tails and top-p rows."""
    q, k, v = _qkv(L, dtype=torch.float32)
    n = num_blocks(L, 64)
    idx, valid = select_blocks(block_scores(q, k, 64), kk, forced_blocks(n), mode, 0.5)
    o1, l1 = block_sparse_reference(q, k, v, idx, valid, 64)
    o2, l2 = block_sparse_flex(q, k, v, idx, valid, 64, compiled=False, lse_readout=True)
    assert (o1 - o2).abs().max() < 1e-5
    assert (l1 - l2).abs().max() < 1e-4


def test_flex_lse_readout_small_mass_rows_stay_exact():
    """Rows whose selected keys all score far below 0 (Z < 1, where a = 1 - w would cancel):
    a is read out directly, so o and lse still match the reference."""
    q, k, v = _qkv(300, dtype=torch.float32)
    k = k.abs() + 1.0
    q = -3.0 * q.abs() - 3.0  # every score <= -12 (d = 16, scale 1/4): Z ~ 1e-3
    idx, valid = _select(q, k, 64, 2)
    o1, l1 = block_sparse_reference(q, k, v, idx, valid, 64)
    assert l1.max() < 0  # Z < 1 on every row
    o2, l2 = block_sparse_flex(q, k, v, idx, valid, 64, compiled=False, lse_readout=True)
    assert (o1 - o2).abs().max() < 1e-5 and (l1 - l2).abs().max() < 1e-4


def test_flex_lse_readout_reports_underflow():
    """Scores far above ~88 underflow the sink's weight: lse None, the caller falls back."""
    q, k, v = _qkv(256, dtype=torch.float32)
    idx, valid = _select(q, k, 64, 2)
    o, lse = block_sparse_flex(q * 40, k * 40, v, idx, valid, 64, compiled=False, lse_readout=True)
    assert lse is None and o.shape == v.shape
    cfg = RoPeSLRConfig(block_size=64, background=False, backend="reference")
    out_ref = ropeslr_attention(q * 40, k * 40, v, config=cfg)
    assert torch.isfinite(out_ref).all()


@pytest.mark.slow
def test_flex_compiled_lse_readout_on_cpu():
    q, k, v = _qkv(1000, dtype=torch.float32)
    idx, valid = _select(q, k, 64, 3)
    o1, l1 = block_sparse_reference(q, k, v, idx, valid, 64)
    o2, l2 = block_sparse_flex(q, k, v, idx, valid, 64, return_lse=True)
    assert (o1 - o2).abs().max() < 1e-5 and (l1 - l2).abs().max() < 1e-4


@pytest.mark.slow
def test_flex_compiled_matches_reference_and_sdpa():
    """Compiled FlexAttention (~20 s first compile on CPU), the fast inference path."""
    for L in (1000, 1024):  # one bucket: the second length reuses the compiled kernel
        q, k, v = _qkv(L, dtype=torch.float32)
        idx, valid = _select(q, k, 64, 3)
        o1, l1 = block_sparse_reference(q, k, v, idx, valid, 64)
        o2, l2 = block_sparse_flex(q, k, v, idx, valid, 64, return_lse=False)
        assert (o1 - o2).abs().max() < 1e-5 and l2 is None
    idx, valid = _select(q, k, 64, 16)
    o3, _ = block_sparse_flex(q, k, v, idx, valid, 64, return_lse=False)
    assert (o3 - F.scaled_dot_product_attention(q, k, v)).abs().max() < 1e-5


def test_flex_backend_refuses_cpu_training():
    q, k, v = (t.float().requires_grad_() for t in _qkv(256))
    with pytest.raises(ValueError, match="no backward on CPU"):
        ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend="flex", background=False))


@pytest.mark.gpu
def test_flex_cuda_matches_reference():
    q, k, v = (t.float().cuda() for t in _qkv(4096))
    idx, valid = _select(q, k, 64, 7)
    o1, _ = block_sparse_reference(q, k, v, idx, valid, 64)
    o2, _ = block_sparse_flex(q, k, v, idx, valid, 64)
    assert (o1 - o2).abs().max() < 1e-3


def test_cuda_kernel_options_table():
    from diffkit.attention.sparse import cuda_kernel_options, set_cuda_kernel_options

    hopper = cuda_kernel_options(128, 128, (9, 0))
    assert hopper["BLOCK_M"] == 128 and hopper["USE_TMA"]
    assert cuda_kernel_options(128, 128, (8, 0)) is None  # untuned GPUs: flex's defaults
    assert cuda_kernel_options(64, 64, (9, 0))["BLOCK_M"] == 64  # tiles capped at the block
    assert cuda_kernel_options(64, 32, (8, 6)) == {"BLOCK_M": 32, "BLOCK_N": 32}
    try:
        set_cuda_kernel_options(128, {})  # explicit: flex's defaults even on Hopper
        assert cuda_kernel_options(128, 128, (9, 0)) is None
    finally:
        set_cuda_kernel_options(128, None)
    assert cuda_kernel_options(128, 128, (9, 0)) == hopper


@pytest.mark.parametrize("L,mode", [(256, "topk"), (300, "topk"), (1000, "topp")])
def test_estimate_lse_is_exact_for_block_constant_keys(L, mode):
    """The cumulant estimate is exact when every key of a block is the same (zero variance),
    ragged tail and top-p rows (invalid entries) included."""
    from diffkit.attention.sparse import estimate_lse

    q, k, v = _qkv(L)
    n = num_blocks(L, 64)
    k = k[:, :, ::64].repeat_interleave(64, 2)[:, :, :L]  # one key per block
    idx, valid = select_blocks(block_scores(q, k, 64), 3, forced_blocks(n), mode, 0.5)
    _, lse = block_sparse_reference(q, k, v, idx, valid, 64)
    assert (estimate_lse(q, k, idx, valid, 64) - lse).abs().max() < 1e-10


def test_estimate_lse_second_order_term_helps():
    """With spread keys the variance term brings the estimate closer than the mean alone, and the
    estimate stays within ~1 nat of the exact lse on random data."""
    from diffkit.attention.sparse import estimate_lse

    q, k, v = _qkv(1024, d=32)
    idx, valid = _select(q, k, 64, 4)
    _, lse = block_sparse_reference(q, k, v, idx, valid, 64)
    est = estimate_lse(q, k, idx, valid, 64)
    kb = k.unflatten(2, (16, 64))
    mean_only = k.unflatten(2, (16, 64)).mean(3, keepdim=True).expand_as(kb).flatten(2, 3)
    est0 = estimate_lse(q, mean_only, idx, valid, 64)  # zero variance: the first-order estimate
    assert (est - lse).abs().mean() < (est0 - lse).abs().mean()
    assert (est - lse).abs().mean() < 1.0


def test_estimate_lse_half_precision_moments_in_fp32():
    from diffkit.attention.sparse import estimate_lse

    q, k, _ = _qkv(256, dtype=torch.float32)
    idx, valid = _select(q, k, 64, 2)
    qb, kb = q.bfloat16(), k.bfloat16()
    est = estimate_lse(qb, kb, idx, valid, 64)
    assert est.dtype == torch.float32
    assert torch.equal(est, estimate_lse(qb.float(), kb.float(), idx, valid, 64))


@pytest.mark.parametrize("L,mode", [(300, "topk"), (1000, "topp")])
def test_estimate_lse_elementwise_form_matches_the_matmul_form(L, mode, monkeypatch):
    """The elementwise form that compiled=True compiles (here run eagerly) gives the batched
    matmul form's estimate, ragged tail and top-p rows (invalid entries) included."""
    from diffkit.attention import sparse

    q, k, _ = _qkv(L)
    idx, valid = select_blocks(block_scores(q, k, 64), 3, forced_blocks(num_blocks(L, 64)),
                               mode, 0.5)  # fmt: skip
    want = sparse.estimate_lse(q, k, idx, valid, 64)
    monkeypatch.setattr(sparse, "_compiled_lse_from_stats", lambda: sparse.lse_from_block_stats)
    got = sparse.estimate_lse(q, k, idx, valid, 64, compiled=True)
    assert (got - want).abs().max() < 1e-10


def test_estimate_lse_gradient_matches_the_elementwise_form(monkeypatch):
    """Training through the estimate: the matmul form (q squared in place where it owns the
    copy) has the elementwise form's gradient with respect to q and k (fp64)."""
    from diffkit.attention import sparse

    q, k, _ = _qkv(300)
    idx, valid = _select(q, k, 64, 3)
    grads = []
    for compiled in (False, True):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        sparse.estimate_lse(qq, kk, idx, valid, 64, compiled=compiled).square().sum().backward()
        grads.append((qq.grad, kk.grad))
        monkeypatch.setattr(sparse, "_compiled_lse_from_stats", lambda: sparse.lse_from_block_stats)
    for a, b in zip(*grads, strict=True):
        assert (a - b).abs().max() < 1e-9 * (1 + b.abs().max())


@pytest.mark.slow
def test_estimate_lse_compiled_matches_eager():
    from diffkit.attention.sparse import estimate_lse

    q, k, _ = _qkv(1000, dtype=torch.float32)
    idx, valid = _select(q, k, 64, 3)
    want = estimate_lse(q, k, idx, valid, 64)
    assert (estimate_lse(q, k, idx, valid, 64, compiled=True) - want).abs().max() < 1e-4


@pytest.mark.slow
def test_estimate_lse_compiles_once_for_all_resolutions():
    """The compiled estimate marks the block count and selection width dynamic: a second
    resolution (other n and k) reuses the kernel (issue 17: it recompiled per resolution)."""
    import torch._dynamo

    from diffkit.attention.sparse import estimate_lse

    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for length, kk in ((1000, 3), (2200, 5)):
            q, k, _ = _qkv(length, dtype=torch.float32)
            idx, valid = _select(q, k, 64, kk)
            want = estimate_lse(q, k, idx, valid, 64)
            assert (estimate_lse(q, k, idx, valid, 64, compiled=True) - want).abs().max() < 1e-4
