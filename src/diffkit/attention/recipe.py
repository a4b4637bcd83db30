"""``Recipe``: one ``diffkit sparsify`` run (a YAML file under ``recipes/attention/``).

Kept apart from ``cli.py`` because it holds a :class:`~diffkit.train.TrainConfig` (whose module
imports torch), and the CLI module must import without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from diffkit.attention.config import RoPeSLRConfig
from diffkit.train import TrainConfig


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A ``diffkit sparsify`` run.

    Attributes:
        stage: "align" (stage 1: new parameters only, per-layer MSE to dense attention),
            "finetune" (stage 2: whole model, flow or distillation loss + aux MSE, density
            annealing) or "profile" (per-layer error, timing and Amdahl bound; no training).
        ropeslr: the RoPeSLR options.
        train: the training loop settings (steps, batch size, lr, ...).
        data: "moving-digits" (bundled videos; the model must take 1 input channel) or "noise"
            (random latents of ``latent_shape``: activations for alignment on any Wan model).
        videos: number of training videos / noise samples.
        latent_shape: (frames, height, width) of the noise latents (before patching).
        text_tokens: length of the random text sequence for data="noise".
        target: stage-2 objective: "flow" (flow matching on data) or "distill" (dense velocity).
        aux_weight: weight of the per-layer MSE auxiliary loss in stage 2.
        anneal_start: stage-2 density at step 0 (annealed linearly to ropeslr.density).
        anneal_steps: annealing length in steps (0 = no annealing).
        shift: flow-matching timestep shift used to noise the inputs.
    """

    stage: Literal["align", "finetune", "profile"] = "align"
    ropeslr: RoPeSLRConfig = field(default_factory=lambda: RoPeSLRConfig(backend="reference"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150, batch_size=4))
    data: Literal["moving-digits", "noise"] = "moving-digits"
    videos: int = 600
    latent_shape: tuple[int, int, int] = (8, 32, 32)
    text_tokens: int = 4
    target: Literal["flow", "distill"] = "distill"
    aux_weight: float = 0.1
    anneal_start: float = 0.5
    anneal_steps: int = 0
    shift: float = 2.0

    def __post_init__(self) -> None:
        if self.videos < 1:
            raise ValueError(f"Recipe.videos must be >= 1, got {self.videos}")
        if min(self.latent_shape) < 1 or len(self.latent_shape) != 3:
            raise ValueError(
                f"Recipe.latent_shape must be 3 positive ints, got {self.latent_shape}"
            )
        if self.aux_weight < 0:
            raise ValueError(f"Recipe.aux_weight must be >= 0, got {self.aux_weight}")
