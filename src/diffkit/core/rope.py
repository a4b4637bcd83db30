"""Rotary position embeddings, 1D and 3D (time, height, width).

Layout matches diffusers' Wan2.1 implementation (``WanRotaryPosEmbed`` plus the ``apply_rotary_emb``
nested in ``WanAttnProcessor``): frequencies are *repeat-interleaved* so channel pairs
``(2i, 2i+1)`` rotate together, and a head of size ``d`` is split into
``h = w = 2 * (d // 6)`` channels for height and width and ``t = d - 2h`` for time, concatenated
in the order (t, h, w). Tokens are flattened frame-major: index = (f * H + y) * W + x.

RoFormer (Su et al., arXiv 2104.09864), eq. 34: for a pair (x1, x2) at position p and frequency
w_i = theta^(-2i/d), the rotated pair is (x1 cos(p w_i) - x2 sin(p w_i), x1 sin(p w_i) + x2 cos(p w_i)).
"""

from __future__ import annotations

import torch
from torch import nn


def rope_freqs_1d(
    dim: int, positions: torch.Tensor | int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (len(positions), dim), repeat-interleaved (adjacent pairs).

    Computed in float64 (as diffusers does) and returned as float32.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"rope dim must be a positive even number, got dim={dim}")
    if isinstance(positions, int):
        positions = torch.arange(positions)
    pos = positions.to(torch.float64)
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[: dim // 2] / dim))
    angles = torch.outer(pos, inv_freq)  # (S, dim/2)
    cos = angles.cos().repeat_interleave(2, dim=1).float()
    sin = angles.sin().repeat_interleave(2, dim=1).float()
    return cos, sin


def split_3d(head_dim: int) -> tuple[int, int, int]:
    """Channels given to (time, height, width): Wan's ``h = w = 2 * (d // 6)``, ``t = d - 2h``."""
    if head_dim < 6 or head_dim % 2:
        raise ValueError(
            f"3D RoPE needs an even head_dim >= 6 so that the (t, h, w) split is even, got {head_dim}"
        )
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_freqs_3d(
    head_dim: int,
    grid: tuple[int, int, int],
    theta: float = 10000.0,
    offset: tuple[int, int, int] = (0, 0, 0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (F*H*W, head_dim) for a (frames, height, width) token grid.

    ``offset`` shifts the positions, e.g. the first frame index of a chunk in causal rollouts.
    """
    frames, height, width = grid
    if min(grid) <= 0:
        raise ValueError(f"grid sizes must be positive, got grid={grid}")
    dims = split_3d(head_dim)
    tables = []
    for axis, (dim, size, start) in enumerate(zip(dims, grid, offset)):
        cos, sin = rope_freqs_1d(dim, torch.arange(start, start + size), theta)
        shape = [1, 1, 1, dim]
        shape[axis] = size
        tables.append(
            (
                cos.view(shape).expand(frames, height, width, dim),
                sin.view(shape).expand(frames, height, width, dim),
            )
        )
    cos = torch.cat([c for c, _ in tables], dim=-1).reshape(frames * height * width, head_dim)
    sin = torch.cat([s for _, s in tables], dim=-1).reshape(frames * height * width, head_dim)
    return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs of ``x`` (..., D); ``cos``/``sin`` broadcast to ``x``.

    For x of shape (B, H, S, D) pass cos of shape (S, D); for (B, S, H, D) pass ``cos[:, None]``.
    The computation runs in float32 (or float64 if ``x`` is float64) and returns ``x``'s dtype.
    """
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(work)
    x1, x2 = xf.unflatten(-1, (-1, 2)).unbind(-1)
    c = cos.to(work)[..., 0::2]
    s = sin.to(work)[..., 1::2]
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)


class RotaryEmbedding3D(nn.Module):
    """Caches 3D RoPE tables per (grid, offset); ``forward(grid)`` returns ``(cos, sin)``."""

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        split_3d(head_dim)
        self.head_dim = head_dim
        self.theta = theta
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(
        self, grid: tuple[int, int, int], offset: tuple[int, int, int] = (0, 0, 0)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(grid), tuple(offset))
        if key not in self._cache:
            self._cache[key] = rope_freqs_3d(self.head_dim, grid, self.theta, offset)
        return self._cache[key]
