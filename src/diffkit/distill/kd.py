"""Naive knowledge distillation baseline: cross-entropy of the one-step student on teacher samples.

For each pair (z_init, c) the teacher draws a full T-step MaskGIT sample z_T (with CFG); the
student is trained with CE(G_theta(z_init, c), z_T), i.e. to predict the teacher's multi-step
output from the same initial noise in one step (spec distill-fpd.md (g), "naive KD"). With a
non-deterministic teacher the optimum is the per-token marginal, which is why it blurs / mixes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.core.objective import LossOutput, StepContext
from diffkit.distill.fpd import student_input
from diffkit.distill.interfaces import MaskedTeacher


class KDPool:
    """Pre-drawn (z_init, condition id, teacher sample) triples; a dataset for :func:`fit`."""

    def __init__(
        self,
        teacher: MaskedTeacher,
        per_condition: int,
        *,
        steps: int = 8,
        guidance_scale: float = 3.0,
        r_init: float = 0.95,
        batch_size: int = 200,
        generator: torch.Generator | None = None,
    ):
        ids = torch.arange(teacher.num_conditions).repeat_interleave(per_condition)
        z_init, targets = [], []
        for i in range(0, len(ids), batch_size):
            c = ids[i : i + batch_size]
            z_init.append(
                student_input(
                    len(c), teacher.num_tokens, teacher.codebook_size, teacher.mask_id, r_init,
                    generator,
                )
            )  # fmt: skip
            targets.append(
                teacher.sample(
                    teacher.condition(c), steps, generator=generator, guidance_scale=guidance_scale
                )
            )
        self.cond, self.z_init, self.targets = ids, torch.cat(z_init), torch.cat(targets)

    def __len__(self) -> int:
        return len(self.cond)

    def get_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cond": self.cond[idx], "z_init": self.z_init[idx], "target": self.targets[idx]}


class NaiveKD:
    """Objective: CE between student logits at z_init and the teacher's T-step tokens."""

    def __init__(self, teacher: MaskedTeacher):
        self.teacher = teacher

    def __call__(self, student: nn.Module, batch: dict, ctx: StepContext) -> LossOutput:
        cond = self.teacher.condition(batch["cond"])
        logits = self.teacher.forward_logits(student, batch["z_init"], cond)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten())
        acc = (logits.argmax(-1) == batch["target"]).float().mean()
        return LossOutput(loss, {"token_acc": acc.detach()})
