"""The Triton spike kernel (and its fused background merge) against the reference backend.

Run on CPU through Triton's interpreter. ``TRITON_INTERPRET=1`` must be set before Triton is
first imported, so a normal test run executes :func:`test_kernels_under_interpreter`, which runs
this file's other tests in one subprocess with the variable set (they skip in the parent run).
Shapes are tiny because the interpreter runs the kernel in NumPy one program at a time. The same
checks at real sizes run on CUDA in ``test_triton_gpu.py``.

Tolerances come from the algorithm, not from this machine's rounding: the kernel accumulates
scores, row masses and outputs in fp32 (unit roundoff u32 = 2^-24), with d-term dot products and
up to k b keys per row, so its error against an fp64 reference is a few (d + k b) u32 |v|_max;
with bf16 inputs the probabilities are rounded to bf16 before the p v product and the output is
stored in bf16, each a relative error of at most u16 = 2^-8, so o is within 2 u16 |v|_max
(plus the fp32 terms), while lse, computed from exact bf16 products in fp32, keeps fp32 accuracy.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffkit.attention.background import (
    block_states,
    complement_states,
    merge_gated,
    merge_mass,
)
from diffkit.attention.layout import num_blocks
from diffkit.attention.sparse import block_sparse_reference

triton = pytest.importorskip("triton")
INTERPRETED = bool(triton.knobs.runtime.interpret)
from diffkit.attention import triton_kernels  # noqa: E402

U32, U16 = 2.0**-24, 2.0**-8
interpreted = pytest.mark.skipif(
    not INTERPRETED, reason="runs in test_kernels_under_interpreter's TRITON_INTERPRET=1 process"
)


def test_kernels_under_interpreter(request):
    if INTERPRETED:
        pytest.skip("this is the interpreter process")
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(root / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    parent_only = (
        "test_kernels_under_interpreter",
        "test_invalid_arguments",
        "test_kernel_compiles",
    )
    cmd += ["-k", " and ".join(f"not {name}" for name in parent_only)]
    cmd += ["--runslow"] if request.config.getoption("--runslow") else ["-m", "not slow"]
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=280)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout, res.stdout[-2000:]


def _inputs(L, H=2, d=32, dtype=torch.float32, seed=0, B=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, d, generator=g).to(dtype) for _ in range(3)]


def _random_selection(L, H, block, kk, seed=0, drop=0.0, B=1):
    """Random distinct key blocks per query block, unsorted, own block always present; with
    ``drop`` > 0 some non-own entries are marked invalid (a top-p style selection)."""
    g = torch.Generator().manual_seed(seed)
    n = num_blocks(L, block)
    idx = torch.empty(B, H, n, kk, dtype=torch.long)
    for b in range(B):
        for h in range(H):
            for i in range(n):
                others = [j for j in torch.randperm(n, generator=g).tolist() if j != i][: kk - 1]
                row = torch.tensor([i, *others])
                idx[b, h, i] = row[torch.randperm(kk, generator=g)]
    valid = torch.rand(idx.shape, generator=g) >= drop
    valid |= idx == torch.arange(n)[None, None, :, None]
    return idx, valid


def _fp32_tol(d, keys, vmax, mult=4.0):
    return mult * (d + keys) * U32 * vmax


@interpreted
@pytest.mark.parametrize(
    "L,block,tiles,drop,batch",
    [
        (256, 64, (32, 16, 4, 1), 0.0, 1),  # block split into 2 x 4 kernel tiles
        (250, 64, (64, 64, 4, 1), 0.3, 1),  # ragged tail block + invalid entries
        (200, 32, (32, 32, 4, 1), 0.0, 2),  # one tile per block, ragged, batch 2, strided q/k/v
    ],
)
def test_spike_matches_reference_fp32(L, block, tiles, drop, batch):
    q, k, v = _inputs(L, B=batch)
    if batch > 1:  # (B, L, H, d) memory seen as (B, H, L, d), as diffusers' processors pass it
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert not q.is_contiguous()
    kk = 3
    idx, valid = _random_selection(L, 2, block, kk, seed=L, drop=drop, B=batch)
    o, lse = triton_kernels.block_sparse_triton(q, k, v, idx, valid, block, tiles=tiles)
    o_ref, lse_ref = block_sparse_reference(q.double(), k.double(), v.double(), idx, valid, block)
    assert o.dtype == torch.float32 and lse.dtype == torch.float32
    vmax = float(v.abs().max())
    assert (o.double() - o_ref).abs().max() < _fp32_tol(32, kk * block, vmax)
    # lse: score errors of a few d u32 |q||k| / sqrt(d), plus the row mass's summation error
    scores = float((q.abs() @ k.abs().transpose(-1, -2)).max()) / math.sqrt(32)
    assert (lse.double() - lse_ref).abs().max() < 4 * (32 * scores + kk * block) * U32


@interpreted
def test_spike_bf16_inputs():
    L, block, kk = 256, 64, 2
    q, k, v = _inputs(L, dtype=torch.bfloat16, seed=1)
    idx, valid = _random_selection(L, 2, block, kk, seed=3)
    o, lse = triton_kernels.block_sparse_triton(q, k, v, idx, valid, block, tiles=(32, 32, 4, 1))
    o_ref, lse_ref = block_sparse_reference(q.double(), k.double(), v.double(), idx, valid, block)
    assert o.dtype == torch.bfloat16 and lse.dtype == torch.float32
    vmax = float(v.abs().max())
    err = (o.double() - o_ref).abs().max()
    assert err < 2 * U16 * vmax + _fp32_tol(32, kk * block, vmax)
    scores = float((q.float().abs() @ k.float().abs().transpose(-1, -2)).max()) / math.sqrt(32)
    assert (lse.double() - lse_ref).abs().max() < 4 * (32 * scores + kk * block) * U32


@interpreted
@pytest.mark.filterwarnings("ignore:divide by zero")  # log2 of the empty row's zero mass
def test_row_without_keys_gives_zero_and_minus_inf():
    L, block = 128, 64
    q, k, v = _inputs(L, H=1)
    idx = torch.tensor([[[[0], [1]]]])
    valid = torch.tensor([[[[True], [False]]]])
    o, lse = triton_kernels.block_sparse_triton(q, k, v, idx, valid, block, tiles=(64, 64, 4, 1))
    assert torch.isinf(lse[..., 64:]).all() and (lse[..., 64:] < 0).all()
    assert (o[..., 64:, :] == 0).all()
    assert torch.isfinite(lse[..., :64]).all() and torch.isfinite(o[..., :64, :]).all()


def _background(L, block, idx, valid, r=16, d=32, seed=5):
    """Positive query features, tile-major complement states with the z column, and v."""
    g = torch.Generator().manual_seed(seed)
    phi_q = torch.rand(1, 2, L, r, generator=g, dtype=torch.float64)
    phi_k = torch.rand(1, 2, L, r, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, L, d, generator=g, dtype=torch.float64)
    states, zs = block_states(phi_k, v, block)
    s_c = complement_states(torch.cat([states, zs[..., None]], -1), idx, valid)
    n = num_blocks(L, block)
    pq = torch.nn.functional.pad(phi_q, (0, 0, 0, n * block - L)).unflatten(2, (n, block))
    out = (pq @ s_c).flatten(2, 3)[:, :, :L]
    return phi_q, v, s_c, out[..., :-1], out[..., -1]


@interpreted
@pytest.mark.parametrize("merge", ["gated", "mass"])
def test_fused_merge_matches_reference(merge):
    L, block, kk = 250, 64, 2
    q, k, _ = _inputs(L, seed=7)
    idx, valid = _random_selection(L, 2, block, kk, seed=11)
    phi_q, v64, s_c, num, den = _background(L, block, idx, valid)
    v = v64.float()
    o_ref, lse_ref = block_sparse_reference(q.double(), k.double(), v64, idx, valid, block)
    states, z_states = s_c[..., :-1].float(), s_c[..., -1].float()
    kw = dict(tiles=(32, 32, 4, 1))
    if merge == "gated":
        g = torch.rand(1, 2, L, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        o, lse = triton_kernels.fused_spike_merge_triton(
            q, k, v, idx, valid, block, phi_q.float(), states, gate=g.float(), **kw
        )
        ref = merge_gated(o_ref, num, g)
    else:
        lam = torch.tensor([0.5, 2.0], dtype=torch.float64)
        o, lse = triton_kernels.fused_spike_merge_triton(
            q, k, v, idx, valid, block, phi_q.float(), states, z_states=z_states, lam=lam, **kw
        )
        ref = merge_mass(o_ref, lse_ref, num, den, lam)
    # the spike's fp32 error plus the background read-out's (r-term fp32 products, the states
    # rounded to fp32): relative errors of both terms, which enter the output at the scale of v
    # (gated: N is rescaled to rms(o_s); mass: N / Z_bg is a weighted mean of values)
    scale = float(v.abs().max()) + float(ref.abs().max())
    assert (o.double() - ref).abs().max() < _fp32_tol(32 + 16, kk * block, scale, mult=8.0)
    assert (lse.double() - lse_ref).abs().max() < 1e-4  # (spike lse, as in the fp32 test)


@interpreted
def test_fused_merge_at_full_selection_is_the_spike():
    """A full selection leaves an all-zero complement: N = 0, the gated merge returns o_s."""
    L, block = 128, 64
    q, k, v = _inputs(L, seed=4)
    idx = torch.tensor([0, 1]).expand(1, 2, 2, 2)
    valid = torch.ones_like(idx, dtype=torch.bool)
    phi_q = torch.rand(1, 2, L, 16)
    states = torch.zeros(1, 2, 2, 16, 32)
    gate = torch.full((1, 2, L), 0.5)
    kw = dict(tiles=(64, 64, 4, 1))
    o, _ = triton_kernels.fused_spike_merge_triton(
        q, k, v, idx, valid, block, phi_q, states, gate=gate, **kw
    )
    o_s, _ = triton_kernels.block_sparse_triton(q, k, v, idx, valid, block, **kw)
    assert torch.equal(o, o_s)


@interpreted
@pytest.mark.parametrize(
    "variant",
    [
        dict(),  # gated merge (the default)
        dict(complement=False),
        dict(merge="mass", feature_map="elu1"),  # exact lse, fused
        dict(merge="mass", feature_map="elu1", mass_lse="estimate"),  # kernel spike + estimate
        dict(background=False),  # spike only
        "sink",  # HunyuanVideo's text keys: kernel spike + lse, merged with the dense part
    ],
    ids=["gated", "all-keys", "mass", "mass-estimate", "spike", "sink"],
)
def test_ropeslr_attention_triton_backend_matches_reference(variant):
    """``backend="triton"`` through :func:`ropeslr_attention` (layout, selection, features) equals
    the reference backend run in fp64 on the same fp32 inputs and parameters."""
    from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention

    grid, heads, d = (2, 8, 8), 2, 16
    kw = dict(block_size=32, tile=(2, 4, 4), density=0.5, rank=12)
    extra = {}
    if variant == "sink":
        g = torch.Generator().manual_seed(9)
        sk, sv = (torch.randn(1, heads, 5, d, generator=g) for _ in range(2))
        extra = dict(sink_k=sk, sink_v=sv, sink_mask=torch.tensor([[1, 1, 1, 0, 1]]).bool())
        variant = {}
    cfg = RoPeSLRConfig(backend="triton", **kw, **variant)
    params = RoPeSLRParams(cfg, heads, d)
    with torch.no_grad():  # a trained-looking gate and lambda, so the background matters
        params.gate_w.normal_()
        if cfg.merge == "mass":
            params.log_lambda.fill_(1.0)
    q, k, v, qp, kp = _inputs(128, H=heads, d=d, seed=13) + _inputs(128, H=heads, d=d, seed=14)[:2]
    with torch.no_grad():
        out = ropeslr_attention(
            q, k, v, config=cfg, params=params, q_pre=qp, k_pre=kp, grid=grid, **extra
        )
        ref_cfg = RoPeSLRConfig(backend="reference", **kw, **variant)
        ext64 = {n: t.double() if t.is_floating_point() else t for n, t in extra.items()}
        ref = ropeslr_attention(
            *(t.double() for t in (q, k, v)), config=ref_cfg, params=params.double(),
            q_pre=qp.double(), k_pre=kp.double(), grid=grid, **ext64,
        )  # fmt: skip
    scale = float(ref.abs().max()) + float(v.abs().max())
    assert (out.double() - ref).abs().max() < _fp32_tol(d + 12, 2 * 32 + 5, scale, mult=16.0)


@interpreted
def test_ropeslr_attention_triton_backend_bf16():
    """bf16 inputs and parameters through the fused path (features, states and gate in bf16,
    as a bf16 model runs them) against the fp64 reference of the same bf16 values: within the
    bf16 rounding of o_s, the features and the states (a few u16 of the output's scale)."""
    from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention

    grid, heads, d = (2, 8, 8), 2, 16
    kw = dict(block_size=32, tile=(2, 4, 4), density=0.5, rank=12)
    params = RoPeSLRParams(RoPeSLRConfig(**kw), heads, d)
    with torch.no_grad():
        params.gate_w.normal_()
    bf = [t.bfloat16() for t in _inputs(128, H=heads, d=d, seed=21) + _inputs(128, H=heads, d=d)]
    q, k, v, qp, kp = bf[:5]
    with torch.no_grad():
        out = ropeslr_attention(
            q,
            k,
            v,
            config=RoPeSLRConfig(backend="triton", **kw),
            params=params.bfloat16(),
            q_pre=qp,
            k_pre=kp,
            grid=grid,
        )
        ref = ropeslr_attention(*(t.double() for t in (q, k, v)),
                                config=RoPeSLRConfig(backend="reference", **kw),
                                params=params.double(), q_pre=qp.double(), k_pre=kp.double(),
                                grid=grid)  # fmt: skip
    assert out.dtype == torch.bfloat16
    scale = float(ref.abs().max()) + float(v.abs().max())
    assert (out.double() - ref).abs().max() < 8 * U16 * scale


@interpreted
@pytest.mark.slow  # a diffusers model in the interpreter: ~6 s of CPU, minutes on a busy machine
def test_wan_transformer_triton_backend_matches_reference(wan_dir):
    """A tiny diffusers WanTransformer3DModel (saved and reloaded; head dim 12, so the kernel's
    head-dim masking is exercised) with RoPeSLR on the triton and on the reference backend:
    the same forward, up to fp32 attention rounding carried through two blocks."""
    from diffusers import WanTransformer3DModel

    from diffkit.attention import RoPeSLRConfig, apply_ropeslr_

    kw = dict(density=0.5, block_size=32, tile=(2, 4, 4), rank=12)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 4, 4, 16, 16, generator=g), torch.tensor([700.0, 300.0])
    c = torch.randn(2, 3, 16, generator=g)
    outs = {}
    for backend in ("reference", "triton"):
        model = WanTransformer3DModel.from_pretrained(wan_dir).eval()
        torch.manual_seed(0)  # the same new RoPeSLR parameters for both
        apply_ropeslr_(model, RoPeSLRConfig(backend=backend, **kw))
        with torch.no_grad():
            outs[backend] = model(x, t, c, return_dict=False)[0]
    ref = outs["reference"]
    assert (outs["triton"] - ref).abs().max() < 1e-4 * float(ref.abs().max())


