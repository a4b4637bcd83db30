"""RoPeSLR attention end to end: spike (exact block-sparse softmax on post-RoPE q/k) + background
(head-wise low-rank + learnable 3D APE over the complement) + gated merge (arXiv 2605.20659).

:func:`ropeslr_attention` is the pure function used by the diffusers processors, the trainer, the
profiler and the benchmark. Inputs follow SDPA's (B, H, L, d) layout in frame-major token order;
the function permutes to tile-major order internally and returns frame-major outputs.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from diffkit.attention.background import (
    RoPeSLRParams,
    background,
    merge_gated,
    merge_mass,
    merge_mass_readout,
)
from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.gathered import block_sparse_gathered
from diffkit.attention.layout import (
    block_scores,
    block_tiles,
    forced_blocks,
    grid_positions,
    inverse_permutation,
    num_blocks,
    num_selected,
    select_blocks,
    tile_permutation,
)
from diffkit.attention.sparse import (
    block_sparse_flex,
    block_sparse_flex_readout,
    block_sparse_reference,
    dense_partial,
    estimate_lse,
    merge_partials,
)


@dataclass
class BlockPlan:
    """The token order and block selection of one attention call."""

    perm: torch.Tensor | None  # (L,) frame-major -> tile-major, None = identity
    inv: torch.Tensor | None
    positions: torch.Tensor  # (L, 3) integer (t, h, w) in tile-major order
    idx: torch.Tensor  # (B, H, n, k)
    valid: torch.Tensor  # (B, H, n, k)
    n: int
    density: float  # the budget rho(L)
    grid: tuple[int, int, int] = (1, 1, 1)  # (t, h, w) of the frame-major token order

    @property
    def achieved_density(self) -> float:
        """Fraction of (query block, key block) pairs computed exactly."""
        return float(self.valid.float().sum(-1).mean() / self.n)

    def tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-major (B, H, L, ...) -> tile-major (one gather; identity without tiling)."""
        return x if self.perm is None else _take(x, self.perm)

    def untiled(self, x: torch.Tensor) -> torch.Tensor:
        """Tile-major -> frame-major."""
        return x if self.inv is None else _take(x, self.inv)


def _grid_for(length: int, grid: tuple[int, int, int] | None) -> tuple[int, int, int]:
    if grid is None:
        return (1, 1, length)
    if grid[0] * grid[1] * grid[2] != length:
        raise ValueError(
            f"grid {tuple(grid)} has {grid[0] * grid[1] * grid[2]} tokens, not L={length}"
        )
    return tuple(int(g) for g in grid)


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[:, :, index] (index_select is ~3x faster than advanced indexing on CPU)."""
    return torch.index_select(x, 2, index)


def _layout_tensors(
    grid: tuple[int, int, int],
    tile: tuple[int, int, int],
    block: int,
    radius: int,
    tiled: bool,
    device: torch.device = torch.device("cpu"),
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Shape-only layout: perm, inverse, tile-major positions, forced mask (traceable)."""
    length = grid[0] * grid[1] * grid[2]
    n = num_blocks(length, block)
    pos = grid_positions(grid)
    if not tiled:
        return None, None, pos.to(device), forced_blocks(n).to(device)
    perm = tile_permutation(grid, tile)
    tiles = block_tiles(grid, tile, perm, block)
    out = perm, inverse_permutation(perm), pos[perm], forced_blocks(n, tiles, radius)
    return tuple(t.to(device) for t in out)


_layout_cached = functools.lru_cache(maxsize=32)(_layout_tensors)


def _layout(grid, tile, block, radius, tiled, device=torch.device("cpu")):
    """:func:`_layout_tensors`, cached per shape and device in eager mode. Under torch.compile or
    torch.export the (cheap, shape-only) layout is traced instead: a cache filled while tracing
    would hold fake tensors, and dynamo ignores ``lru_cache`` anyway."""
    if torch.compiler.is_compiling():
        return _layout_tensors(grid, tile, block, radius, tiled, device)
    return _layout_cached(grid, tile, block, radius, tiled, device)


@functools.lru_cache(maxsize=32)
def _forced_per_row_cached(grid, tile, block, radius, tiled) -> int:
    if not tiled or radius == 0:
        return 1  # only the diagonal
    # Computed from real tensors even while torch.export traces with fake ones.
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        forced = _layout_tensors(grid, tile, block, radius, tiled)[3]
        return int(forced.sum(-1).max())


