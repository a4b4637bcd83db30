"""RoPeSLR's spike as one fused Triton kernel (arXiv 2605.20659, spec b.2 step 5; issue 17 item 5).

:func:`block_sparse_triton` computes exactly what :func:`diffkit.attention.sparse.block_sparse_reference`
computes, softmax(q k^T * scale) v over the selected key blocks of each query block, returning
``o`` (B, H, L, d) and the log-sum-exp ``lse`` (B, H, L, natural log, fp32) that the mass merge
and the text-token merge consume. One program owns ``block_m`` query rows of one (batch, head)
and walks the selected key blocks of its query block, ``block_n`` keys at a time, with
FlashAttention's online softmax (Dao et al. 2022, Alg. 1): a running row max m, row mass l and
un-normalised accumulator, rescaled by exp(m_old - m_new) per tile, so the (L, k b) score matrix
is never written. Scores and accumulators are fp32; the probabilities are cast to v's dtype for
the second product (fp32: IEEE products, no TF32, so fp32 matches the reference to rounding).

:func:`fused_spike_merge_triton` (same pass) also reads the background out of the complement
states and merges it (``merge="gated"`` or ``"mass"``, spec b.4), so o_s and the background
output N never go to memory.

Semantics shared with the reference backend: ``(idx, valid)`` (B, H, n, k) select key blocks
(entries need not be sorted; invalid ones are skipped); keys at positions >= L (the ragged last
block) are masked; rows beyond L are not written. A row with no selected key gets o = 0 and
lse = -inf (FlexAttention's convention; the reference gives NaN there, selections always hold
the query's own block).

Forward only: training uses the reference backend (or flex on CUDA). Tested on CPU tensors
under ``TRITON_INTERPRET=1`` (Triton's NumPy interpreter), which must be set before Triton is
first imported (``triton.language``'s own jit helpers are built then).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from diffkit.attention.background import block_states, complement_states
from diffkit.attention.layout import num_blocks

_LOG2E = 1.4426950408889634


@triton.jit
def _spike_kernel(
    Q,
    K,
    V,
    O,  # noqa: E741 (the kernel's pointer names follow the math)
    LSE,
    IDX,
    CNT,
    PHI,
    ST,
    ZS,
    GATE,
    LAM,
    sq_b,
    sq_h,
    sq_l,
    sk_b,
    sk_h,
    sk_l,
    sv_b,
    sv_h,
    sv_l,
    so_b,
    so_h,
    so_l,
    sp_b,
    sp_h,
    sp_l,
    ss_b,
    ss_h,
    ss_n,
    ss_r,
    sz_b,
    sz_h,
    sz_n,
    sg_b,
    sg_h,
    H,
    L,
    NBLK,
    KMAX,
    qk_scale,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    R: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    MERGE: tl.constexpr,  # 0: spike only, 1: gated merge, 2: mass merge
    PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr,  # 16-bit operands multiplied as fp32 (Triton's interpreter only)
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < L
    d_ok = offs_d < D
    q = tl.load(
        Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_l + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if DOT_F32:
        q = q.to(tl.float32)
    qblk = (pid_m * BLOCK_M) // BLOCK  # the query block these rows belong to
    sel = pid_bh * NBLK + qblk
    cnt = tl.load(CNT + sel)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    # one flat loop over (selected block, key tile) pairs, so the compiler pipelines the loads
    # across blocks (a nested loop of BLOCK / BLOCK_N iterations would be too short to)
    for it in range(0, cnt * (BLOCK // BLOCK_N)):
        kb = tl.load(IDX + sel * KMAX + it // (BLOCK // BLOCK_N))
        offs_n = kb * BLOCK + (it % (BLOCK // BLOCK_N)) * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L
        kt = tl.load(
            k_base + offs_n[None, :] * sk_l + offs_d[:, None],
            mask=n_ok[None, :] & d_ok[:, None],
            other=0.0,
        )  # (BLOCK_D, BLOCK_N)
        if DOT_F32:
            kt = kt.to(tl.float32)
        qk = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # log2 units
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet
        p = tl.math.exp2(qk - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(
            v_base + offs_n[:, None] * sv_l + offs_d[None, :],
            mask=n_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_N, BLOCK_D)
        pv = p.to(vt.dtype)  # probabilities rounded to v's dtype, as the GPU's MMA takes them
        if DOT_F32:
            pv, vt = pv.to(tl.float32), vt.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(pv, vt, input_precision=PRECISION)
        m_i = m_new
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    lse2 = m_i + tl.math.log2(l_i)  # log2 of the spike's softmax mass (-inf: no key)
    if MERGE > 0:
        # background read-out N = phi_q S~_I (spec b.3) of the same rows, in fp32
        offs_r = tl.arange(0, BLOCK_R)
        r_ok = offs_r < R
        phi = tl.load(
            PHI + b * sp_b + h * sp_h + offs_m[:, None] * sp_l + offs_r[None, :],
            mask=row_ok[:, None] & r_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        st = tl.load(
            ST + b * ss_b + h * ss_h + qblk * ss_n + offs_r[:, None] * ss_r + offs_d[None, :],
            mask=r_ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        num = tl.dot(phi, st, input_precision="ieee")  # (BLOCK_M, BLOCK_D)
        if MERGE == 1:  # o = o_s + g rms(o_s) / rms(N) N (background.merge_gated)
            g = tl.load(GATE + b * sg_b + h * sg_h + offs_m, mask=row_ok, other=0.0)
            rms_o = tl.sqrt(tl.sum(o * o, 1) / D + 1e-6)
            rms_n = tl.sqrt(tl.sum(num * num, 1) / D + 1e-6)
            o = o + (g.to(tl.float32) * rms_o / rms_n)[:, None] * num
        else:  # o = (Z_s o_s + lam N) / (Z_s + lam Z_bg), by the running max (merge_mass)
            zs = tl.load(ZS + b * sz_b + h * sz_h + qblk * sz_n + offs_r, mask=r_ok, other=0.0).to(
                tl.float32
            )
            z_bg = tl.maximum(tl.sum(phi * zs[None, :], 1), 0.0)
            lam = tl.load(LAM + h).to(tl.float32)
            log2_bg = tl.math.log2(tl.maximum(lam * z_bg, 1.1754943508222875e-38))
            mx = tl.maximum(lse2, log2_bg)
            w_s = tl.math.exp2(lse2 - mx)
            w_bg = tl.math.exp2(-mx) * lam
            o = (w_s[:, None] * o + w_bg[:, None] * num) / (w_s + w_bg * z_bg)[:, None]
    tl.store(
        O + b * so_b + h * so_h + offs_m[:, None] * so_l + offs_d[None, :],
        o.to(O.dtype.element_ty),
        mask=row_ok[:, None] & d_ok[None, :],
    )
    tl.store(LSE + pid_bh * L + offs_m, lse2 / 1.4426950408889634, mask=row_ok)


def default_tiles(
    head_dim: int, block: int, dtype: torch.dtype = torch.bfloat16
) -> tuple[int, int, int, int]:
    """(block_m, block_n, num_warps, num_stages): FlashAttention-2's Triton tiles for 16-bit
    inputs at this head dim; halved tiles and two stages for fp32 (at d = 128, (128, 64) x 3
    stages of fp32 needs 225 KiB of shared memory: only just under Hopper's 227 KiB, over
    Ampere's 163 KiB); capped at the sparsity block (tiles must divide it). Not yet tuned on
    a GPU."""
    if dtype == torch.float32:
        bm, bn, warps, stages = (64, 32, 4, 2) if head_dim > 64 else (64, 64, 4, 2)
    else:
        bm, bn, warps, stages = (128, 64, 8, 3) if head_dim > 64 else (128, 128, 4, 3)
    return min(bm, block), min(bn, block), warps, stages


def compact_selection(idx: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, valid) -> (blocks (B, H, n, k) int32 with the valid entries first, counts (B, H, n)
    int32): the kernel walks the first count entries of each row."""
    n = idx.shape[2]
    ordered = torch.where(valid, idx, torch.full_like(idx, n)).sort(-1).values
    ordered = torch.where(ordered == n, torch.zeros_like(ordered), ordered)
    return ordered.to(torch.int32).contiguous(), valid.sum(-1).to(torch.int32).contiguous()


def _check(q, k, v, idx, valid, block, block_m, block_n):
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must share one (B, H, L, d) shape, got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    n = num_blocks(q.shape[2], block)
    if idx.shape[:3] != (*q.shape[:2], n) or valid.shape != idx.shape:
        raise ValueError(
            f"idx / valid must be (B, H, n={n}, k), got {tuple(idx.shape)}, {tuple(valid.shape)}"
        )
    if max(q.numel(), k.numel(), v.numel()) >= 2**31:
        raise ValueError(
            f"q, k, v of {q.numel()} elements: the kernel's offsets are 32-bit; split the batch"
        )
    for name, t in (("block_m", block_m), ("block_n", block_n)):
        if t < 16 or t & (t - 1) or block % t:
            raise ValueError(f"{name}={t} must be a power of two >= 16 dividing block={block}")
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ValueError(
            "the Triton spike kernel is forward-only; use backend='reference' (or 'flex' on "
            "CUDA) to train"
        )
    if not q.is_cuda and not triton.knobs.runtime.interpret:
        raise ValueError(
            "the Triton kernels need CUDA tensors (on CPU only Triton's interpreter runs them, "
            "TRITON_INTERPRET=1 set before Triton is imported; tests use it)"
        )


def _launch(q, k, v, idx, valid, block, scale, tiles, merge=0, extra=None):
    bsz, heads, length, d = q.shape
    n = num_blocks(length, block)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    bm, bn, warps, stages = tiles or default_tiles(d, block, q.dtype)
    _check(q, k, v, idx, valid, block, bm, bn)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    blocks, counts = compact_selection(idx, valid)
    o = torch.empty_like(q)
    lse = torch.empty(bsz, heads, length, dtype=torch.float32, device=q.device)
    # Triton's interpreter multiplies 16-bit tl.dot operands wrongly (3.9, seen with bf16), so
    # there they are widened to fp32 first: the same exact products, the p rounding kept.
    dot_f32 = bool(triton.knobs.runtime.interpret)
    prec = "ieee" if q.dtype == torch.float32 or dot_f32 else "tf32"  # (unused for 16-bit)
    dummy = o  # pointer arguments the spike-only variant never reads
    phi, st, zs, gate, lam = extra or (dummy, dummy.unsqueeze(-1), dummy, dummy[..., 0], dummy)
    rank = phi.shape[-1] if extra else 1
    grid = (triton.cdiv(length, bm), bsz * heads)
    _spike_kernel[grid](
        q, k, v, o, lse, blocks, counts, phi, st, zs, gate, lam,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        *phi.stride()[:3], *st.stride()[:4], *zs.stride()[:3], *gate.stride()[:2],
        heads, length, n, blocks.shape[-1], scale * _LOG2E,
        D=d, BLOCK_D=max(16, triton.next_power_of_2(d)), R=rank, BLOCK_R=max(16, triton.next_power_of_2(rank)),
        BLOCK=block, BLOCK_M=bm, BLOCK_N=bn, MERGE=merge, PRECISION=prec, DOT_F32=dot_f32,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o, lse


def block_sparse_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    scale: float | None = None,
    tiles: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spike: (o (B, H, L, d) in q's dtype, lse (B, H, L) fp32), as
    :func:`~diffkit.attention.sparse.block_sparse_reference` over the same selection.

    ``tiles`` = (block_m, block_n, num_warps, num_stages), default :func:`default_tiles`.
    """
    return _launch(q, k, v, idx, valid, block, scale, tiles)


def fused_spike_merge_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    phi_q: torch.Tensor,
    states: torch.Tensor,
    *,
    gate: torch.Tensor | None = None,
    z_states: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
    scale: float | None = None,
    tiles: tuple[int, int, int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spike + background read-out + merge in one pass (spec b.3-b.4), returning (o, lse_s).

    ``phi_q`` (B, H, L, r) are the tile-major query features, ``states`` (B, H, n, r, d) the
    complement states S~_I of each query block (:func:`~diffkit.attention.background.
    complement_states`), so N = phi_q S~_I. With ``gate`` (B, H, L): the gated merge
    o_s + g rms(o_s) / rms(N) N; with ``z_states`` (B, H, n, r) and ``lam`` (H,): the mass merge
    (Z_s o_s + lam N) / (Z_s + lam max(phi_q . z~_I, 0)), Z_s = e^{lse_s}. lse is the spike's.
    """
    if (gate is None) == (z_states is None):
        raise ValueError("pass gate (gated merge) or z_states and lam (mass merge), not both")
    bsz, heads, length, d = q.shape
    n = num_blocks(length, block)
    r = phi_q.shape[-1]
    if phi_q.shape[:3] != q.shape[:3] or states.shape != (bsz, heads, n, r, d):
        raise ValueError(
            f"phi_q must be (B, H, L, r) and states (B, H, n={n}, r, d={d}), got "
            f"{tuple(phi_q.shape)} and {tuple(states.shape)}"
        )
    phi_q = phi_q if phi_q.stride(-1) == 1 else phi_q.contiguous()
    states = states if states.stride(-1) == 1 else states.contiguous()
    if gate is not None:
        gate = gate.reshape(bsz, heads, length).contiguous()
        extra = (phi_q, states, phi_q, gate, phi_q)
        return _launch(q, k, v, idx, valid, block, scale, tiles, 1, extra)
    if lam is None or z_states.shape != (bsz, heads, n, r):
        raise ValueError("the mass merge needs z_states (B, H, n, r) and lam (H,)")
    zs = z_states if z_states.stride(-1) == 1 else z_states.contiguous()
    extra = (phi_q, states, zs, phi_q[..., 0], lam.to(torch.float32).contiguous())
    return _launch(q, k, v, idx, valid, block, scale, tiles, 2, extra)


def spike_background_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    *,
    complement: bool = True,
    gate: torch.Tensor | None = None,
    lam: torch.Tensor | None = None,
) -> torch.Tensor:
    """RoPeSLR's whole attention on tile-major tensors: the complement states S~_I (and z~_I for
    the mass merge) from :mod:`~diffkit.attention.background`, then one kernel pass for spike,
    background read-out and merge (``gate``: gated; ``lam``: mass). Returns o (B, H, L, d)."""
    mass = gate is None
    states, zs = block_states(phi_k, v, block, need_z=mass)
    if mass:
        states = torch.cat([states, zs[..., None]], -1)
    sel = (idx, valid) if complement else (None, None)
    s_c = complement_states(states, *sel)
    if mass:
        o, _ = fused_spike_merge_triton(
            q, k, v, idx, valid, block, phi_q, s_c[..., :-1], z_states=s_c[..., -1], lam=lam
        )
    else:
        o, _ = fused_spike_merge_triton(q, k, v, idx, valid, block, phi_q, s_c, gate=gate)
    return o
