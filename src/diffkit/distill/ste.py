"""Straight-through token routing (FPD, arXiv 2605.21484, eq. 8) and the one-step teacher refinement.

STE: the forward pass uses the *exact* codebook embeddings of hard tokens z^ (teacher and decoder see
tokens on the codebook manifold), the backward pass the probability-weighted mixture::

    e = E[z^] + e~ - sg(e~),    e~_i = sum_v softmax(l_i / t)_v E_v

Modes: ``categorical`` (z^ ~ softmax(l / t), via Gumbel-max), ``argmax``, ``gumbel`` (Gumbel-softmax
on the tempered logits: forward the hard argmax(l / t + g), i.e. the same sample as
``categorical``; backward the relaxed softmax(l / t + g), the noise added after the temperature,
so the relaxation itself runs at temperature 1), ``soft`` (no hard
tokens in the decoder: e = e~; the paper's "soft embedding" ablation; hard tokens are still drawn
for the teacher).

Refinement (the FPD fixed-point operator T_phi o M_r, spec (c)): re-mask exactly round(r L) random
positions of the draft, run one (guided) teacher pass, sample the masked positions, keep the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from diffkit.core.masking import check_mask_id, mask_tokens
from diffkit.distill.interfaces import Cond, MaskedTeacher

STEMode = Literal["categorical", "argmax", "gumbel", "soft"]
STE_MODES: tuple[str, ...] = ("categorical", "argmax", "gumbel", "soft")


@dataclass
class Routed:
    """Output of :func:`straight_through`."""

    ids: torch.Tensor  # (B, L) hard tokens
    emb: torch.Tensor  # (B, L, d) embeddings to decode (grad flows to the logits)
    probs: torch.Tensor  # (B, L, K) softmax(logits / t)


def gumbel_noise(shape, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator).clamp_(1e-20, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (..., K) -> ids (...). Drawn where the generator lives (the
    CPU for the training loop's generators), so a seed gives the same ids on any device."""
    flat = probs.reshape(-1, probs.shape[-1])
    if generator is not None and generator.device != flat.device:
        flat = flat.cpu()
    ids = torch.multinomial(flat, 1, generator=generator)
    return ids.view(probs.shape[:-1]).to(probs.device)


def straight_through(
    logits: torch.Tensor,
    codebook: torch.Tensor,
    mode: STEMode = "categorical",
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> Routed:
    """Hard tokens + embeddings routed per ``mode`` (see module docstring).

    ``noise`` (B, L, K) optionally supplies the Gumbel noise (for per-sample determinism).
    """
    if mode not in STE_MODES:
        raise ValueError(f"straight_through mode={mode!r}; use one of {', '.join(STE_MODES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    K = codebook.shape[0]
    if logits.shape[-1] != K:
        raise ValueError(f"logits have {logits.shape[-1]} classes but the codebook has {K} codes")
    logits = logits.float()
    probs = torch.softmax(logits / temperature, -1)
    if mode == "argmax":
        ids = logits.argmax(-1)
        soft = probs
    else:
        g = gumbel_noise(logits.shape, generator) if noise is None else noise
        g = g.to(logits.device)
        perturbed = logits / temperature + g
        ids = perturbed.argmax(-1)  # Gumbel-max = a categorical sample of softmax(l / t)
        soft = torch.softmax(perturbed, -1) if mode == "gumbel" else probs
    mix = soft @ codebook.float()  # (B, L, d)
    if mode == "soft":
        return Routed(ids=ids, emb=mix, probs=probs)
    hard = codebook.float()[ids]
    return Routed(ids=ids, emb=hard + mix - mix.detach(), probs=probs)


def remask(
    tokens: torch.Tensor,
    ratio: float | torch.Tensor,
    mask_id: int,
    *,
    codebook_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M_r: replace exactly round(r L) uniformly chosen positions per row by ``mask_id``.

    Returns (masked tokens, bool mask). ``codebook_size`` checks that the mask id is not a code.
    """
    if codebook_size is not None:
        check_mask_id(mask_id, codebook_size)
    return mask_tokens(tokens, ratio, mask_id, generator)


@torch.no_grad()
def refine(
    teacher: MaskedTeacher,
    draft: torch.Tensor,
    cond: Cond,
    ratio: float | torch.Tensor,
    *,
    guidance_scale: float = 3.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    net: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One teacher step on a re-masked draft: z+ = where(masked, sample(l_T / t), draft).

    Returns (refined tokens (B, L), mask of re-masked positions).
    """
    z, masked = remask(
        draft, ratio, teacher.mask_id, codebook_size=teacher.codebook_size, generator=generator
    )
    logits = teacher.guided_logits(z, cond, guidance_scale, net=net)
    probs = torch.softmax(logits / max(temperature, 1e-6), -1)
    sampled = categorical(probs, generator)  # (B, L)
    return torch.where(masked, sampled, draft), masked
