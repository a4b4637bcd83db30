"""Block-sparse softmax attention on CPU as gather-then-dense (spec b.2 step 5, the "gather" backend).

For each query block I of ``block`` tokens, the key/value blocks it selected are gathered into one
contiguous (k * block, d) sequence and the query block attends to it with PyTorch's fused CPU
flash-attention kernel (the kernel behind ``scaled_dot_product_attention``, which also returns
the per-row log-sum-exp). Every query block is one batch entry of that kernel, so the FLOPs are
exactly those of the sparse ideal, 4 L (k block) d, and the only extra work is the copy of the
selected key/value blocks (small against the attention: ~10 % of its time at k = 13, d = 64).
Query blocks go through in chunks, so memory stays bounded: with one thread, one block per
call (its gathered copy stays in cache: measured at 16K tokens, as fast as or up to 20 % faster
than 4 or 16 blocks per call); with several threads, :data:`BLOCKS_PER_THREAD` blocks per thread
per call. Measured on an idle 2-core AMX VM (spike alone, 2 threads, fp32, d = 64): 4 blocks per
call 57-118 ms at 16K against 104-160 ms for as many blocks as fit in 64 MB, the previous
default (``benchmarks/results/attention_spike_threads.md``): small chunks keep each call's
gathered keys in cache. On a heavily shared machine the opposite held (load ~17: 2 blocks per
call 0.5x SDPA's speed, 128 blocks 3.9x), since every call is a parallel region whose threads
must all meet at its end; there, pass ``chunk`` or run torch on one thread.

The ragged last key block and invalid selection entries (top-p) are masked with an additive
-inf mask, only in the chunks that contain one. Same numbers as
:func:`diffkit.attention.sparse.block_sparse_reference` up to floating-point round-off
(``tests/attention/test_gathered.py``); forward only (inference): training uses the reference
backend. No compilation, so no first-call cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from diffkit.attention.layout import num_blocks

#: Query blocks per kernel call and torch thread when torch runs several threads.
BLOCKS_PER_THREAD = 2
#: Upper bound on the gathered key + value bytes of one kernel call.
CHUNK_BYTES = 64 << 20


def _flash(q, k, v, mask, scale):
    """(o, lse) of dense softmax attention, q (N, 1, m, d), k/v (N, 1, s, d); lse fp32."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, attn_mask=mask, scale=scale
    )


def block_sparse_gathered(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    scale: float | None = None,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale) v restricted to the selected key blocks of each query block.

    q, k, v (B, H, L, d) on CPU (tile-major order); idx / valid (B, H, n, k) the selection.
    Returns ``o`` (B, H, L, d) in q's dtype and ``lse`` (B, H, L) in fp32 (fp64 for fp64 input),
    natural-log units. ``chunk`` = query blocks per kernel call (None: 1 with one torch thread,
    else :data:`BLOCKS_PER_THREAD` per thread, at most :data:`CHUNK_BYTES` of gathered keys).
    """
    if q.is_cuda:
        raise ValueError("the gather backend runs on CPU; use backend='flex' on CUDA")
    bsz, heads, length, d = q.shape
    n = num_blocks(length, block)
    kk = idx.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    pad = n * block - length
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    rows = bsz * heads * n
    qb = q.reshape(rows, 1, block, d)  # one query block per batch entry
    kb, vb = k.reshape(rows, block, d), v.reshape(rows, block, d)
    # global block index of every selected key block: (B*H*n, k)
    base = torch.arange(bsz * heads, device=q.device).repeat_interleave(n) * n
    gidx = idx.reshape(rows, kk) + base[:, None]
    masked = None  # (B*H*n, k * block) key mask, only where some key must be dropped
    if pad or not bool(valid.all()):
        key_ok = valid.reshape(rows, kk, 1)
        if pad:
            key_ok = key_ok & (idx.reshape(rows, kk, 1) * block + torch.arange(block) < length)
        masked = key_ok.reshape(rows, kk * block)
        needs_mask = (~masked.all(-1)).tolist()  # per query block, read once
    if chunk is None:
        chunk = 1
        if torch.get_num_threads() > 1:
            fit = max(1, CHUNK_BYTES // (2 * kk * block * d * q.element_size()))
            chunk = min(fit, BLOCKS_PER_THREAD * torch.get_num_threads())
    outs, lses = [], []  # concatenated once at the end: no per-block slice-and-copy
    q_chunks, sel_chunks = qb.split(chunk), gidx.split(chunk)
    for c, (q_c, sel_c) in enumerate(zip(q_chunks, sel_chunks, strict=True)):
        s, m = c * chunk, q_c.shape[0]
        sel = sel_c.reshape(-1)
        kg = kb.index_select(0, sel).view(m, 1, kk * block, d)
        vg = vb.index_select(0, sel).view(m, 1, kk * block, d)
        mask = None
        if masked is not None and any(needs_mask[s : s + m]):
            mask = torch.zeros(m, 1, 1, kk * block, dtype=q.dtype)
            mask.masked_fill_(~masked[s : s + m, None, None, :], float("-inf"))
        o_c, lse_c = _flash(q_c, kg, vg, mask, scale)
        outs.append(o_c)
        lses.append(lse_c)
    o = torch.cat(outs) if len(outs) > 1 else outs[0]
    lse = torch.cat(lses) if len(lses) > 1 else lses[0]
    o = o.reshape(bsz, heads, n * block, d)
    lse = lse.reshape(bsz, heads, n * block)
    if pad:
        o, lse = o[:, :, :length], lse[:, :, :length]
    return o, lse
