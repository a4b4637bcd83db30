"""Shared primitives. This package imports nothing else of diffkit's (enforced by a test)."""

from diffkit.core import ema, io, masking, metrics, rope, samplers, schedules
from diffkit.core.objective import LossOutput, StepContext

__all__ = [
    "LossOutput",
    "StepContext",
    "ema",
    "io",
    "masking",
    "metrics",
    "rope",
    "samplers",
    "schedules",
]
