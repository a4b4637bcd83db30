"""Linear-DPO preference alignment for diffusion and flow-matching models (arXiv 2605.21123).

The public names below are imported on first access (PEP 562), so ``diffkit.align.cli`` (and
``diffkit align --help``) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "hinge_dpo_loss": "losses",
    "ipo_loss": "losses",
    "linear_dpo_loss": "losses",
    "linear_dpo_weight": "losses",
    "linear_pure_loss": "losses",
    "margin": "losses",
    "sigmoid_dpo_loss": "losses",
    "SUPPORTED_MODELS": "objective",
    "LinearDPO": "objective",
    "LinearDPOConfig": "objective",
    "model_kind": "objective",
    "paired_errors": "objective",
    "predict": "objective",
    "t_from_uniform": "objective",
    "EMAReference": "reference",
    "FrozenReference": "reference",
    "LoRAReference": "reference",
    "make_reference": "reference",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'diffkit.align' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"diffkit.align.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
