"""The gather backend (gather-then-dense block-sparse attention on CPU) against the reference."""

import pytest
import torch
import torch.nn.functional as F

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.attention.gathered import block_sparse_gathered
from diffkit.attention.layout import block_scores, forced_blocks, num_blocks, select_blocks
from diffkit.attention.sparse import block_sparse_reference


def _qkv(L, H=2, d=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, H, L, d, generator=g, dtype=dtype) for _ in range(3)]


def _select(q, k, block, kk):
    n = num_blocks(q.shape[2], block)
    return select_blocks(block_scores(q, k, block), kk, forced_blocks(n))


@pytest.mark.parametrize("L", [257, 1000, 1024])  # ragged tails of 1 and 40 tokens, none
@pytest.mark.parametrize("chunk", [None, 1, 5])
def test_gathered_matches_reference_fp64(L, chunk):
    q, k, v = _qkv(L)
    idx, valid = _select(q, k, 64, 3)
    o_ref, lse_ref = block_sparse_reference(q, k, v, idx, valid, 64)
    o, lse = block_sparse_gathered(q, k, v, idx, valid, 64, chunk=chunk)
    assert o.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref, rtol=0, atol=1e-12)


def test_gathered_masks_invalid_entries():
    """Invalid selection entries (top-p) contribute nothing, whatever block index they hold."""
    L, block = 1000, 64
    q, k, v = _qkv(L)
    idx, valid = _select(q, k, block, 5)
    g = torch.Generator().manual_seed(1)
    valid = torch.rand(valid.shape, generator=g) < 0.5
    valid[..., 0] = True
    o_ref, lse_ref = block_sparse_reference(q, k, v, idx, valid, block)
    o, lse = block_sparse_gathered(q, k, v, idx, valid, block, chunk=3)
    torch.testing.assert_close(o, o_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, lse_ref, rtol=0, atol=1e-12)
    # dropping the invalid entries changes the result: the mask is what makes it agree
    o_all, _ = block_sparse_reference(q, k, v, idx, torch.ones_like(valid), block)
    assert (o_all - o_ref).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gathered_half_and_single_precision(dtype):
    """Against the fp64 reference on the same (rounded) inputs: the output within the kernel's
    own rounding (softmax weights and output rounded to the dtype, each <= eps/2 relative, so
    |error| <= eps max|v|; 4x margin), the lse (accumulated in fp32 whatever the dtype) within
    1e-4 (sums of ~1,000 fp32 terms)."""
    L, block = 1000, 64
    q, k, v = (t.to(dtype) for t in _qkv(L, d=32))
    idx, valid = _select(q.double(), k.double(), block, 4)
    o_ref, lse_ref = block_sparse_reference(q.double(), k.double(), v.double(), idx, valid, block)
    o, lse = block_sparse_gathered(q, k, v, idx, valid, block)
    assert o.dtype == dtype and lse.dtype == torch.float32
    tol = 4 * torch.finfo(dtype).eps * float(v.abs().max())
    torch.testing.assert_close(o.double(), o_ref, rtol=0, atol=tol)
    torch.testing.assert_close(lse.double(), lse_ref, rtol=0, atol=1e-4)


def test_gathered_refuses_cuda_tensors():
    class Fake:
        is_cuda = True

    with pytest.raises(ValueError, match="CPU"):
        block_sparse_gathered(Fake(), None, None, None, None, 64)


@pytest.mark.parametrize(
    "merge",
    [
        dict(merge="gated"),
        dict(merge="mass", feature_map="elu1"),
        dict(merge="mass", feature_map="elu1", mass_lse="estimate"),
    ],
    ids=["gated", "mass", "mass-estimate"],
)
def test_ropeslr_gather_backend_equals_reference(merge):
    """The whole RoPeSLR call (selection, spike, background, merge) on a ragged 3D grid."""
    grid = (4, 10, 13)  # 520 tokens: 9 blocks of 64, the last ragged
    q, k, v = _qkv(520, H=2, d=16)
    qp, kp = _qkv(520, H=2, d=16, seed=1)[:2]
    kw = dict(density=0.3, block_size=64, tile=(2, 4, 8), **merge)
    ref_cfg = RoPeSLRConfig(backend="reference", **kw)
    params = RoPeSLRParams(ref_cfg, 2, 16).double()
    args = dict(params=params, q_pre=qp, k_pre=kp, grid=grid)
    with torch.no_grad():
        ref = ropeslr_attention(q, k, v, config=ref_cfg, **args)
        out = ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend="gather", **kw), **args)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_ropeslr_gather_with_sink_keys_and_density_one():
    """HunyuanVideo's text keys (merged through the spike's exact lse) and density 1 = SDPA."""
    q, k, v = _qkv(300, H=2, d=16)
    sk, sv = _qkv(5, H=2, d=16, seed=2)[:2]
    sink_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    kw = dict(block_size=64, background=False)
    with torch.no_grad():
        outs = [
            ropeslr_attention(
                q,
                k,
                v,
                config=RoPeSLRConfig(density=0.4, backend=b, **kw),
                sink_k=sk,
                sink_v=sv,
                sink_mask=sink_mask,
            )  # fmt: skip
            for b in ("reference", "gather")
        ]
        dense = ropeslr_attention(
            q, k, v, config=RoPeSLRConfig(density=1.0, backend="gather", **kw)
        )
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(dense, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-10)


def test_gather_backend_refuses_training():
    q, k, v = (t.requires_grad_() for t in _qkv(300, d=16))
    with pytest.raises(ValueError, match="forward-only"):
        ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend="gather", background=False))
