"""Exact block-sparse softmax attention returning (output, log-sum-exp) (spec b.2 step 5).

Two backends over the same ``(idx, valid)`` block selection, proven equal by one test suite:

* :func:`block_sparse_reference`: pure PyTorch, gather + batched matmul, fp64-capable and
  differentiable; query blocks are processed in chunks to bound memory.
* :func:`block_sparse_flex`: FlexAttention with a ``BlockMask`` built directly from the top-k
  indices (``BlockMask.from_kv_blocks``, no mask_mod tracing). Only the ragged last key block is a
  "partial" block masked by ``kv_idx < L``; the block count is padded to a bucket so nearby lengths
  share one compiled kernel. Forward-only on CPU (PyTorch has no CPU flex backward).

Both return ``o`` (B, H, L, d) and ``lse`` (B, H, L) in natural-log units.
"""

from __future__ import annotations

import inspect
import logging
import math

import torch
import torch.nn.functional as F

from diffkit.attention.layout import num_blocks

log = logging.getLogger(__name__)

_MAX_CHUNK_ELEMENTS = 1 << 24


def gather_blocks(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, H, n, ...) indexed by idx (B, H, m, k) -> (B, H, m, k, ...)."""
    b, h = idx.shape[:2]
    flat = x.reshape(b * h, x.shape[2], *x.shape[3:])
    rows = torch.arange(b * h, device=x.device)[:, None]
    out = flat[rows, idx.reshape(b * h, -1)]
    return out.view(*idx.shape, *x.shape[3:])


def block_sparse_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    scale: float | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale) v restricted to the selected key blocks of each query block."""
    bsz, heads, length, d = q.shape
    n = num_blocks(length, block)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    pad = n * block - length
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    qb = q.unflatten(2, (n, block))
    kb = k.unflatten(2, (n, block))
    vb = v.unflatten(2, (n, block))
    kk = idx.shape[-1]
    key_pos = idx[..., None] * block + torch.arange(block, device=q.device)  # (B, H, n, k, b)
    key_ok = (key_pos < length) & valid[..., None]
    if chunk is None:
        per_block = kk * block * max(d, block) * bsz * heads
        chunk = max(1, min(n, _MAX_CHUNK_ELEMENTS // max(1, per_block)))
    outs, lses = [], []
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        ci = idx[:, :, s:e]
        kg = gather_blocks(kb, ci).flatten(3, 4)  # (B, H, m, k*b, d)
        vg = gather_blocks(vb, ci).flatten(3, 4)
        att = (qb[:, :, s:e] @ kg.transpose(-1, -2)) * scale  # (B, H, m, b, k*b)
        mask = key_ok[:, :, s:e].flatten(3, 4)[:, :, :, None, :]
        att = att.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(att, dim=-1)
        outs.append(torch.exp(att - lse[..., None]) @ vg)
        lses.append(lse)
    o = torch.cat(outs, 2).flatten(2, 3)[:, :, :length]
    lse = torch.cat(lses, 2).flatten(2, 3)[:, :, :length]
    return o, lse


_COMPILED: dict[str, object] = {}


def _flex_fn(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if "flex" not in _COMPILED:
        _raise_recompile_limit()
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    return _COMPILED["flex"]


def _raise_recompile_limit() -> None:
    """One kernel per (length bucket, head dims, lse read-out): a model with a few resolutions
    passes dynamo's default limit of 8 recompiles, after which a compiled function silently runs
    eagerly (flex: densely, ~50x slower; seen in the benchmark); raise the limit to 64."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), 64))


# Flex kernel options per head dim on CUDA, set by set_cuda_kernel_options (e.g. from
# `benchmarks/attention.py --tune-flex`); where unset, _TUNED for the GPU's compute capability,
# else flex's own defaults.
_CUDA_KERNEL_OPTIONS: dict[int, dict] = {}
# Hopper (sm_90): picked by `--tune-flex` on an H200 (PyTorch 2.11, bf16, 12 heads, density 0.1,
# L = 75,600 and 131,072; benchmarks/results/attention_gpu.json): 1.12x (d=128) and 1.48x (d=64)
# faster block-sparse spikes than flex's defaults.
_TUNED: dict[tuple[int, int], dict] = {
    (9, 128): {"USE_TMA": True, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    (9, 64): {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
}


def set_cuda_kernel_options(head_dim: int, options: dict | None) -> None:
    """Use these flex ``kernel_options`` for CUDA calls at this head dim ({} = flex's defaults,
    None = back to the tuned table)."""
    if options is None:
        _CUDA_KERNEL_OPTIONS.pop(head_dim, None)
    else:
        _CUDA_KERNEL_OPTIONS[head_dim] = dict(options)


def cuda_kernel_options(
    head_dim: int, block: int, capability: tuple[int, int] | None = None
) -> dict | None:
    """The kernel options of a CUDA flex call: those set for this head dim, else the tuned ones
    for this GPU generation (``capability``, default: the current device's), with the kernel
    tiles capped at the sparsity block (flex's tiles must divide it)."""
    if head_dim in _CUDA_KERNEL_OPTIONS:
        opts = dict(_CUDA_KERNEL_OPTIONS[head_dim])
    else:
        if capability is None:
            capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else None
        major = capability[0] if capability else None
        opts = dict(_TUNED.get((major, head_dim), {}))
    if block < 128:
        opts["BLOCK_M"] = min(opts.get("BLOCK_M", block), block)
        opts["BLOCK_N"] = min(opts.get("BLOCK_N", block), block)
    return opts or None


def bucket_blocks(n: int, multiple: int = 16) -> int:
    """Block count padded up to a multiple of ``multiple`` (one compiled kernel per bucket)."""
    return -(-n // multiple) * multiple


def flex_block_mask(
    idx: torch.Tensor,
    valid: torch.Tensor,
    length: int,
    block: int,
    n_pad: int,
    backward: bool = True,
    sink: bool = False,
):
    """``BlockMask`` from the selection: full blocks + the ragged tail block as a partial one.

    Padded query blocks (beyond n) attend to block 0 only; their rows are discarded.
    ``backward=False`` skips the transposed (query-major) block lists only a backward uses.
    ``sink=True`` appends one key block (index ``n_pad``) whose first position every query
    attends to (see :func:`block_sparse_flex`: it reads the log-sum-exp out of the output).
    """
    from torch.nn.attention.flex_attention import BlockMask

    bsz, heads, n, kk = idx.shape
    dev = idx.device
    ragged = length % block != 0
    tail = n - 1
    is_partial = valid & (idx == tail) if ragged else torch.zeros_like(valid)
    is_full = valid & ~is_partial
    big = n_pad + 1
    n_kv = n_pad + 1 if sink else n_pad

    def pack(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cnt = sel.sum(-1).to(torch.int32)
        if bool(sel.all()):  # the common case (top-k, no ragged tail): idx is sorted already
            ordered = idx
        else:
            ordered = torch.where(sel, idx, torch.full_like(idx, big)).sort(-1).values
            ordered = torch.where(ordered == big, torch.zeros_like(ordered), ordered)
        ind = torch.zeros(bsz, heads, n_pad, n_kv, dtype=torch.int32, device=dev)
        ind[:, :, :n, :kk] = ordered.to(torch.int32)
        num = torch.zeros(bsz, heads, n_pad, dtype=torch.int32, device=dev)
        num[:, :, :n] = cnt
        return num, ind

    full_num, full_ind = pack(is_full)
    part_num, part_ind = pack(is_partial)
    part_num[:, :, n:] = 1  # padded query rows: one (masked-out) block so no row is empty
    if sink:  # the sink block goes last in every query block's partial list (stays sorted)
        part_ind.scatter_(-1, part_num[..., None].long(), n_pad)
        part_num += 1
    limit = torch.tensor(length, device=dev)
    sink_pos = torch.tensor(n_pad * block if sink else -1, device=dev)
    # Eager (uncompiled) flex evaluates mask_mod densely and ignores block sparsity, so the
    # mask_mod also encodes the selection; compiled flex only calls it on the partial tail block.
    sel = torch.zeros(bsz, heads, n_pad, n_kv, dtype=torch.bool, device=dev)
    sel[:, :, :n, :n] = torch.zeros(bsz, heads, n, n, dtype=torch.bool, device=dev).scatter(
        -1, idx, valid
    )
    sel[:, :, n:, 0] = True
    if sink:
        sel[:, :, :, n_pad] = True

    def mask_mod(b, h, q_idx, kv_idx):
        ok = (kv_idx < limit) | (kv_idx == sink_pos)  # sink_pos = -1 without a sink
        return ok & sel[b, h, q_idx // block, kv_idx // block]

    extra = {}
    if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
        extra["compute_q_blocks"] = backward  # PyTorch >= 2.8 (older ones always compute them)
    return BlockMask.from_kv_blocks(
        part_num,
        part_ind,
        full_num,
        full_ind,
        BLOCK_SIZE=block,
        mask_mod=mask_mod,
        seq_lengths=(n_pad * block, n_kv * block),
        **extra,
    )


def block_sparse_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    scale: float | None = None,
    compiled: bool = True,
    bucket: int = 16,
    return_lse: bool = True,
    lse_readout: bool | None = None,
    kernel_options: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same computation as :func:`block_sparse_reference` through FlexAttention.

    Compiled flex on CPU cannot return the log-sum-exp (PyTorch 2.13: "torch.compile on CPU only
    supports inference and return_lse is not supported yet"). There the lse is read out of the
    output instead: one extra *sink* key (all-zero, so its score is 0) is appended and every
    query attends to it, and v gets two extra columns, 1 on the real keys and 1 on the sink. The
    softmax then returns a = Z/(Z+1) and w = 1/(Z+1) in those columns (Z = sum of exp-scores over
    the selected keys), so o_s = o[:d] / a and lse = log a - log w, exact up to rounding; the
    extra cost is one key block per query block, the value columns and the copies of k and v
    that carry them (~20 % of the spike at 16K, d = 64). Returns lse = None where
    the read-out is not finite (w underflows when a row's scores exceed ~88), and the caller falls
    back to the reference path. ``lse_readout`` forces (True) or forbids (False) this read-out;
    None uses it exactly where it is needed (compiled, CPU, lse requested).
    ``kernel_options`` go to flex's Triton kernel (CUDA); None = :func:`cuda_kernel_options`.
    """
    length, d = q.shape[2:]
    qp, kp, vp, n_pad = _pad_to_bucket(q, k, v, block, bucket)
    backward = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if kernel_options is None and q.is_cuda:
        kernel_options = cuda_kernel_options(d, block, torch.cuda.get_device_capability(q.device))
    fn = _flex_fn(compiled)
    if lse_readout is None:
        lse_readout = compiled and not q.is_cuda
    if return_lse and lse_readout:
        if backward:
            raise ValueError(
                "the lse read-out is inference-only (compiled FlexAttention on CPU has no "
                "backward); use the reference backend to train"
            )
        o_raw, a, w = _flex_readout(fn, qp, kp, vp, idx, valid, length, block, n_pad, scale)
        lse = a.log() - w.log()
        o_s = o_raw / a[..., None]
        return o_s, lse if bool(torch.isfinite(lse).all()) else None
    mask = flex_block_mask(idx, valid, length, block, n_pad, backward)
    kw = dict(block_mask=mask, scale=scale, kernel_options=kernel_options)
    if not return_lse:
        o = fn(qp, kp, vp, **kw)
        o = o[0] if isinstance(o, tuple) else o
        return o[:, :, :length], None
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:  # PyTorch < 2.9: the older flag
        o, lse = fn(qp, kp, vp, return_lse=True, **kw)
    else:
        o, aux = fn(qp, kp, vp, return_aux=AuxRequest(lse=True), **kw)
        lse = aux.lse
    return o[:, :, :length], lse[:, :, :length]


def _pad_to_bucket(q, k, v, block, bucket):
    """q, k, v zero-padded along L to the bucketed block count; returns them and that count."""
    length = q.shape[2]
    n_pad = bucket_blocks(num_blocks(length, block), bucket)
    pad = n_pad * block - length
    return *(F.pad(t, (0, 0, 0, pad)) if pad else t for t in (q, k, v)), n_pad


def _flex_readout(fn, qp, kp, vp, idx, valid, length, block, n_pad, scale):
    """Flex attention over the selection plus one all-zero sink key (score 0, weight 1), with v
    extended by two columns (1 on the real keys, 1 on the sink): returns (o_raw, a, w) over the
    first ``length`` rows, o_raw = Z o_s / (Z + 1), a = Z / (Z + 1), w = 1 / (Z + 1), Z the
    softmax mass of the selected keys (see block_sparse_flex). a is read out rather than taken as
    1 - w, which would cancel where Z << 1; one column or two cost the same (measured at d = 64).
    """
    d = qp.shape[-1]
    mask = flex_block_mask(idx, valid, length, block, n_pad, False, sink=True)
    Lk = n_pad * block
    k_ext = F.pad(kp, (0, 0, 0, block))  # sink key (and the rest of its block): zeros
    v_ext = F.pad(vp, (0, 2, 0, block))  # value columns d, d+1 carry a and w
    v_ext[:, :, :length, d] = 1.0
    v_ext[:, :, Lk, d + 1] = 1.0
    o = fn(qp, k_ext, v_ext, block_mask=mask, scale=scale)
    o = (o[0] if isinstance(o, tuple) else o)[:, :, :length]
    return o[..., :d], o[..., d], o[..., d + 1]


def block_sparse_flex_readout(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    scale: float | None = None,
    compiled: bool = True,
    bucket: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The sink read-out of :func:`block_sparse_flex` before normalisation (inference only).

    Returns (o_raw, a, w) with o_raw = Z o_s / (Z + 1) (B, H, L, d), a = Z / (Z + 1) and
    w = 1 / (Z + 1) (B, H, L), Z the softmax mass of the selected keys; so o_s = o_raw / a,
    lse = log a - log w. :func:`merge_mass_readout` merges these with the background directly,
    with no exp/log and no division by a. Returns None where the scores overflowed (w not finite).
    """
    length = q.shape[2]
    qp, kp, vp, n_pad = _pad_to_bucket(q, k, v, block, bucket)
    res = _flex_readout(_flex_fn(compiled), qp, kp, vp, idx, valid, length, block, n_pad, scale)
    return res if bool(torch.isfinite(res[2]).all()) else None


def estimate_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    scale: float | None = None,
    compiled: bool = False,
) -> torch.Tensor:
    """Estimate of the block-sparse softmax's log-sum-exp from block statistics of the keys.

    For query i in block I and each selected key block J with |J| keys, mean k_J and per-channel
    variance s2_J, the second-order cumulant expansion of sum_{j in J} exp(scale q_i . k_j) is

        |J| exp(scale q_i . k_J + scale^2 (q_i * q_i) . s2_J / 2),

    so log Z_i ~= logsumexp_J [scale q_i . k_J + scale^2 (q_i^2) . s2_J / 2 + log |J|]. Exact
    where the keys of a block are equal; costs 2 L k d multiply-adds per term (k selected blocks)
    against the spike's 4 L k b d. Used by merge="mass" with mass_lse="estimate" ([ours];
    measured in docs/attention.md). Returns (B, H, L), in fp32 for half-precision inputs (as
    flex's lse).

    ``compiled`` (inference) evaluates the k selected blocks per query as one fused
    torch.compile kernel instead of a batched matmul with k columns, which the CPU's batched
    GEMM runs at a fraction of its speed (k ~ 13 at 16K tokens); the first call compiles
    (~10 s), once for all resolutions (the block count and selection width are dynamic).
    """
    bsz, heads, length, d = q.shape
    n = num_blocks(length, block)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    # moments in fp32 for half-precision input (E[k^2] - E[k]^2 cancels); q is cast where used
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    k_in, k = k, k.to(work)
    pad = n * block - length
    if pad:
        q, k = F.pad(q, (0, 0, 0, pad)), F.pad(k, (0, 0, 0, pad))
    kb = k.unflatten(2, (n, block))  # (B, H, n, b, d)
    count = torch.full((n,), float(block), dtype=work, device=q.device)
    count[-1] = block - pad
    mean = kb.sum(3) / count[:, None]
    # k^2 in place where kb is this call's own copy (cast or padded) and nothing records it: one
    # (L, d) fp32 temporary less (a fresh large buffer costs its page faults on every call)
    own = k is not k_in and not k.requires_grad and not torch.compiler.is_compiling()
    sq = kb.square_() if own else kb * kb
    var = sq.sum(3) / count[:, None] - mean * mean  # padded keys are 0: sums unaffected
    bias = count.log()[idx].masked_fill(~valid, float("-inf"))  # log |J|; -inf drops J
    qb = q.unflatten(2, (n, block))  # (B, H, n, b, d)
    m_s, v_s = mean * scale, var.clamp_min(0) * (scale * scale / 2)
    if compiled:
        qb = qb.to(work)
        if not torch.compiler.is_compiling():  # (inside a compiled model it is simply inlined)
            _mark_blocks_dynamic(qb, m_s, v_s, idx, bias)
        lse = _compiled_lse_from_stats()(qb, m_s, v_s, idx, bias)
    else:  # two batched matmuls (k x d) @ (d x b): m_s against q, then v_s against q*q added
        # in place (k rows, b columns: the CPU's batched GEMM runs this orientation far faster
        # than b x k); q is cast once, contiguously, and squared in place: no (L, 2d) [q, q*q]
        # built through strided copies (at 16K tokens, bf16: 3.0 -> 1.5 ms at d = 64)
        qw = qb.to(work)  # (a copy only for half-precision input)
        zt = gather_blocks(m_s, idx) @ qw.transpose(-1, -2)  # (B, H, n, k, b)
        qw = qw * qw if qw is qb or qw.requires_grad else qw.square_()
        zt.flatten(0, 2).baddbmm_(
            gather_blocks(v_s, idx).flatten(0, 2), qw.flatten(0, 2).transpose(-1, -2)
        )
        lse = torch.logsumexp(zt.add_(bias[..., None]), -2)  # (B, H, n, b)
    return lse.flatten(2, 3)[:, :, :length]


def lse_from_block_stats(
    qb: torch.Tensor, m_s: torch.Tensor, v_s: torch.Tensor, idx: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """logsumexp_J [q . m_s[J] + (q * q) . v_s[J] + bias_J] of :func:`estimate_lse`, written
    elementwise for torch.compile: qb (B, H, n, b, d) query blocks, m_s / v_s (B, H, n, d)
    scaled key means / variances, idx / bias (B, H, n, k) -> (B, H, n, b)."""
    m = gather_blocks(m_s, idx)[:, :, :, None]  # (B, H, n, 1, k, d)
    v = gather_blocks(v_s, idx)[:, :, :, None]
    x = qb[..., None, :]  # (B, H, n, b, 1, d)
    z = (x * (m + x * v)).sum(-1)  # (B, H, n, b, k)
    return torch.logsumexp(z + bias[:, :, :, None, :], -1)


def _mark_blocks_dynamic(qb, m_s, v_s, idx, bias) -> None:
    """Mark the block count n (dim 2) and the selection width k (idx / bias dim 3) dynamic, so
    the compiled estimate is one kernel for every resolution instead of one per (n, k) (issue 17:
    a static kernel recompiled per resolution). Head dim and block size stay static."""
    for t in (qb, m_s, v_s, idx, bias):
        torch._dynamo.maybe_mark_dynamic(t, 2)
    for t in (idx, bias):
        torch._dynamo.maybe_mark_dynamic(t, 3)


def _compiled_lse_from_stats():
    if "lse" not in _COMPILED:
        _raise_recompile_limit()
        # dynamic=None: the dims marked by _mark_blocks_dynamic are symbolic, the rest static
        _COMPILED["lse"] = torch.compile(lse_from_block_stats)
    return _COMPILED["lse"]


def merge_partials(
    o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor, lse2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax over the union of two disjoint key sets from their partial results."""
    lse = torch.logaddexp(lse1, lse2)
    w1 = torch.exp(lse1 - lse)[..., None]
    w2 = torch.exp(lse2 - lse)[..., None]
    return w1 * o1 + w2 * o2, lse


def dense_partial(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense softmax attention with (o, lse); ``key_mask`` (B, S_k) True = attend."""
    att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        att = att.masked_fill(~key_mask[:, None, None, :].to(torch.bool), float("-inf"))
    lse = torch.logsumexp(att, -1)
    o = torch.exp(att - lse[..., None]) @ v
    return torch.nan_to_num(o), lse
