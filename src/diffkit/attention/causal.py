"""RoPeSLR on the causal video DiT ``CausalWan``: block-causal, and exact to its KV cache.

``apply_ropeslr_(causal_wan, RoPeSLRConfig(...))`` swaps each block's ``self_attn`` for a
:class:`RoPeSLRCausalSelfAttention`. It computes q, k, v exactly as ``SelfAttention`` does, through
the *same* ``q/k/v/o/norm_q/norm_k`` modules under the *same* names (so Q-ARVD's ``quantize_`` finds
and replaces them whichever comes first, and the dense model's state_dict keys do not change), and
replaces only the attention. ``remove_ropeslr_`` puts the original ``SelfAttention`` back with the
projections the wrapper holds by then (e.g. ``QuantLinear``s): the (quantized) dense model.

Why the KV-cached rollout equals the full recomputation (``rollout(..., use_cache=False)``): every
query's output must depend only on the keys it may see, computed the same way in both modes.

1. **Blocks never straddle frames.** Each frame is tiled on its own (tile ``(1, T_h, T_w)`` of
   ``config.tile``) and the block is the largest divisor of a frame's tokens <= ``block_size``, so
   a key block holds the same tokens whether it comes from the cache or is recomputed.
2. **The allowed key blocks come from the model's own token mask**, which must be constant over
   each frame's tokens (the block-causal mask and the teacher-forcing mask are); a query block may
   select, and the background may sum, only allowed blocks. With the cache the mask is all-true
   over [cached frames; own chunk]: the same set the block-causal mask allows.
3. **Selection per query block reads only its allowed blocks**: pooled scores q̄_I·k̄_J / √d over
   post-RoPE q, k; budget ⌈ρ n_allowed(I)⌉ (own block, and 3D neighbours within ``local_radius``,
   forced). No smooth-K: subtracting a key mean shifts a row by a constant, which cannot change a
   top-k or a softmax, and the global mean would read keys of later chunks.
4. **The background's complement is over the allowed blocks**:
   S̃_I = Σ_{J allowed, J ∉ sel(I)} Φ_Jᵀ V_J, with the APE at absolute (frame, h, w) positions.
   The cache holds post-RoPE keys only, so every key's pre-RoPE k (cached or not, alike) is
   recovered by the exact inverse rotation.
5. **A query block's arithmetic does not depend on the rest of the call**: the spike runs one
   unmasked SDPA call per budget with one batch entry per query block.

So cached == recomputed up to float round-off (barring two candidate blocks whose pooled scores
tie within round-off). At density 1 every allowed block is selected, the complement is empty and
the output is masked dense attention. A mask that is not constant per frame raises ``ValueError``.
``dense_first_steps`` is refused: a chunk's cached keys come from its t = 0 refresh pass, so a
per-pass dense/sparse switch would make cached and recomputed frames differ.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.attention.background import RoPeSLRParams, block_states, merge_gated, merge_mass
from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.layout import (
    block_mean,
    inverse_permutation,
    num_selected,
    selection_mask,
    tile_permutation,
)
from diffkit.attention.processors import RoPeSLRState, _RoPeSLRProcessorBase
from diffkit.attention.sparse import gather_blocks
from diffkit.core.rope import apply_rope, rope_freqs_3d, split_3d
from diffkit.models.causal_wan import project_qkv

log = logging.getLogger(__name__)

#: the children of ``causal_wan.SelfAttention`` the wrapper shares (same objects, same names).
LEAVES = ("q", "k", "v", "o", "norm_q", "norm_k")
#: gathered key elements per spike call (bounds memory when many query blocks see many keys).
_MAX_GATHER = 1 << 24


def frame_block_size(tokens_per_frame: int, block_size: int) -> int:
    """The largest divisor of a frame's token count that is <= ``block_size``."""
    top = min(block_size, tokens_per_frame)
    return max(d for d in range(1, top + 1) if tokens_per_frame % d == 0)


