"""Masked-token diffusion helpers: mask schedules, exact-count random masking, mask id checks.

MaskGIT (Chang et al. 2022, arXiv 2202.04200): at training time a ratio r ~ U(0, 1) is mapped
through gamma(r) = cos(pi r / 2) (sec. 3.2) and ceil(gamma * L) tokens are replaced by the mask
id; at sampling step t of T the number of tokens still masked is floor(gamma((t+1)/T) * L).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

MaskSchedule = Literal["cosine", "linear", "square", "sqrt"]


def gamma(r: torch.Tensor | float, kind: MaskSchedule = "cosine") -> torch.Tensor:
    """Fraction of tokens masked at progress r in [0, 1] (1 -> 0 as r goes 0 -> 1)."""
    r = torch.as_tensor(r, dtype=torch.float64)
    if kind == "cosine":
        return torch.cos(r * math.pi / 2)
    if kind == "linear":
        return 1 - r
    if kind == "square":
        return 1 - r**2
    if kind == "sqrt":
        return 1 - r.sqrt()
    raise ValueError(f"mask schedule kind={kind!r}; use one of cosine, linear, square, sqrt")


def check_mask_id(mask_id: int, codebook_size: int) -> None:
    """The mask id must lie outside the codebook [0, K)."""
    if 0 <= mask_id < codebook_size:
        raise ValueError(
            f"mask_id={mask_id} collides with a codebook entry (codes are 0..{codebook_size - 1}); "
            f"use mask_id={codebook_size}"
        )
    if mask_id < 0:
        raise ValueError(f"mask_id must be non-negative, got {mask_id}")


def random_mask(
    shape: tuple[int, int], num_masked: torch.Tensor | int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean (B, L) mask with exactly ``num_masked[b]`` True entries per row, uniformly placed."""
    B, L = shape
    n = (
        torch.as_tensor(num_masked).expand(B)
        if not isinstance(num_masked, torch.Tensor) or num_masked.dim() == 0
        else num_masked
    )
    if (n < 0).any() or (n > L).any():
        raise ValueError(f"num_masked must be in [0, {L}], got {n.tolist()}")
    scores = torch.rand(B, L, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < n.view(B, 1)


def mask_tokens(
    tokens: torch.Tensor,
    ratio: torch.Tensor | float,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace round(ratio * L) tokens per row with ``mask_id``; returns (masked, mask).

    ``ratio`` is a float or a (B,) tensor. Used both for MaskGIT training and for FPD's remask.
    """
    B, L = tokens.shape
    r = torch.as_tensor(ratio, dtype=torch.float64).expand(B)
    if ((r < 0) | (r > 1)).any():
        raise ValueError(f"mask ratio must be in [0, 1], got {r.tolist()}")
    n = torch.round(r * L).long()
    mask = random_mask((B, L), n, generator).to(tokens.device)
    return torch.where(mask, torch.full_like(tokens, mask_id), tokens), mask


def training_ratio(
    n: int, kind: MaskSchedule = "cosine", generator: torch.Generator | None = None
) -> torch.Tensor:
    """MaskGIT training mask ratios gamma(r), r ~ U(0, 1), clamped so at least one token is masked."""
    r = torch.rand(n, generator=generator, dtype=torch.float64)
    return gamma(r, kind).clamp(min=1e-6)
