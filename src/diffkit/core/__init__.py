"""Shared primitives. This package imports nothing else of diffkit's (enforced by a test)."""

from diffkit.core import ema, io, machine, masking, metrics, rope, samplers, schedules
from diffkit.core.objective import LossOutput, StepContext

__all__ = [
    "LossOutput",
    "StepContext",
    "ema",
    "io",
    "machine",
    "masking",
    "metrics",
    "rope",
    "samplers",
    "schedules",
]
