"""Training RoPeSLR through :func:`diffkit.train.fit` (spec b.5).

* Stage 1, :class:`AlignmentObjective`: the backbone is frozen (:func:`freeze_backbone_`); every
  RoPeSLR layer computes the dense attention (no grad, the teacher) and its own output on the
  same q/k/v, the loss is the mean over layers of the relative MSE, and the *dense* output is
  passed on so each layer sees the dense model's activations (RoLa's recipe). Activations are
  produced on the fly from noised training inputs at random timesteps, which is the same as
  caching them across timesteps and prompts, without the disk.
* Stage 2, :class:`FinetuneObjective`: unfrozen backbone, flow-matching loss on data or
  distillation to the dense model's velocity at identical noised inputs, with the stage-1 MSE as
  an auxiliary loss (weight 0.1), and density annealed from 0.5 to the target
  (:class:`DensityAnneal`, applied in ``after_step``).

Both objectives take ``make_inputs(model, batch, ctx) -> (model_kwargs, x0, noise, t)`` so any
diffusers video transformer and data source can be used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from diffkit.attention.processors import ropeslr_parameters, ropeslr_state
from diffkit.core.objective import LossOutput

MakeInputs = Callable[
    [nn.Module, object, object], tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]
]


def freeze_backbone_(transformer: nn.Module) -> int:
    """requires_grad = False everywhere except the RoPeSLR parameters; returns #trainable."""
    keep = {id(p) for p in ropeslr_parameters(transformer)}
    if not keep:
        raise ValueError("no RoPeSLR parameters found; call apply_ropeslr_ first")
    for p in transformer.parameters():
        p.requires_grad_(id(p) in keep)
    return sum(p.numel() for p in transformer.parameters() if p.requires_grad)


def _forward(model, kwargs) -> torch.Tensor:
    out = model(**kwargs, return_dict=False)
    return out[0]


class AlignmentObjective:
    """Stage 1: mean over layers of ||o_ropeslr - o_dense||^2 / ||o_dense||^2 (teacher no_grad)."""

    def __init__(self, make_inputs: MakeInputs) -> None:
        self.make_inputs = make_inputs

    def __call__(self, model, batch, ctx) -> LossOutput:
        state = ropeslr_state(model)
        kwargs, *_ = self.make_inputs(model, batch, ctx)
        state.mode, state.losses = "align", []
        try:
            _forward(model, kwargs)
        finally:
            state.mode = "sparse"
        losses, state.losses = state.losses, []
        if not losses:
            raise ValueError("no RoPeSLR layer ran (all dense?): nothing to align")
        loss = torch.stack(losses).mean()
        return LossOutput(loss, {"layer_rel_mse": float(loss.detach())})


@dataclass(frozen=True, kw_only=True)
class DensityAnneal:
    """Linear density schedule from ``start`` to ``end`` over ``steps`` optimizer steps.

    Attributes:
        start: density at step 0.
        end: target density (reached at ``steps``).
        steps: annealing length; 0 disables annealing.
    """

    start: float = 0.5
    end: float = 0.1
    steps: int = 1000

    def __post_init__(self) -> None:
        if not (0 < self.end <= 1 and 0 < self.start <= 1):
            raise ValueError(
                f"DensityAnneal start/end must be in (0, 1], got {self.start}, {self.end}"
            )
        if self.steps < 0:
            raise ValueError(f"DensityAnneal.steps must be >= 0, got {self.steps}")

    def at(self, step: int) -> float:
        if self.steps == 0 or step >= self.steps:
            return self.end
        return self.start + (self.end - self.start) * step / self.steps


class FinetuneObjective:
    """Stage 2: flow-matching loss ("flow") or distillation to the dense velocity ("distill"),
    plus ``aux_weight`` x the per-layer alignment MSE."""

    def __init__(
        self,
        make_inputs: MakeInputs,
        target: Literal["flow", "distill"] = "flow",
        aux_weight: float = 0.1,
        anneal: DensityAnneal | None = None,
    ) -> None:
        if target not in ("flow", "distill"):
            raise ValueError(f"target={target!r} is not supported; use 'flow' or 'distill'")
        self.make_inputs, self.target, self.aux_weight, self.anneal = (
            make_inputs,
            target,
            aux_weight,
            anneal,
        )
        self._density: float | None = anneal.at(0) if anneal else None

    def __call__(self, model, batch, ctx) -> LossOutput:
        state = ropeslr_state(model)
        state.density = self._density
        kwargs, x0, noise, t = self.make_inputs(model, batch, ctx)
        if self.target == "distill":
            state.mode = "dense"
            with torch.no_grad():
                goal = _forward(model, kwargs)
        else:
            goal = noise - x0
        state.mode = "aux" if self.aux_weight > 0 else "sparse"
        state.losses = []
        try:
            pred = _forward(model, kwargs)
        finally:
            state.mode = "sparse"
        main = (pred - goal).pow(2).mean()
        metrics = {"main": float(main.detach())}
        loss = main
        if state.losses:
            aux = torch.stack(state.losses).mean()
            loss = loss + self.aux_weight * aux
            metrics["aux_layer_rel_mse"] = float(aux.detach())
        state.losses = []
        if self._density is not None:
            metrics["density"] = self._density
        return LossOutput(loss, metrics)

    def after_step(self, model, step: int) -> None:
        if self.anneal is not None:
            self._density = self.anneal.at(step + 1)

    def state_dict(self) -> dict:
        return {"density": self._density}

    def load_state_dict(self, d: dict) -> None:
        self._density = d.get("density")
