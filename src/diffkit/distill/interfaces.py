"""Tokenizer and masked-teacher interfaces of FPD, the tiny-zoo adapters, and the teacher's loss.

FPD (Wang & Tong 2026, arXiv 2605.21484) distils a *masked-token* diffusion generator (MaskGIT,
Chang et al. 2022, arXiv 2202.04200) into a one-step student. It needs two objects:

* a :class:`Tokenizer` with a codebook E (K, d): ``encode`` images -> ids, ``embed(ids)`` -> E[ids],
  ``decode(emb)`` -> images (differentiable in ``emb``);
* a :class:`MaskedTeacher`: logits over the K codes for a partly masked grid (mask id = K), a
  condition table (class ids, prompt embeddings) with a null condition for classifier-free
  guidance, and the multi-step MaskGIT sampler (:func:`diffkit.core.samplers.maskgit_sample`).

The student is a trainable copy of the teacher's network (:meth:`MaskedTeacher.make_student`);
``forward_logits(net, tokens, cond)`` runs *any* copy, so the same adapter serves teacher and
student. :class:`ClassConditionalTeacher` adapts the tiny zoo MaskGIT
(:mod:`diffkit.models.maskgit`); :mod:`diffkit.distill.amused` adapts diffusers aMUSEd.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.core.masking import MaskSchedule, check_mask_id, mask_tokens, training_ratio
from diffkit.core.objective import LossOutput, StepContext
from diffkit.core.samplers import maskgit_sample

Cond = Any  # a (B,) tensor of class ids, or a dict of per-sample condition tensors


@runtime_checkable
class Tokenizer(Protocol):
    """What FPD needs from a tokenizer (codes 0..K-1; ``decode`` differentiable)."""

    codebook_size: int
    num_tokens: int

    @property
    def codebook(self) -> torch.Tensor: ...  # (K, d)

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...  # (B, L) ids

    def embed(self, ids: torch.Tensor) -> torch.Tensor: ...  # (B, L, d)

    def decode(self, emb: torch.Tensor) -> torch.Tensor: ...  # (B, C, H, W)


def index_cond(cond: Cond, idx: torch.Tensor) -> Cond:
    """Select samples ``idx`` of a condition (tensor or dict of tensors)."""
    if isinstance(cond, dict):
        return {k: v[idx] for k, v in cond.items()}
    return cond[idx]


def cat_cond(a: Cond, b: Cond) -> Cond:
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])


class MaskedTeacher(nn.Module):
    """Base adapter: a frozen masked-token network plus its condition handling.

    Subclasses implement :meth:`forward_logits`, :meth:`condition` and :meth:`null_condition`.

    Attributes:
        net: the wrapped network (frozen, eval mode).
        codebook_size: K; logits have K entries, codes are 0..K-1.
        mask_id: the mask token id (must lie outside [0, K)).
        num_tokens: L, tokens per image.
        num_conditions: size of the condition table (classes or prompts).
    """

    def __init__(self, net: nn.Module, *, codebook_size: int, mask_id: int, num_tokens: int):
        super().__init__()
        check_mask_id(mask_id, codebook_size)
        self.net = net.eval().requires_grad_(False)
        self.codebook_size = codebook_size
        self.mask_id = mask_id
        self.num_tokens = num_tokens
        self.num_conditions = 0

    # -- to implement -------------------------------------------------------------------------
    def forward_logits(self, net: nn.Module, tokens: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Logits (B, L, K) of ``net`` (the teacher or a student copy) for ``tokens`` (B, L)."""
        raise NotImplementedError

    def condition(self, ids: torch.Tensor) -> Cond:
        """Conditions for condition-table ids (B,)."""
        raise NotImplementedError

    def null_condition(self, n: int) -> Cond:
        """The unconditional (null) condition repeated ``n`` times."""
        raise NotImplementedError

    # -- provided -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the teacher network lives (conditions and start states are put there)."""
        p = next(self.net.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def make_student(self) -> nn.Module:
        """A trainable deep copy of the teacher network (FPD initialises the student from it)."""
        return copy.deepcopy(self.net).train().requires_grad_(True)

    def logits(self, tokens: torch.Tensor, cond: Cond) -> torch.Tensor:
        return self.forward_logits(self.net, tokens, cond)

    def guided_logits(
        self, tokens: torch.Tensor, cond: Cond, scale: float, net: nn.Module | None = None
    ) -> torch.Tensor:
        """CFG on logits: u + s (c - u), conditional and null passes batched together."""
        net = self.net if net is None else net
        if scale == 1.0:
            return self.forward_logits(net, tokens, cond).float()
        B = tokens.shape[0]
        both = self.forward_logits(
            net, torch.cat([tokens, tokens]), cat_cond(cond, self.null_condition(B))
        ).float()
        c, u = both[:B], both[B:]
        return u + scale * (c - u)

    @torch.no_grad()
    def sample(
        self,
        cond: Cond,
        steps: int = 8,
        *,
        generator: torch.Generator | None = None,
        guidance_scale: float = 3.0,
        temperature: float = 1.0,
        choice_temperature: float = 4.5,
        schedule: MaskSchedule = "cosine",
    ) -> torch.Tensor:
        """Multi-step MaskGIT sampling with CFG; returns ids (B, L). NFE = steps x (2 with CFG)."""
        B = len(cond) if not isinstance(cond, dict) else len(next(iter(cond.values())))
        null = self.null_condition(B)
        return maskgit_sample(
            lambda z: self.forward_logits(self.net, z, cond),
            (B, self.num_tokens),
            self.mask_id,
            steps=steps,
            generator=generator,
            uncond_logits_fn=(lambda z: self.forward_logits(self.net, z, null))
            if guidance_scale != 1.0
            else None,
            guidance_scale=guidance_scale,
            temperature=temperature,
            choice_temperature=choice_temperature,
            schedule=schedule,
        )


class ClassConditionalTeacher(MaskedTeacher):
    """Adapter for class-conditional MaskGIT networks called as ``net(tokens, labels)``.

    Works with :class:`diffkit.models.maskgit.TinyMaskGIT` (null class = ``num_classes``).
    """

    def __init__(self, net: nn.Module):
        for attr in ("codebook_size", "mask_id", "num_tokens", "num_classes"):
            if not hasattr(net, attr):
                raise ValueError(
                    f"ClassConditionalTeacher needs a network with .{attr} (such as "
                    f"diffkit.models.maskgit.TinyMaskGIT); got {type(net).__name__}. For diffusers "
                    "UVit2DModel use diffkit.distill.AmusedTeacher."
                )
        super().__init__(
            net, codebook_size=net.codebook_size, mask_id=net.mask_id, num_tokens=net.num_tokens
        )
        self.num_conditions = net.num_classes
        self.null_class = getattr(net, "null_class", net.num_classes)

    def forward_logits(self, net, tokens, cond):
        return net(tokens, cond)

    def condition(self, ids):
        if ids.min() < 0 or ids.max() >= self.num_conditions:
            raise ValueError(
                f"class ids must be in [0, {self.num_conditions}), got {ids.tolist()[:8]}..."
            )
        return ids.long().to(self.device)

    def null_condition(self, n):
        return torch.full((n,), self.null_class, dtype=torch.long, device=self.device)


def check_compatible(teacher: MaskedTeacher, tokenizer: Tokenizer) -> None:
    """Teacher and tokenizer must share the vocabulary and grid; the mask id must not be a code."""
    if teacher.codebook_size != tokenizer.codebook_size:
        raise ValueError(
            f"vocabulary mismatch: the teacher predicts {teacher.codebook_size} codes but the "
            f"tokenizer's codebook has {tokenizer.codebook_size}"
        )
    if teacher.num_tokens != tokenizer.num_tokens:
        raise ValueError(
            f"grid mismatch: the teacher expects {teacher.num_tokens} tokens per image, the "
            f"tokenizer produces {tokenizer.num_tokens}"
        )
    check_mask_id(teacher.mask_id, tokenizer.codebook_size)


class MaskGITObjective:
    """MaskGIT training loss (arXiv 2202.04200, sec. 3.2): cross-entropy on masked tokens only.

    Per sample, r ~ U(0, 1) and round(gamma(r) L) tokens (at least one) become the mask id
    (cosine gamma); labels are replaced by the null class with probability ``label_drop`` (for
    CFG). Batches are dicts ``{"tokens": (B, L), "y": (B,)}``.
    """

    def __init__(
        self,
        *,
        mask_id: int,
        null_class: int,
        label_drop: float = 0.1,
        schedule: MaskSchedule = "cosine",
    ):
        if not 0 <= label_drop < 1:
            raise ValueError(f"label_drop must be in [0, 1), got {label_drop}")
        self.mask_id, self.null_class = mask_id, null_class
        self.label_drop, self.schedule = label_drop, schedule

    def __call__(self, model: nn.Module, batch: dict, ctx: StepContext) -> LossOutput:
        tokens, y = batch["tokens"], batch["y"]
        B, L = tokens.shape
        ratio = training_ratio(B, self.schedule, ctx.generator)
        masked_tokens, mask = mask_tokens(tokens, ratio, self.mask_id, ctx.generator)
        mask[torch.arange(B), mask.float().argmax(1)] = True  # >= 1 masked token per row
        masked_tokens = torch.where(mask, self.mask_id, tokens)
        drop = torch.rand(B, generator=ctx.generator) < self.label_drop
        y = torch.where(drop, self.null_class, y)
        logits = model(masked_tokens, y)
        loss = F.cross_entropy(logits[mask], tokens[mask])
        acc = (logits[mask].argmax(-1) == tokens[mask]).float().mean()
        return LossOutput(loss, {"masked_acc": acc.detach(), "mask_frac": mask.float().mean()})