# ----------------------------------------------------------------------------- layout
@dataclass
class CausalLayout:
    """Token order, positions and allowed block pairs of one ``CausalWan`` forward call.

    Block order: frame-major over frames, each frame tile-major; ``q_perm``/``k_perm`` take
    frame-major tokens to it (None: the identity, tiles of whole rows). ``past`` keys (the KV
    cache) come first in k; the queries' frames are the keys' last ``lq / tokens per frame``.
    """

    block: int
    lq: int
    lk: int
    q_perm: torch.Tensor | None  # (Lq,)
    q_inv: torch.Tensor | None
    k_perm: torch.Tensor | None  # (Lk,)
    frame_perm: torch.Tensor | None  # (P,) one frame's tile-major order
    k_frames: torch.Tensor  # (Fk,) absolute frame index of every key frame
    grid_hw: tuple[int, int]
    allowed: torch.Tensor  # (nq, nk) bool
    forced: torch.Tensor  # (nq, nk) bool, within allowed
    n_allowed: list[int]  # allowed key blocks per query block
    mask: torch.Tensor | None  # the model's token mask (the dense path's)
    past: int  # cached key tokens in front of k
    key_cos: torch.Tensor  # (Lk, d) fp64 tables of the keys' inverse RoPE (frame-major)
    key_sin: torch.Tensor


def _frame_allowed(mask, fq: int, fk: int, per: int) -> torch.Tensor:
    """(Fq, Fk) frame-level mask of a (1, 1, Lq, Lk) boolean token mask constant per frame."""
    if mask is None:
        return torch.ones(fq, fk, dtype=torch.bool)
    if mask.dtype != torch.bool or mask.shape[-2:] != (fq * per, fk * per):
        raise ValueError(
            "RoPeSLR on CausalWan needs a boolean (1, 1, Lq, Lk) token mask; got "
            f"{mask.dtype} of shape {tuple(mask.shape)}"
        )
    if math.prod(mask.shape[:-2]) != 1:
        raise ValueError(
            f"RoPeSLR on CausalWan needs one mask for every batch entry and head; got shape "
            f"{tuple(mask.shape)}"
        )
    tok = mask.reshape(fq, per, fk, per)
    frames = tok[:, 0, :, 0]
    if not torch.equal(tok, frames[:, None, :, None].expand_as(tok)):
        raise ValueError(
            "RoPeSLR on CausalWan supports attention masks that are constant over each frame's "
            "tokens (the block-causal mask, the KV cache, teacher forcing); this one is not: run "
            "it with ropeslr_state(model).mode = 'dense' or remove_ropeslr_ first"
        )
    return frames.cpu()


@functools.lru_cache(maxsize=64)
def _inverse_rope_rows(head_dim: int, grid_hw: tuple[int, int], frames: tuple[int, ...]):
    """(cos, sin) tables (len(frames) * P, head_dim), fp64, whose rotation undoes the RoPE
    ``CausalWan._rope`` gave these frames' tokens exactly: its fp32 (c, s) rotate and scale by
    c² + s² (= 1 to ~6e-8), so the inverse is (c, -s) / (c² + s²)."""
    gh, gw = grid_hw
    cos, sin = rope_freqs_3d(head_dim, (max(frames) + 1, gh, gw))
    rows = (torch.tensor(frames)[:, None] * gh * gw + torch.arange(gh * gw)).flatten()
    c, s = cos[rows].double(), sin[rows].double()
    rho = c * c + s * s
    return c / rho, -s / rho


def grid_ape(params: RoPeSLRParams, layout: CausalLayout, dtype: torch.dtype) -> torch.Tensor:
    """gamma P(frame, h, w) (H, Lk, r) of every key token in block order (the queries' is its
    last Lq rows): the three axis tables broadcast over (frames, h, w), as
    :meth:`RoPeSLRParams.grid_ape` but at the keys' absolute frame indices."""
    (gh, gw), dev = layout.grid_hw, params.beta.device
    axes = (layout.k_frames.to(dev), torch.arange(gh, device=dev), torch.arange(gw, device=dev))
    sizes = (len(axes[0]), gh, gw)
    gamma = params.pe_scale.to(dtype)[:, None, None]
    parts = []
    for a in range(3):
        tab = params.axis_ape(a, axes[a]).to(dtype) * gamma  # (H, N_a, r_a)
        shape = [tab.shape[0], 1, 1, 1, tab.shape[-1]]
        shape[1 + a] = sizes[a]
        parts.append(tab.view(shape).expand(tab.shape[0], *sizes, tab.shape[-1]))
    table = torch.cat(parts, -1)  # (H, F, gh, gw, r)
    if layout.frame_perm is not None:
        table = table.flatten(2, 3).index_select(2, layout.frame_perm)
    return table.flatten(1, -2)


