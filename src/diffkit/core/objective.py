"""The contract between objectives and the training loop.

An objective is any callable ``objective(model, batch, ctx) -> LossOutput``. ``ctx`` carries the
step's randomness: ``ctx.generator`` (per rank and micro-batch) and ``ctx.sample_seeds``, one seed
per sample derived from its *global* position in the data stream, so noise drawn with
:meth:`StepContext.randn` is the same whatever the number of ranks or accumulation steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """What every objective returns: a scalar loss to backpropagate and float metrics.

    ``metrics`` values may be Python floats or 0-d tensors; the trainer averages them over
    micro-batches and ranks before logging.
    """

    loss: torch.Tensor
    metrics: dict[str, float | torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.loss, torch.Tensor) or self.loss.dim() != 0:
            raise ValueError(
                f"LossOutput.loss must be a 0-d tensor, got {type(self.loss).__name__}"
                f" with shape {getattr(self.loss, 'shape', None)}"
            )


@dataclass
class StepContext:
    """Randomness and position of one micro-batch inside the training loop."""

    step: int
    generator: torch.Generator
    sample_seeds: torch.Tensor
    rank: int = 0
    world_size: int = 1

    def randn(self, *shape: int, salt: int = 0) -> torch.Tensor:
        """Per-sample standard normal noise of shape (len(sample_seeds), *shape).

        Sample i's noise depends only on its seed (and ``salt``), not on how the batch is split.
        """
        return per_sample_randn(self.sample_seeds, shape, salt)

    def rand(self, *shape: int, salt: int = 0) -> torch.Tensor:
        """Per-sample uniform [0, 1) numbers of shape (len(sample_seeds), *shape)."""
        return _per_sample(torch.rand, self.sample_seeds, shape, salt)


def _per_sample(draw, seeds: torch.Tensor, shape: tuple[int, ...], salt: int) -> torch.Tensor:
    g = torch.Generator()
    out = []
    for s in seeds.tolist():
        g.manual_seed((int(s) * 1_000_003 + salt) % (2**63 - 1))
        out.append(draw(shape, generator=g))
    return torch.stack(out)


def per_sample_randn(seeds: torch.Tensor, shape: tuple[int, ...], salt: int = 0) -> torch.Tensor:
    """Stack of ``randn(shape)`` drawn from one generator per seed."""
    return _per_sample(torch.randn, seeds, shape, salt)