@torch.compiler.assume_constant_result
def _forced_per_row(grid, tile, block, radius, tiled) -> int:
    """Most forced key blocks of any query block: a shape (the selection's width), so it is a
    Python int known before tracing (dynamo calls this function once per shape and treats the
    result as a constant; reading it from the forced mask would be a data-dependent break)."""
    return _forced_per_row_cached(grid, tile, block, radius, tiled)


def _plan_tiled(
    q: torch.Tensor,
    k: torch.Tensor,
    config: RoPeSLRConfig,
    grid: tuple[int, int, int] | None,
    density: float | None,
) -> tuple[BlockPlan, torch.Tensor, torch.Tensor]:
    """:func:`plan_blocks` that also returns the tile-major q, k it permuted (reused downstream)."""
    length = q.shape[2]
    g = _grid_for(length, grid)
    n = num_blocks(length, config.block_size)
    dev = q.device
    shape = (g, tuple(config.tile), config.block_size, config.local_radius, grid is not None)
    perm, inv, pos, forced = _layout(*shape, dev)
    if perm is not None:
        q, k = _take(q, perm), _take(k, perm)
    rho = config.density_for(length) if density is None else density
    scores = block_scores(q, k, config.block_size)
    budget = num_selected(rho, n)
    idx, valid = select_blocks(
        scores, budget, forced, config.selection, config.top_p, _forced_per_row(*shape)
    )
    return BlockPlan(perm, inv, pos, idx, valid, n, rho, g), q, k


def plan_blocks(
    q: torch.Tensor,
    k: torch.Tensor,
    config: RoPeSLRConfig,
    grid: tuple[int, int, int] | None = None,
    density: float | None = None,
) -> BlockPlan:
    """Tile-major permutation + pooled scores + budget + forced blocks + selection (b.1-b.2).

    ``q``, ``k`` are post-RoPE, frame-major (B, H, L, d). ``density`` overrides the config's
    budget (used by density annealing).
    """
    return _plan_tiled(q, k, config, grid, density)[0]