def causal_layout(
    q_frames: torch.Tensor,
    k_frames: torch.Tensor,
    grid_hw: tuple[int, int],
    config: RoPeSLRConfig,
    mask: torch.Tensor | None,
    head_dim: int,
    device: torch.device,
) -> CausalLayout:
    """The :class:`CausalLayout` of a call whose queries are the last ``len(q_frames)`` frames of
    the keys' ``k_frames`` (absolute frame indices; cached frames first)."""
    gh, gw = grid_hw
    per = gh * gw
    fq, fk = len(q_frames), len(k_frames)
    b = frame_block_size(per, config.block_size)
    nb = per // b  # blocks per frame
    tile = (1, min(config.tile[1], gh), min(config.tile[2], gw))
    fperm = tile_permutation((1, gh, gw), tile)
    identity = bool((fperm == torch.arange(per)).all())
    finv = inverse_permutation(fperm)

    def tokens(perm: torch.Tensor, n: int) -> torch.Tensor | None:
        return None if identity else (torch.arange(n)[:, None] * per + perm[None]).flatten()

    hw = torch.stack([torch.arange(per) // gw, torch.arange(per) % gw], 1)[fperm]  # (P, 2)

    frame_ok = _frame_allowed(mask, fq, fk, per)
    allowed = frame_ok.repeat_interleave(nb, 0).repeat_interleave(nb, 1)  # (nq, nk)
    nq, nk = fq * nb, fk * nb
    past = (fk - fq) * per
    own = torch.zeros(nq, nk, dtype=torch.bool)
    own[torch.arange(nq), past // b + torch.arange(nq)] = True
    forced = own
    if config.local_radius > 0:  # 3D neighbours: Chebyshev distance of (frame, tile h, tile w)
        first = torch.arange(nb) * b  # first token of each block within its frame
        tiles = hw[first] // torch.tensor(tile[1:])  # (nb, 2)

        def coords(frames: torch.Tensor) -> torch.Tensor:  # (frame, tile h, tile w) per block
            f = frames.cpu().long().repeat_interleave(nb)[:, None]
            return torch.cat([f, tiles.repeat(len(frames), 1)], 1)

        cheb = (coords(q_frames)[:, None] - coords(k_frames)[None]).abs().amax(-1)
        forced = forced | (cheb <= config.local_radius)
    forced = forced & allowed
    n_allowed = allowed.sum(-1).tolist()
    if min(n_allowed) == 0:
        raise ValueError("the attention mask leaves a query frame with no key to attend to")
    cos, sin = _inverse_rope_rows(head_dim, grid_hw, tuple(k_frames.tolist()))
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    return CausalLayout(
        block=b,
        lq=fq * per,
        lk=fk * per,
        q_perm=to(tokens(fperm, fq)),
        q_inv=to(tokens(finv, fq)),
        k_perm=to(tokens(fperm, fk)),
        frame_perm=None if identity else fperm.to(device),
        k_frames=k_frames.cpu().long(),
        grid_hw=(gh, gw),
        allowed=allowed.to(device),
        forced=forced.to(device),
        n_allowed=n_allowed,
        mask=mask,
        past=past,
        key_cos=cos.to(device),
        key_sin=sin.to(device),
    )


# ----------------------------------------------------------------------------- the math
def causal_select(
    q: torch.Tensor,
    k: torch.Tensor,
    layout: CausalLayout,
    config: RoPeSLRConfig,
    density: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx, valid) (B, H, nq, k') of the key blocks each query block attends exactly.

    q (B, H, Lq, d), k (B, H, Lk, d) post-RoPE in block order. Budget per query block
    ⌈ρ n_allowed⌉ (at least its forced blocks); ``idx`` ascending among valid entries. The pooled
    scores are computed in fp32 (fp64 for fp64 inputs) whatever the model's dtype or autocast.
    """
    b = layout.block
    up = lambda t: t if t.dtype == torch.float64 else t.float()  # noqa: E731
    with torch.autocast(q.device.type, enabled=False):  # fp32 scores: fewer near-ties in bf16
        qb, kb = block_mean(up(q), b), block_mean(up(k), b)
        scores = qb @ kb.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n_forced = layout.forced.sum(-1).tolist()
    budgets = []
    for n, f in zip(layout.n_allowed, n_forced, strict=True):
        rho = config.density_for(n * b) if density is None else density
        budgets.append(max(num_selected(rho, n), f))
    kmax = max(budgets)
    s = scores.masked_fill(~layout.allowed, float("-inf")).masked_fill(layout.forced, float("inf"))
    top, idx = torch.topk(s, kmax, dim=-1, sorted=True)  # (B, H, nq, kmax)
    budget = torch.tensor(budgets, device=q.device)
    valid = torch.arange(kmax, device=q.device) < budget[:, None]  # (nq, kmax)
    valid = valid.expand_as(idx)
    if config.selection == "topp":
        masked = scores.float().masked_fill(~layout.allowed, float("-inf"))
        probs = torch.softmax(masked, -1).gather(-1, idx)
        keep = (probs.cumsum(-1) - probs) < config.top_p
        keep = keep | torch.isposinf(top)
        keep[..., 0] = True
        valid = valid & keep
    nk = scores.shape[-1]
    order = torch.where(valid, idx, idx + nk).argsort(-1)
    return idx.gather(-1, order), valid.gather(-1, order)


def causal_spike(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    valid: torch.Tensor,
    block: int,
    need_lse: bool = False,
    fast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact softmax attention of each query block over its selected key blocks -> (o, lse).

    q (B, H, Lq, d) and k, v (B, H, Lk, d) in block order, Lq != Lk allowed (the KV cache), both
    whole numbers of blocks. ``fast`` (no lse, no gradient): PyTorch's SDPA with one batch entry
    per query block (its fused flash kernel); otherwise explicit masked softmax (differentiable,
    fp64-able, returns the lse). Top-k selections (valid entries first, one count per query
    block) run as one unmasked call per budget, so a query block's arithmetic does not depend on
    the other blocks of the call (cached == recomputed, to the bit where the kernels allow).
    """
    cnt = valid.sum(-1)  # (B, H, nq)
    kk = idx.shape[-1]
    prefix = bool((valid == (torch.arange(kk, device=idx.device) < cnt[..., None])).all())
    if not prefix or not bool((cnt == cnt[:1, :1]).all()):  # top-p: masks per (B, H) row
        return _spike_rows(q, k, v, idx, valid, block, need_lse, fast)
    budgets = cnt[0, 0].tolist()
    if len(set(budgets)) == 1:
        return _spike_rows(q, k, v, idx[..., : budgets[0]], None, block, need_lse, fast)
    o = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.promote_types(q.dtype, torch.float32))
    for c in sorted(set(budgets)):
        rows = torch.tensor([i for i, n in enumerate(budgets) if n == c], device=q.device)
        toks = (rows[:, None] * block + torch.arange(block, device=q.device)).flatten()
        q_c = q.index_select(2, toks)
        o_c, lse_c = _spike_rows(q_c, k, v, idx[:, :, rows, :c], None, block, need_lse, fast)
        o = o.index_copy(2, toks, o_c)  # out of place: autograd-safe
        if lse_c is not None:
            lse = lse.index_copy(2, toks, lse_c.to(lse.dtype))
    return o, (None if fast else lse)


def _spike_rows(q, k, v, idx, valid, block, need_lse, fast):
    """:func:`causal_spike` over these query blocks with one key-block list each (``valid``
    None: all valid, no mask); query blocks go in chunks to bound the gathered copies."""
    bsz, heads, lq, d = q.shape
    nq, nk = lq // block, k.shape[2] // block
    kk = idx.shape[-1]
    qb = q.unflatten(2, (nq, block))
    kb, vb = k.unflatten(2, (nk, block)), v.unflatten(2, (nk, block))
    step = max(1, min(nq, _MAX_GATHER // max(1, bsz * heads * kk * block * max(d, block))))
    outs, lses = [], []
    for s in range(0, nq, step):
        e = min(nq, s + step)
        ci = idx[:, :, s:e]
        kg = gather_blocks(kb, ci).flatten(3, 4)  # (B, H, m, kk*b, d)
        vg = gather_blocks(vb, ci).flatten(3, 4)
        ok = None if valid is None else valid[:, :, s:e].repeat_interleave(block, -1)[..., None, :]
        if fast:
            m = (e - s) * bsz * heads
            o = F.scaled_dot_product_attention(
                qb[:, :, s:e].reshape(m, 1, block, d),
                kg.reshape(m, 1, kk * block, d),
                vg.reshape(m, 1, kk * block, d),
                attn_mask=None if ok is None else ok.reshape(m, 1, 1, kk * block),
            )
            outs.append(o.view(bsz, heads, e - s, block, d))
            continue
        att = (qb[:, :, s:e] @ kg.transpose(-1, -2)) / math.sqrt(d)  # (B, H, m, b, kk*b)
        if ok is not None:
            att = att.masked_fill(~ok, float("-inf"))
        lse = torch.logsumexp(att, -1)
        outs.append(torch.exp(att - lse[..., None]) @ vg)
        lses.append(lse)
    o = torch.cat(outs, 2).flatten(2, 3)
    return o, (torch.cat(lses, 2).flatten(2, 3) if lses else None)


def causal_ropeslr_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    layout: CausalLayout,
    config: RoPeSLRConfig,
    params: RoPeSLRParams | None = None,
    q_pre: torch.Tensor | None = None,
    density: float | None = None,
) -> torch.Tensor:
    """RoPeSLR attention (B, H, Lq, d), frame-major, under the causal structure of ``layout``.

    q (B, H, Lq, d) post-RoPE; k, v (B, H, Lk, d) = [cached keys; this call's keys], post-RoPE;
    q_pre (B, H, Lq, d) the pre-RoPE (normed) queries for the background. The keys' pre-RoPE k is
    rotated back from k, for every key: the cache holds only post-RoPE keys, and recovering all
    keys alike keeps a key's features the same whether it was cached or recomputed. ``params``
    None or ``config.background=False``: the spike path only.
    """
    b = layout.block
    take = lambda x, p: x if p is None else torch.index_select(x, 2, p)  # noqa: E731
    qt, kt, vt = take(q, layout.q_perm), take(k, layout.k_perm), take(v, layout.k_perm)
    idx, valid = causal_select(qt, kt, layout, config, density)
    use_bg = config.background and params is not None
    gated = config.merge == "gated"
    need_lse = use_bg and not gated
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    fast = config.backend != "reference" and not need_lse and not grad
    o_s, lse = causal_spike(qt, kt, vt, idx, valid, b, need_lse, fast)
    if not use_bg:
        return take(o_s, layout.q_inv)
    if q_pre is None:
        raise ValueError("the background path needs the pre-RoPE queries q_pre")
    k_pre = apply_rope(k, layout.key_cos, layout.key_sin)  # the exact inverse rotation
    heads = q.shape[1]
    u_q = params.u_q.expand(heads, -1, -1) if params.u_q.shape[0] == 1 else params.u_q
    u_k = params.u_k.expand(heads, -1, -1) if params.u_k.shape[0] == 1 else params.u_k
    q_pre_t = take(q_pre, layout.q_perm)
    phi_q = params.features(q_pre_t, u_q, None)  # content features c (B, H, Lq, r)
    phi_k = params.features(take(k_pre, layout.k_perm), u_k, None)  # (B, H, Lk, r)
    if config.ape != "none":  # + gamma P at absolute (frame, h, w), as RoPeSLRParams.features
        ape = grid_ape(params, layout, phi_k.dtype)  # (H, Lk, r)
        ape_q = ape[:, layout.lk - layout.lq :]
        if config.inject == "add":
            phi_q, phi_k = phi_q + ape_q, phi_k + ape
        else:
            cat = lambda c, p: torch.cat([c, p.expand(c.shape[0], -1, -1, -1)], -1)  # noqa: E731
            phi_q, phi_k = cat(phi_q, ape_q), cat(phi_k, ape)
    states, zs = block_states(phi_k, vt, b, need_z=not gated)  # (B, H, nk, r, d)
    if not gated:  # z_J rides along as column d of S_J
        states = torch.cat([states, zs[..., None]], -1)
    keep = layout.allowed.expand(*idx.shape[:2], -1, -1)
    if config.complement:
        keep = keep & ~selection_mask(idx, valid, keep.shape[-1])
    s_c = keep.to(states.dtype) @ states.flatten(3)  # (B, H, nq, r * (d [+ 1]))
    s_c = s_c.view(*s_c.shape[:3], *states.shape[3:])
    nq = phi_q.shape[2] // b
    bg = (phi_q.unflatten(2, (nq, b)) @ s_c).flatten(2, 3)  # (B, H, Lq, d [+ 1])
    if gated:
        gate = params.gate(q_pre_t)
        inplace = not (o_s.requires_grad or bg.requires_grad or gate.requires_grad)
        out = merge_gated(o_s, bg, gate, inplace=inplace)
    else:
        lam = params.log_lambda.exp()
        num, den = bg[..., :-1], bg[..., -1]
        inplace = not (o_s.requires_grad or num.requires_grad or lam.requires_grad)
        out = merge_mass(o_s, lse, num, den, lam, inplace=inplace)
    return take(out, layout.q_inv)


# ----------------------------------------------------------------------------- modules
@dataclass
class CausalRoPeSLRState(RoPeSLRState):
    """:class:`RoPeSLRState` of a ``CausalWan``: the frames of the current call (set by the
    model's forward pre-hook, :meth:`observe`) and its layout (built by the first layer)."""

    grid_hw: tuple[int, int] = (1, 1)
    q_frames: torch.Tensor | None = None
    k_frames: torch.Tensor | None = None
    layout: CausalLayout | None = None

    def observe(self, module, args, kwargs) -> None:
        """Forward pre-hook of ``CausalWan``: the query and key frame indices of this call, as
        ``CausalWan.forward`` derives them (keys = cached frames 0..start-1, then the inputs).
        A bound method (not a closure), so ``copy.deepcopy(model)`` hooks the copy's state."""
        x = args[0] if args else kwargs["x"]
        cache = kwargs.get("cache")
        start = cache.frames if cache is not None else 0
        frames = kwargs.get("frame_index")
        q = torch.arange(start, start + x.shape[1]) if frames is None else frames.cpu().long()
        past = torch.arange(0, start) if cache is not None else q[:0]
        self.q_frames, self.k_frames = q, torch.cat([past, q])
        self.layout, self.dense_step = None, False

    def layout_for(self, mask, lq: int, lk: int, head_dim: int, device) -> CausalLayout:
        """This call's layout (built once, shared by the layers)."""
        lay = self.layout
        if lay is not None and lay.mask is mask and lay.lq == lq and lay.lk == lk:
            return lay
        per = self.grid_hw[0] * self.grid_hw[1]
        qf, kf = self.q_frames, self.k_frames
        if qf is None or len(qf) * per != lq or len(kf) * per != lk:  # not called by the model
            kf = torch.arange(lk // per)
            qf = kf[len(kf) - lq // per :]
        self.layout = causal_layout(qf, kf, self.grid_hw, self.config, mask, head_dim, device)
        return self.layout


class CausalRoPeSLRProcessor(_RoPeSLRProcessorBase):
    """The RoPeSLR attention of one ``CausalWan`` block (its parameters and the mode switches of
    :class:`~diffkit.attention.processors.RoPeSLRState`: dense, align, aux, dense heads/layers)."""

    def attend(self, q, k, v, q_pre, k_pre, mask) -> torch.Tensor:
        st = self.state
        if st.mode == "dense" or self.dense_layer:  # the original attention, op for op
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        st.layout_for(mask, q.shape[2], k.shape[2], q.shape[-1], q.device)
        return self._attend(q, k, v, q_pre, k_pre, None)

    def _dense(self, q, k, v, sink) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.state.layout.mask)

    def _sparse(self, q, k, v, q_pre, k_pre, grid, sink) -> torch.Tensor:
        return causal_ropeslr_attention(
            q,
            k,
            v,
            layout=self.state.layout,
            config=self.config,
            params=self.params,
            q_pre=q_pre,
            density=self.state.density,
        )


class RoPeSLRCausalSelfAttention(nn.Module):
    """Drop-in for ``causal_wan.SelfAttention`` (same call and outputs) with RoPeSLR attention.

    Shares the original's ``q, k, v, o, norm_q, norm_k`` (same objects and names); the original
    module itself is kept outside the module tree (``original``) for :func:`remove_causal_ropeslr_`.
    """

    def __init__(self, original: nn.Module, processor: CausalRoPeSLRProcessor) -> None:
        super().__init__()
        self.heads = original.heads
        for name in LEAVES:
            setattr(self, name, getattr(original, name))
        self.processor = processor
        object.__setattr__(self, "original", original)  # not a submodule: its leaves are ours

    def forward(self, x, rope, mask, past=None):
        q, k, v, new, (q_pre, k_pre) = project_qkv(self, x, rope, past)
        out = self.processor.attend(q, k, v, q_pre, k_pre, mask)
        return self.o(out.transpose(1, 2).flatten(2)), new


def apply_causal_ropeslr_(
    model: nn.Module,
    config: RoPeSLRConfig,
    layers: list[int] | None = None,
    *,
    state: CausalRoPeSLRState | None = None,
) -> dict[str, nn.Module]:
    """:func:`~diffkit.attention.processors.apply_ropeslr_` for ``CausalWan`` (called by it):
    returns {``blocks.i.self_attn``: the replaced ``SelfAttention``}."""
    if config.dense_first_steps:
        raise ValueError(
            f"RoPeSLRConfig.dense_first_steps={config.dense_first_steps} is not supported on "
            "CausalWan: a chunk's cached keys come from its t = 0 refresh pass, so a per-pass "
            "dense/sparse switch would make the KV-cached rollout differ from the recomputed one; "
            "use dense_first_layers or dense_heads"
        )
    c = model.config
    heads, head_dim = c["heads"], c["dim"] // c["heads"]
    try:
        split_3d(head_dim)
    except ValueError as e:
        raise ValueError(f"RoPeSLR needs a head_dim that the 3D split can divide: {e}") from None
    if state is not None and (not isinstance(state, CausalRoPeSLRState) or state.config != config):
        raise ValueError("apply_ropeslr_(state=...): needs a CausalRoPeSLRState with this config")
    g = model.grid_hw
    state = CausalRoPeSLRState(config=config, grid_hw=(g, g)) if state is None else state
    ref = model.blocks[0].self_attn.norm_q.weight
    replaced = {}
    for i, blk in enumerate(model.blocks):
        if layers is not None and i not in layers:
            continue
        proc = CausalRoPeSLRProcessor(config, heads, head_dim, i, state)
        proc = proc.to(device=ref.device, dtype=ref.dtype)
        replaced[f"blocks.{i}.self_attn"] = blk.self_attn
        blk.self_attn = RoPeSLRCausalSelfAttention(blk.self_attn, proc)
    model._ropeslr_state = state
    model._ropeslr_hook = model.register_forward_pre_hook(state.observe, with_kwargs=True)
    log.info("RoPeSLR installed on %d CausalWan self-attention layers", len(replaced))
    return replaced


def remove_causal_ropeslr_(model: nn.Module, replaced: dict[str, nn.Module]) -> None:
    """Undo :func:`apply_causal_ropeslr_`: each wrapper's original ``SelfAttention`` goes back,
    holding the wrapper's current projections (e.g. ``QuantLinear`` installed after RoPeSLR).

    The originals are taken from the wrappers (``replaced`` names them), so this also works on a
    ``copy.deepcopy`` of the model made after :func:`apply_ropeslr_`.
    """
    for name in replaced:
        wrapper = model.get_submodule(name)
        if not isinstance(wrapper, RoPeSLRCausalSelfAttention):
            raise ValueError(f"{name} is a {type(wrapper).__name__}, not a RoPeSLR attention")
        original = wrapper.original
        for leaf in LEAVES:
            setattr(original, leaf, getattr(wrapper, leaf))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, original)
    handle = getattr(model, "_ropeslr_hook", None)
    if handle is not None:
        handle.remove()
    model._ropeslr_state = None
    model._ropeslr_hook = None
