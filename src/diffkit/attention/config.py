"""``RoPeSLRConfig``: every option of RoPeSLR (arXiv 2605.20659) in one frozen dataclass.

No code for the paper is public; section (b) of ``attention-ropeslr.md`` is a reconstruction, so
each inferred choice is an option here with the default named and justified in ``docs/attention.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class RoPeSLRConfig:
    """Sparse (spike) + low-rank (background) attention for 3D-RoPE video DiTs.

    Attributes:
        density: fraction of key blocks each query block attends to exactly (budget="fixed"),
            in (0, 1]; 1.0 with complement=True equals dense attention exactly.
        budget: "fixed" (use ``density``) or "sqrt" (density = clip(kappa / sqrt(L), min_density,
            1), so the spike set has ~kappa * L^1.5 nonzeros, the paper's O(L^{3/2}) bound).
        kappa: constant of the "sqrt" budget (18.1 gives density 0.10 at 32,760 tokens).
        min_density: lower clip of the "sqrt" budget.
        block_size: tokens per block (queries and keys) after the tile-major permutation; 128
            is flex's native block and the benchmark's fast configuration (64: VSA's cube).
        tile: (t, h, w) tile of the tile-major token order; 4x4x8 = 128 tokens, one block.
        local_radius: also force the key blocks whose tile lies within this Chebyshev radius of
            the query block's tile (0 = only the query's own block is forced).
        selection: "topk" (k = ceil(density * n) blocks per query block) or "topp" (smallest set
            with pooled-score softmax mass >= top_p, clipped to [1, k]).
        top_p: mass threshold of selection="topp".
        background: add the low-rank background path (False = spike path only, training-free).
        complement: background over the complement of the selected blocks only (SPLA-style
            subtraction, so density 1 is exactly dense); False = over all keys (RoLa/SLA code).
        rank: rank r of the background features; 0 = r(L_ref) = clamp(8 round(rank_coef d ln
            L_ref / 8), 16, 128) with L_ref = rank_ref_tokens.
        rank_coef: c_r of the rank formula.
        rank_ref_tokens: L_ref of the rank formula (parameters must have a fixed shape).
        share_across_heads: one projection pair U_q, U_k for all heads (RoLa) instead of per head.
        feature_map: "silu" (RoLa) or "elu1" (elu + 1, positive; needed by merge="mass").
        ape: learnable 3D absolute position embedding: "fourier" (translation-invariant kernel,
            extrapolates), "table" (free per-axis tables, the literal reading), or "none".
        ape_max_len: (t, h, w) sizes N_max that set the fourier frequency range and table size.
        learn_freqs: also learn the fourier frequencies omega.
        pe_scale_init: initial per-head APE scale gamma_h.
        inject: "add" (phi = c + gamma P) or "concat" (phi = [c ; gamma P]).
        merge: "gated" (RMS-matched gate, RoLa) or "mass" (softmax-mass-consistent).
        mass_lse: where merge="mass" gets the spike's log-sum-exp: "exact" (from the spike kernel;
            on CPU through flex's sink read-out, ~20 % of the spike's time) or "estimate" (ours:
            a second-order estimate from each selected block's key mean and diagonal variance,
            :func:`diffkit.attention.sparse.estimate_lse`, ~3 % of the spike's time; its mean
            bias is absorbed by the learnable lambda). Density 1 stays exact either way. With
            extra exact keys (HunyuanVideo's text tokens) the exact lse is used: their merge
            needs it.
        gate_bias_init: initial gate bias b_h (sigmoid(-1.946) = 0.125).
        backend: "reference" (pure PyTorch, fp64-able, differentiable), "flex" (FlexAttention
            BlockMask from the top-k indices; forward-only on CPU), "gather" (forward-only CPU
            path, each query block's selected key/value blocks gathered and attended by
            PyTorch's fused CPU flash kernel; nothing to compile), "triton" (diffkit's fused
            Triton kernel: spike, background read-out and merge in one pass; forward-only, CUDA),
            or "auto": where no gradient is needed, triton on CUDA (flex inside torch.compile)
            and gather on CPU from 256 tokens (flex inside torch.compile), otherwise reference
            (training, shorter sequences). Compiled flex compiles once per new shape on first
            use (CPU: 10-40 s, more on a busy machine).
        dense_first_steps: run dense attention for the first N denoising steps of a sampling run.
        dense_first_layers: keep the first N self-attention layers dense.
        dense_heads: head indices always computed densely.
    """

    density: float = 0.1
    budget: Literal["fixed", "sqrt"] = "fixed"
    kappa: float = 18.1
    min_density: float = 0.02
    block_size: int = 128
    tile: tuple[int, int, int] = (4, 4, 8)
    local_radius: int = 0
    selection: Literal["topk", "topp"] = "topk"
    top_p: float = 0.9
    background: bool = True
    complement: bool = True
    rank: int = 0
    rank_coef: float = 0.048
    rank_ref_tokens: int = 32760
    share_across_heads: bool = False
    feature_map: Literal["silu", "elu1"] = "silu"
    ape: Literal["fourier", "table", "none"] = "fourier"
    ape_max_len: tuple[int, int, int] = (64, 128, 128)
    learn_freqs: bool = False
    pe_scale_init: float = 0.1
    inject: Literal["add", "concat"] = "add"
    merge: Literal["gated", "mass"] = "gated"
    mass_lse: Literal["exact", "estimate"] = "exact"
    gate_bias_init: float = -1.946
    backend: Literal["reference", "flex", "gather", "triton", "auto"] = "auto"
    dense_first_steps: int = 0
    dense_first_layers: int = 0
    dense_heads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ValueError:
            return ValueError(f"RoPeSLRConfig.{field}={getattr(self, field)!r}: {why}")

        if not 0 < self.density <= 1:
            raise bad("density", "must be in (0, 1]")
        if not 0 < self.min_density <= 1:
            raise bad("min_density", "must be in (0, 1]")
        if self.kappa <= 0:
            raise bad("kappa", "must be > 0")
        if self.block_size < 1:
            raise bad("block_size", "must be >= 1")
        if len(self.tile) != 3 or min(self.tile) < 1:
            raise bad("tile", "must be three positive ints (t, h, w)")
        if len(self.ape_max_len) != 3 or min(self.ape_max_len) < 1:
            raise bad("ape_max_len", "must be three positive ints (t, h, w)")
        if self.local_radius < 0:
            raise bad("local_radius", "must be >= 0")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "must be in (0, 1]")
        if self.rank < 0 or (self.rank and (self.rank % 2 or self.rank < 6)):
            raise bad("rank", "must be 0 (formula) or an even number >= 6 (3D APE split)")
        if self.rank_ref_tokens < 2 or self.rank_coef <= 0:
            raise ValueError("RoPeSLRConfig.rank_ref_tokens must be >= 2 and rank_coef > 0")
        if self.dense_first_steps < 0 or self.dense_first_layers < 0:
            raise ValueError("RoPeSLRConfig.dense_first_steps/dense_first_layers must be >= 0")
        if any(h < 0 for h in self.dense_heads):
            raise bad("dense_heads", "head indices must be >= 0")
        if self.merge == "mass" and self.feature_map != "elu1":
            raise bad("merge", "merge='mass' needs positive features: set feature_map='elu1'")
        choices = {
            "budget": ("fixed", "sqrt"),
            "selection": ("topk", "topp"),
            "feature_map": ("silu", "elu1"),
            "ape": ("fourier", "table", "none"),
            "inject": ("add", "concat"),
            "merge": ("gated", "mass"),
            "mass_lse": ("exact", "estimate"),
            "backend": ("reference", "flex", "gather", "triton", "auto"),
        }
        for field, options in choices.items():
            if getattr(self, field) not in options:
                raise bad(field, f"supported: {', '.join(options)}")

    def density_for(self, num_tokens: int) -> float:
        """rho(L): ``density`` (fixed) or clip(kappa / sqrt(L), min_density, 1) (sqrt), spec b.2."""
        if self.budget == "fixed":
            return self.density
        return min(1.0, max(self.min_density, self.kappa / math.sqrt(num_tokens)))

    def rank_for(self, head_dim: int) -> int:
        """r = clamp(8 round(c_r d ln L_ref / 8), 16, 128), or ``rank`` if set (spec b.3)."""
        if self.rank:
            return self.rank
        r = 8 * round(self.rank_coef * head_dim * math.log(self.rank_ref_tokens) / 8)
        return int(min(128, max(16, r)))