def background_features(
    params: RoPeSLRParams,
    q_pre: torch.Tensor,
    k_pre: torch.Tensor,
    plan: BlockPlan,
    need_gate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Tile-major (phi_q, phi_k, gate) from frame-major pre-RoPE q/k (spec b.3-b.4).

    Features and gate are per token, so they are computed in frame-major order (where the 3D
    APE is a broadcast over the grid) and only the rank-r features are permuted. The gate is
    only used by the gated merge: ``need_gate=False`` skips it (returns None).
    """
    heads = q_pre.shape[1]
    u_q = params.u_q.expand(heads, -1, -1) if params.u_q.shape[0] == 1 else params.u_q
    u_k = params.u_k.expand(heads, -1, -1) if params.u_k.shape[0] == 1 else params.u_k
    ape = None  # one APE table for q's and k's features (the same gamma P)
    if params.config.ape != "none" and params.config.inject == "add":
        ape = params.grid_ape(plan.grid, q_pre.dtype, q_pre.device)
    phi_q = plan.tiled(params.grid_features(q_pre, u_q, plan.grid, ape))
    phi_k = plan.tiled(params.grid_features(k_pre, u_k, plan.grid, ape))
    return phi_q, phi_k, plan.tiled(params.gate(q_pre)) if need_gate else None


#: ``backend="auto"`` uses the gather backend on CPU from this many tokens (without autograd).
#: Measured on the shared 2-core AVX-512 + AMX VM (fp32, density 0.1, mass merge with estimated
#: lse, 1 thread, interleaved): gather / reference = 2.3x faster at 256 tokens, 1.5-2.1x at
#: 512-1,024, 3.2-4.4x at 2,048 (docs/attention.md, "Backends").
AUTO_GATHER_MIN_TOKENS = 256
#: Inside torch.compile / torch.export (the gather backend reads data-dependent masks in eager
#: Python), "auto" uses compiled flex on CPU from this many tokens, else the reference backend.
AUTO_FLEX_MIN_TOKENS = 2048


def resolve_backend(config: RoPeSLRConfig, q: torch.Tensor) -> str:
    """The backend a call runs: ``config.backend``, or for "auto" without a gradient: on CUDA
    the fused Triton kernel (flex inside torch.compile, or without Triton); on CPU gather from
    :data:`AUTO_GATHER_MIN_TOKENS` tokens, or under torch.compile flex from
    :data:`AUTO_FLEX_MIN_TOKENS`; else the reference backend (training, short sequences)."""
    if config.backend != "auto":
        return config.backend
    if torch.is_grad_enabled():
        return "reference"
    if q.is_cuda:
        return "triton" if _has_triton() and not torch.compiler.is_compiling() else "flex"
    if torch.compiler.is_compiling():
        return "flex" if q.shape[2] >= AUTO_FLEX_MIN_TOKENS else "reference"
    return "gather" if q.shape[2] >= AUTO_GATHER_MIN_TOKENS else "reference"


@functools.cache
def _has_triton() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def spike(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: BlockPlan,
    config: RoPeSLRConfig,
    need_lse: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact block-sparse softmax on tile-major (permuted) tensors -> (o_s, lse_s).

    On CPU, compiled FlexAttention cannot return lse; :func:`block_sparse_flex` then reads it out
    of the output through an extra sink key (falling back to the reference backend only where
    that read-out is not finite).
    """
    backend = resolve_backend(config, q)
    if backend == "triton":
        from diffkit.attention.triton_kernels import block_sparse_triton

        return block_sparse_triton(q, k, v, plan.idx, plan.valid, config.block_size)
    if backend == "gather":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            raise ValueError("backend='gather' is forward-only; use backend='reference' to train")
        return block_sparse_gathered(q, k, v, plan.idx, plan.valid, config.block_size)
    if backend == "flex":
        if torch.is_grad_enabled() and q.requires_grad and not q.is_cuda:
            raise ValueError(
                "backend='flex' has no backward on CPU (PyTorch); use backend='reference' to train"
            )
        o, lse = block_sparse_flex(
            q, k, v, plan.idx, plan.valid, config.block_size, return_lse=need_lse
        )
        if lse is not None or not need_lse:
            return o, lse
        # the CPU lse read-out was not finite (extreme scores): exact reference path
    return block_sparse_reference(q, k, v, plan.idx, plan.valid, config.block_size)


def _cpu_compiled_inference(q: torch.Tensor, config: RoPeSLRConfig) -> bool:
    """Compiled flex on CPU without autograd: where the fused read-out merge and the compiled lse
    estimate apply."""
    if resolve_backend(config, q) != "flex" or q.is_cuda:
        return False
    return not (torch.is_grad_enabled() and q.requires_grad)


def spike_estimated(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, config: RoPeSLRConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(o_s, lse) with the spike run without an lse and ``lse`` estimated from block statistics
    (``mass_lse="estimate"``); the estimate is one compiled kernel under compiled CPU flex
    inference, instead of k-column batched GEMMs."""
    o_s, _ = spike(q, k, v, plan, config, need_lse=False)
    lse = estimate_lse(
        q, k, plan.idx, plan.valid, config.block_size, compiled=_cpu_compiled_inference(q, config)
    )
    return o_s, lse


def background_terms(params, q_pre, k_pre, v, plan, config, need_den):
    """(N, Z or None, gate or None) of the background over the complement (tile-major); the
    gate only for the gated merge (``need_den`` False), Z only for the mass merge."""
    if q_pre is None or k_pre is None:
        raise ValueError("the background path needs the pre-RoPE q_pre and k_pre")
    phi_q, phi_k, gate = background_features(params, q_pre, k_pre, plan, need_gate=not need_den)
    sel = (plan.idx, plan.valid) if config.complement else (None, None)
    num, den = background(phi_q, phi_k, v, *sel, config.block_size, need_den=need_den)
    return num, den, gate


def ropeslr_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    config: RoPeSLRConfig,
    params: RoPeSLRParams | None = None,
    q_pre: torch.Tensor | None = None,
    k_pre: torch.Tensor | None = None,
    grid: tuple[int, int, int] | None = None,
    density: float | None = None,
    sink_k: torch.Tensor | None = None,
    sink_v: torch.Tensor | None = None,
    sink_mask: torch.Tensor | None = None,
    plan: BlockPlan | None = None,
) -> torch.Tensor:
    """RoPeSLR attention output (B, H, L, d), frame-major like the inputs.

    Args:
        q, k, v: post-RoPE queries/keys and values (B, H, L, d), frame-major over ``grid``.
        config: the method's options.
        params: this layer's learnable parameters; None (or ``config.background=False``) = spike
            path only.
        q_pre, k_pre: pre-RoPE (normed) q/k for the background features and the gate.
        grid: (frames, height, width) token grid; None = a 1D sequence (no tiling).
        density: overrides the budget (annealing).
        sink_k, sink_v, sink_mask: extra keys every query attends exactly (HunyuanVideo's text
            tokens), (B, H, S, d) with a key mask (B, S) (True = attend).
        plan: a precomputed :class:`BlockPlan` (the profiler reuses one).
    """
    if q.dim() != 4:
        raise ValueError(f"expected (B, H, L, d) inputs, got q of shape {tuple(q.shape)}")
    if plan is None:
        plan, q, k = _plan_tiled(q, k, config, grid, density)
    else:
        q, k = plan.tiled(q), plan.tiled(k)
    v = plan.tiled(v)
    use_bg = config.background and params is not None
    gated = config.merge == "gated"
    need_lse = sink_k is not None or (use_bg and not gated)
    fused = use_bg and sink_k is None and (gated or config.mass_lse == "exact")
    if fused and resolve_backend(config, q) == "triton":  # one kernel: spike, background, merge
        return plan.untiled(_ropeslr_triton(q, k, v, plan, config, params, q_pre, k_pre))
    if need_lse and sink_k is None and config.mass_lse == "estimate":
        # mass merge with the estimated lse: the spike runs without one (the gated path's cost)
        o_s, lse = spike_estimated(q, k, v, plan, config)
        num, den, _ = background_terms(params, q_pre, k_pre, v, plan, config, need_den=True)
        lam = params.log_lambda.exp()
        inplace = not (o_s.requires_grad or num.requires_grad or lam.requires_grad)
        return plan.untiled(merge_mass(o_s, lse, num, den, lam, inplace=inplace))
    if need_lse and sink_k is None and _cpu_compiled_inference(q, config):
        # CPU inference of the mass merge: fuse the merge with the spike's sink read-out
        raw = block_sparse_flex_readout(q, k, v, plan.idx, plan.valid, config.block_size)
        if raw is not None:
            num, den, _ = background_terms(params, q_pre, k_pre, v, plan, config, need_den=True)
            lam = params.log_lambda.exp()
            inplace = not (num.requires_grad or den.requires_grad or lam.requires_grad)
            return plan.untiled(merge_mass_readout(*raw, num, den, lam, inplace=inplace))
    o_s, lse = spike(q, k, v, plan, config, need_lse)
    if sink_k is not None:
        o_t, lse_t = dense_partial(q, sink_k, sink_v, sink_mask)
        o_s, lse = merge_partials(o_s, lse, o_t, lse_t)
    out = o_s
    if use_bg:
        num, den, gate = background_terms(params, q_pre, k_pre, v, plan, config, need_den=not gated)
        # o_s is this call's own buffer: merge into it unless autograd needs it.
        if gated:
            inplace = not (o_s.requires_grad or num.requires_grad or gate.requires_grad)
            out = merge_gated(o_s, num, gate, inplace=inplace)
        else:
            lam = params.log_lambda.exp()
            inplace = not (o_s.requires_grad or num.requires_grad or lam.requires_grad)
            out = merge_mass(o_s, lse, num, den, lam, inplace=inplace)
    return plan.untiled(out)


def _ropeslr_triton(q, k, v, plan, config, params, q_pre, k_pre) -> torch.Tensor:
    """Spike, background read-out and merge in one Triton kernel pass (tile-major in and out)."""
    from diffkit.attention.triton_kernels import spike_background_triton

    if q_pre is None or k_pre is None:
        raise ValueError("the background path needs the pre-RoPE q_pre and k_pre")
    gated = config.merge == "gated"
    phi_q, phi_k, gate = background_features(params, q_pre, k_pre, plan, need_gate=gated)
    lam = None if gated else params.log_lambda.exp()
    sel = (plan.idx, plan.valid, config.block_size)
    return spike_background_triton(
        q, k, v, *sel, phi_q, phi_k, complement=config.complement, gate=gate, lam=lam
    )
