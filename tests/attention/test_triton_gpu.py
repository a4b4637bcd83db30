"""CUDA checks of the Triton backend and of flex's gradients (issue 17 item 5); skipped without
CUDA. The same kernels are checked on CPU, under Triton's interpreter, in test_triton_kernels.py.

Tolerances as there: fp32 accumulation over d-term products and k b keys per row gives a few
(d + k b) u32 of the output's scale; bf16 inputs add the rounding of p and of o (2 u16).
"""

import pytest
import torch

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.attention.layout import block_scores, forced_blocks, num_blocks, select_blocks
from diffkit.attention.sparse import block_sparse_flex, block_sparse_reference

pytestmark = pytest.mark.gpu
U32, U16 = 2.0**-24, 2.0**-8


def _inputs(L, H, d, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [torch.randn(1, H, L, d, generator=g, device="cuda").to(dtype) for _ in range(3)]


def _select(q, k, block, density):
    n = num_blocks(q.shape[2], block)
    kk = max(1, round(density * n))
    return select_blocks(block_scores(q.float(), k.float(), block), kk, forced_blocks(n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("L,d,block", [(4000, 128, 128), (3001, 64, 64)])
def test_triton_spike_cuda_matches_reference(dtype, L, d, block):
    from diffkit.attention.triton_kernels import block_sparse_triton

    q, k, v = _inputs(L, 4, d, dtype)
    idx, valid = _select(q, k, block, 0.25)
    with torch.no_grad():
        o, lse = block_sparse_triton(q, k, v, idx, valid, block)
        o_ref, lse_ref = block_sparse_reference(
            q.double(), k.double(), v.double(), idx, valid, block
        )
    keys = idx.shape[-1] * block
    vmax = float(v.abs().max())
    tol = 8 * (d + keys) * U32 * vmax + (2 * U16 * vmax if dtype == torch.bfloat16 else 0.0)
    assert o.dtype == dtype and lse.dtype == torch.float32
    assert (o.double() - o_ref).abs().max() < tol
    assert (lse.double() - lse_ref).abs().max() < 8 * (d + keys) * U32 * (1 + lse_ref.abs().max())


@pytest.mark.parametrize("merge", ["gated", "mass"])
def test_triton_backend_cuda_equals_reference_backend(merge):
    """The fused spike + background + merge kernel through ropeslr_attention on CUDA."""
    grid = (4, 16, 16)
    q, k, v, qp, kp = (
        _inputs(1024, 2, 64, torch.float32) + _inputs(1024, 2, 64, torch.float32, 1)[:2]
    )
    extra = {"feature_map": "elu1"} if merge == "mass" else {}
    kw = dict(density=0.25, tile=(2, 8, 8), block_size=128, merge=merge, **extra)
    p = RoPeSLRParams(RoPeSLRConfig(**kw), 2, 64).cuda()
    with torch.no_grad():
        p.gate_w.normal_()
        out = {
            b: ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend=b, **kw), params=p,
                                 q_pre=qp, k_pre=kp, grid=grid)
            for b in ("reference", "triton")
        }  # fmt: skip
    assert (out["triton"] - out["reference"]).abs().max() < 1e-4


def test_auto_backend_picks_triton_for_cuda_inference():
    from diffkit.attention.ropeslr import resolve_backend

    q = torch.zeros(1, 1, 256, 16, device="cuda")
    with torch.no_grad():
        assert resolve_backend(RoPeSLRConfig(), q) == "triton"
    with torch.enable_grad():
        assert resolve_backend(RoPeSLRConfig(), q) == "reference"


@pytest.mark.parametrize("L", [1024, 1000])  # 1000: a ragged last block (pytorch#153799: NaNs)
def test_flex_cuda_gradients_equal_reference(L):
    """Compiled flex's backward on CUDA = autograd through the reference backend (fp64)."""
    d, block = 64, 128
    q, k, v = _inputs(L, 2, d, torch.float32, seed=3)
    idx, valid = _select(q, k, block, 0.5)
    w = torch.randn_like(q)
    grads = {}
    for name, dtype in (("flex", torch.float32), ("reference", torch.float64)):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        if name == "flex":
            o, _ = block_sparse_flex(*leaves, idx, valid, block, return_lse=False)
        else:
            o, _ = block_sparse_reference(*leaves, idx, valid, block)
        grads[name] = torch.autograd.grad((o * w.to(dtype)).sum(), leaves)
    keys = idx.shape[-1] * block
    for g, g_ref in zip(grads["flex"], grads["reference"]):
        assert torch.isfinite(g).all()
        assert (g.double() - g_ref).abs().max() < 8 * (d + keys) * U32 * g_ref.abs().max()
