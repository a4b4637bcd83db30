"""Exponential moving average of a model's weights, kept in fp32.

theta_ema <- d * theta_ema + (1 - d) * theta, applied once per *optimizer* step (call
:meth:`EMA.update` after ``optimizer.step()``, never per micro-batch). Buffers are copied.
d = 1 leaves the copy frozen. The copy is a full module (``ema.module``) so it can serve as a
reference network (Linear-DPO, arXiv 2605.21123) or as the evaluation weights.

Kept in fp32 on purpose: with d = 0.99 a bf16/fp16 copy stalls because the per-step increment falls
below the format's resolution (a defect of the Linear-DPO reference code).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """fp32 EMA copy of ``model``.

    Args:
        model: the module whose trainable weights are averaged.
        decay: d in (0, 1]; 1 means frozen.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"EMA decay must be in (0, 1], got decay={decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step toward ``model``'s current weights (call once per optimizer step)."""
        src = dict(model.named_parameters())
        for name, p_ema in self.module.named_parameters():
            p = src[name]
            if p.requires_grad:
                p_ema.lerp_(p.detach().float(), 1.0 - self.decay)
            else:
                p_ema.copy_(p.detach().float())
        src_b = dict(model.named_buffers())
        for name, b_ema in self.module.named_buffers():
            if name in src_b:
                b_ema.copy_(src_b[name])
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into ``model`` (cast to its dtypes)."""
        model.load_state_dict(
            {k: v.to(model.state_dict()[k].dtype) for k, v in self.module.state_dict().items()}
        )

    def state_dict(self) -> dict[str, torch.Tensor]:
        sd = {f"module.{k}": v for k, v in self.module.state_dict().items()}
        sd["num_updates"] = torch.tensor(self.num_updates)
        sd["decay"] = torch.tensor(self.decay, dtype=torch.float64)
        return sd

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(
            {k[len("module.") :]: v for k, v in state.items() if k.startswith("module.")}
        )
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
