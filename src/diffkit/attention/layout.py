"""Token layout and block selection of RoPeSLR's spike path (arXiv 2605.20659; spec b.1-b.2).

Pure functions over tensors laid out as SDPA expects, (B, H, L, d):

* :func:`tile_permutation`: frame-major (t, h, w) order -> tile-major order, so each block of
  ``block_size`` consecutive tokens is a compact 3D tile (VSA-style 4x4x4 cube);
* :func:`block_mean` / :func:`block_scores`: mean-pooled post-RoPE q and smooth-K k blocks
  (k minus its global mean, as in SLA), S_IJ = q_I . k_J / sqrt(d);
* :func:`num_selected`: the budget k_blk = ceil(rho n);
* :func:`forced_blocks`: the query's own block and optional 3D neighbours, always kept;
* :func:`select_blocks`: top-k (or top-p) key blocks per query block -> ``(idx, valid)``.
"""

from __future__ import annotations

import math

import torch


def num_blocks(length: int, block: int) -> int:
    """n = ceil(L / b); raises if the block is larger than the sequence."""
    if block < 1:
        raise ValueError(f"block_size must be >= 1, got {block}")
    if block > length:
        raise ValueError(
            f"block_size={block} is larger than the sequence length L={length}; "
            f"use a block_size in [1, {length}]"
        )
    return -(-length // block)


def tile_permutation(
    grid: tuple[int, int, int], tile: tuple[int, int, int] = (4, 4, 4)
) -> torch.Tensor:
    """Permutation ``perm`` (L,) with ``x_tiled = x[..., perm, :]``: sort frame-major tokens by
    (t // T_t, h // T_h, w // T_w, t % T_t, h % T_h, w % T_w). Edge tiles are simply smaller."""
    f, h, w = grid
    tf, th, tw = tile
    if min(grid) < 1 or min(tile) < 1:
        raise ValueError(f"grid and tile must be positive, got grid={grid}, tile={tile}")
    t_ = torch.arange(f).view(f, 1, 1)
    h_ = torch.arange(h).view(1, h, 1)
    w_ = torch.arange(w).view(1, 1, w)
    nh, nw = -(-h // th), -(-w // tw)
    key = (((((t_ // tf) * nh + h_ // th) * nw + w_ // tw) * tf + t_ % tf) * th + h_ % th) * tw + (
        w_ % tw
    )
    return torch.argsort(key.flatten(), stable=True)


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``x[..., perm, :][..., inv, :] == x``."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm), device=perm.device)
    return inv


def grid_positions(grid: tuple[int, int, int]) -> torch.Tensor:
    """Integer (t, h, w) position of every frame-major token, shape (L, 3)."""
    f, h, w = grid
    t_, h_, w_ = torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([t_.flatten(), h_.flatten(), w_.flatten()], dim=1)


def block_mean(x: torch.Tensor, block: int) -> torch.Tensor:
    """Mean over each block of ``block`` consecutive tokens: (..., L, d) -> (..., n, d).

    The ragged last block is averaged over its real members only.
    """
    length = x.shape[-2]
    n = num_blocks(length, block)
    full = length // block
    sums = x[..., : full * block, :].unflatten(-2, (full, block)).sum(-2)
    if full < n:  # ragged tail: summed on its own (no padded copy of x)
        sums = torch.cat([sums, x[..., full * block :, :].sum(-2, keepdim=True)], -2)
    counts = torch.full((n,), float(block), dtype=x.dtype, device=x.device)
    counts[-1] = length - (n - 1) * block
    return sums / counts[:, None]


def block_scores(
    q: torch.Tensor, k: torch.Tensor, block: int, smooth_k: bool = True
) -> torch.Tensor:
    """Pooled block scores S (B, H, n, n) from post-RoPE q, k (B, H, L, d) (spec b.2 step 1).

    Smooth-K pools k - mean(k); the mean is subtracted from the pooled blocks (the same
    number, without an (L, d) temporary).
    """
    qb, kb = block_mean(q, block), block_mean(k, block)
    if smooth_k:
        kb = kb - k.mean(-2, keepdim=True)
    return qb @ kb.transpose(-1, -2) / math.sqrt(q.shape[-1])


def num_selected(density: float, n: int) -> int:
    """k_blk = ceil(rho n), clipped to [1, n]."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, min(n, math.ceil(round(density * n, 9))))


def block_tiles(
    grid: tuple[int, int, int], tile: tuple[int, int, int], perm: torch.Tensor, block: int
) -> torch.Tensor:
    """Tile coordinate (n, 3) of each block (the tile of its first token in tile-major order)."""
    pos = grid_positions(grid)[perm]
    first = pos[::block]
    return first // torch.tensor(tile)


def forced_blocks(n: int, tiles: torch.Tensor | None = None, radius: int = 0) -> torch.Tensor:
    """Boolean (n, n): query block I always keeps key block J (own block; 3D neighbours whose
    tiles are within Chebyshev ``radius`` when ``tiles`` is given)."""
    forced = torch.eye(n, dtype=torch.bool)
    if radius > 0 and tiles is not None:
        cheb = (tiles[:, None, :] - tiles[None, :, :]).abs().amax(-1)
        forced |= cheb <= radius
    return forced


def select_blocks(
    scores: torch.Tensor,
    k: int,
    forced: torch.Tensor | None = None,
    mode: str = "topk",
    top_p: float = 0.9,
    forced_per_row: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Key blocks per query block (spec b.2 steps 3-4).

    Returns ``idx`` (B, H, n, k') long, sorted ascending among valid entries, and ``valid``
    (B, H, n, k') bool; k' = max(k, most forced blocks in a row). Forced blocks count inside the
    budget. ``mode="topp"`` keeps the smallest prefix whose softmax(S) mass reaches ``top_p``.
    ``forced_per_row`` is the most forced blocks in a row when the caller knows it (a shape, so
    under torch.compile it must not be read from ``forced``'s data: that is a graph break).
    """
    n = scores.shape[-1]
    if mode not in ("topk", "topp"):
        raise ValueError(f"selection mode {mode!r} is not supported; use 'topk' or 'topp'")
    s = scores
    if forced is not None:
        forced = forced.to(scores.device)
        if forced_per_row is None:
            forced_per_row = int(forced.sum(-1).max())
        k = max(k, forced_per_row)
        s = scores.masked_fill(forced, float("inf"))
    k = min(k, n)
    top, idx = torch.topk(s, k, dim=-1, sorted=True)
    if mode == "topk":
        valid = torch.ones_like(idx, dtype=torch.bool)
        idx, _ = idx.sort(-1)
        return idx, valid
    probs = torch.softmax(scores.float(), -1).gather(-1, idx)
    mass_before = probs.cumsum(-1) - probs
    valid = mass_before < top_p
    if forced is not None:
        valid |= torch.isinf(top)
    valid[..., 0] = True
    key = torch.where(valid, idx, idx + n)
    order = key.argsort(-1)
    return idx.gather(-1, order), valid.gather(-1, order)


def selection_mask(idx: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """Dense boolean (B, H, n, n) block mask from ``(idx, valid)``."""
    m = torch.zeros(*idx.shape[:-1], n, dtype=torch.bool, device=idx.device)
    return m.scatter(-1, idx, valid)  # indices within a row are distinct
