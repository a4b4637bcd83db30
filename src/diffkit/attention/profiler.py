"""Profiler of RoPeSLR attention: analytic FLOPs (spec b.6) cross-checked with
``torch.utils.flop_counter``, time split (selection / spike / background / merge), achieved
density, dense-attention-mass recall on sampled rows, output error, and the Amdahl bound.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from diffkit.attention.background import RoPeSLRParams, merge_gated, merge_mass
from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.layout import selection_mask
from diffkit.attention.ropeslr import (
    BlockPlan,
    background_terms,
    plan_blocks,
    ropeslr_attention,
    spike,
    spike_estimated,
)


def analytic_flops(
    length: int, head_dim: int, k_blk: int, block: int, rank: int, background: bool = True
) -> dict[str, float]:
    """Per head, per layer, forward FLOPs (multiply-add = 2) of spec b.6.

    dense = 4 L^2 d; selection ~ L d + 2 n^2 d; spike = 4 (k/n) L^2 d; background = 4 L d r
    (projections) + 4 L r d (states + readout) + n k r d (complement) + ~8 L d (norms, gate).
    """
    n = -(-length // block)
    dense = 4.0 * length**2 * head_dim
    sel = length * head_dim + 2.0 * n * n * head_dim
    sp = 4.0 * (k_blk / n) * length**2 * head_dim
    bg = 0.0
    if background:
        bg = 4.0 * length * head_dim * rank + 4.0 * length * rank * head_dim
        bg += n * k_blk * rank * head_dim + 8.0 * length * head_dim
    total = sel + sp + bg
    return {
        "dense": dense,
        "selection": sel,
        "spike": sp,
        "background": bg,
        "total": total,
        "reduction": dense / total,
    }


def counted_flops(fn) -> float:
    """Matmul FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode`` while running ``fn``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _math_attention(q, k, v):
    """Dense attention as explicit matmuls (the CPU SDPA kernel is invisible to FlopCounterMode)."""
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1) @ v


def amdahl(attention_fraction: float, attention_speedup: float) -> float:
    """Upper bound on the end-to-end speedup when only attention gets faster."""
    if not 0 <= attention_fraction <= 1:
        raise ValueError(f"attention_fraction must be in [0, 1], got {attention_fraction}")
    return 1.0 / ((1 - attention_fraction) + attention_fraction / attention_speedup)


def mass_recall(
    q: torch.Tensor, k: torch.Tensor, plan: BlockPlan, block: int, rows: int = 256, seed: int = 0
) -> float:
    """Mean fraction of the dense softmax mass that falls in the selected blocks (sampled rows)."""
    if plan.perm is not None:
        q, k = q[:, :, plan.perm], k[:, :, plan.perm]
    length = q.shape[2]
    g = torch.Generator().manual_seed(seed)
    r = torch.randperm(length, generator=g)[: min(rows, length)].to(q.device)
    p = torch.softmax((q[:, :, r] @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]), -1)
    m = selection_mask(plan.idx, plan.valid, plan.n)  # (B, H, n, n)
    keep = m[:, :, r // block].repeat_interleave(block, -1)[..., :length]
    return float((p * keep).sum(-1).mean())


@dataclass
class AttentionProfile:
    length: int
    head_dim: int
    heads: int
    density_budget: float
    achieved_density: float
    k_blocks: int
    mass_recall: float
    rel_error: float
    ms_selection: float
    ms_spike: float
    ms_background: float
    ms_merge: float
    ms_total: float
    ms_dense_sdpa: float
    speedup: float
    flops_analytic: dict
    flops_counted_ropeslr: float
    flops_counted_dense: float
    backend: str

    def as_dict(self) -> dict:
        return asdict(self)


def _median_ms(fn, reps: int) -> float:
    """Median wall time of ``fn`` in ms (CUDA work is waited for: kernels launch asynchronously)."""
    sync = torch.cuda.synchronize if torch.cuda.is_initialized() else (lambda: None)
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def profile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: RoPeSLRConfig,
    params: RoPeSLRParams | None = None,
    q_pre: torch.Tensor | None = None,
    k_pre: torch.Tensor | None = None,
    grid: tuple[int, int, int] | None = None,
    reps: int = 3,
    rows: int = 256,
) -> AttentionProfile:
    """Profile one RoPeSLR attention call against dense SDPA on the same (B, H, L, d) inputs."""
    bsz, heads, length, d = q.shape
    use_bg = config.background and params is not None and q_pre is not None
    plan = plan_blocks(q, k, config, grid)
    qp, kp, vp = plan.tiled(q), plan.tiled(k), plan.tiled(v)
    mass = use_bg and config.merge == "mass"
    estimated = mass and config.mass_lse == "estimate"

    def sp():  # the spike, with its lse where the mass merge needs one (estimated or exact)
        if estimated:
            return spike_estimated(qp, kp, vp, plan, config)
        return spike(qp, kp, vp, plan, config, mass)

    o_s, lse = sp()  # warm-up (and compile for flex)
    t_sel = _median_ms(lambda: plan_blocks(q, k, config, grid), reps)
    t_sp = _median_ms(sp, reps)
    t_bg = t_mg = 0.0
    if use_bg:
        gated = config.merge == "gated"

        def bg():
            return background_terms(params, q_pre, k_pre, vp, plan, config, need_den=not gated)

        num, den, gate = bg()
        t_bg = _median_ms(bg, reps)

        def mg():
            if gated:
                return plan.untiled(merge_gated(o_s, num, gate))
            return plan.untiled(merge_mass(o_s, lse, num, den, params.log_lambda.exp()))

        t_mg = _median_ms(mg, reps)
    kwargs = dict(
        config=config, params=params if use_bg else None, q_pre=q_pre, k_pre=k_pre, grid=grid
    )
    # FlopCounterMode cannot trace compiled FlexAttention: count on the reference backend.
    ref_kwargs = {**kwargs, "config": dataclasses.replace(config, backend="reference")}
    out = ropeslr_attention(q, k, v, **kwargs)
    t_tot = _median_ms(lambda: ropeslr_attention(q, k, v, **kwargs), reps)
    dense = F.scaled_dot_product_attention(q, k, v)
    t_dense = _median_ms(lambda: F.scaled_dot_product_attention(q, k, v), reps)
    rel = float((out - dense).norm() / dense.norm())
    k_blk = plan.idx.shape[-1]
    rank = params.rank if use_bg else 0
    fl = analytic_flops(length, d, k_blk, config.block_size, rank, use_bg)
    fl = {key: val * bsz * heads if key != "reduction" else val for key, val in fl.items()}
    return AttentionProfile(
        length=length,
        head_dim=d,
        heads=heads,
        density_budget=plan.density,
        achieved_density=plan.achieved_density,
        k_blocks=k_blk,
        mass_recall=mass_recall(q, k, plan, config.block_size, rows),
        rel_error=rel,
        ms_selection=t_sel,
        ms_spike=t_sp,
        ms_background=t_bg,
        ms_merge=t_mg,
        ms_total=t_tot,
        ms_dense_sdpa=t_dense,
        speedup=t_dense / t_tot,
        flops_analytic=fl,
        flops_counted_ropeslr=counted_flops(lambda: ropeslr_attention(q, k, v, **ref_kwargs)),
        flops_counted_dense=counted_flops(lambda: _math_attention(q, k, v)),
        backend=config.backend,
    )