def test_invalid_arguments_are_named():
    q, k, v = _inputs(128)
    idx, valid = _random_selection(128, 2, 64, 1)
    with pytest.raises(ValueError, match="block_n=48"):
        triton_kernels.block_sparse_triton(q, k, v, idx, valid, 64, tiles=(64, 48, 4, 1))
    with pytest.raises(ValueError, match="idx / valid"):
        triton_kernels.block_sparse_triton(q, k, v, idx[:, :, :1], valid[:, :, :1], 64)
    big = q.expand(2**22, -1, -1, -1)  # a view: 2^31 elements, none allocated
    big_sel = (idx.expand(2**22, -1, -1, -1), valid.expand(2**22, -1, -1, -1))
    with pytest.raises(ValueError, match="32-bit"):
        triton_kernels.block_sparse_triton(big, big, big, *big_sel, 64)
    with pytest.raises(ValueError, match="need CUDA tensors"):  # (this process: no interpreter)
        triton_kernels.block_sparse_triton(q, k, v, idx, valid, 64)
    with pytest.raises(ValueError, match="forward-only"):
        triton_kernels.block_sparse_triton(q.requires_grad_(), k, v, idx, valid, 64)


def _compile_for_cuda(merge, dtype, head_dim, capability):
    """Compile the kernel to a CUDA binary ahead of time (no GPU needed: Triton's wheel ships
    ptxas), with the default tiles the wrapper would launch."""
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    dt = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    bm, bn, warps, stages = triton_kernels.default_tiles(head_dim, 128, dtype)
    const = dict(D=head_dim, BLOCK_D=head_dim, R=64 if merge else 1, BLOCK_R=64 if merge else 16)
    const.update(BLOCK=128, BLOCK_M=bm, BLOCK_N=bn, MERGE=merge, DOT_F32=False)
    const["PRECISION"] = "ieee" if dtype == torch.float32 else "tf32"
    pointers = dict.fromkeys(["Q", "K", "V", "O", "PHI", "ST", "ZS", "GATE"], "*" + dt)
    pointers.update(LSE="*fp32", LAM="*fp32", IDX="*i32", CNT="*i32")
    names = list(inspect.signature(triton_kernels._spike_kernel.fn).parameters)
    sig = {n: pointers.get(n, "constexpr" if n in const else "i32") for n in names}
    sig["qk_scale"] = "fp32"
    src = ASTSource(
        triton_kernels._spike_kernel,
        sig,
        constexprs={(names.index(k),): v for k, v in const.items()},
    )
    target = GPUTarget("cuda", capability, 32)
    return triton.compile(src, target=target, options=dict(num_warps=warps, num_stages=stages))


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="compiles for CUDA, not for the interpreter")
@pytest.mark.parametrize(
    "merge,dtype,head_dim,capability",
    [(0, torch.bfloat16, 128, 90), (1, torch.bfloat16, 128, 90), (2, torch.bfloat16, 64, 80),
     (0, torch.float32, 128, 80)],
)  # fmt: skip
def test_kernel_compiles_for_cuda(merge, dtype, head_dim, capability):
    """What the interpreter cannot check: the kernel lowers to a CUDA binary (sm_80 / sm_90)
    within the GPU's shared memory (Ampere: 163 KiB per block), with its loads pipelined."""
    kernel = _compile_for_cuda(merge, dtype, head_dim, capability)
    assert kernel.asm["cubin"]
    assert kernel.metadata.shared <= 163 * 1024
    # the key/value loads are software-pipelined (asynchronous copies into shared memory)
    assert "async_copy_global_to_local" in kernel.asm["ttgir"]
