"""Linear-DPO preference alignment for diffusion and flow-matching models (arXiv 2605.21123).

The public names below are imported on first access (PEP 562), so ``diffkit.align.cli`` (and
``diffkit align --help``) loads without torch.
"""

from __future__ import annotations

from diffkit.lazy import lazy_exports

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

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
