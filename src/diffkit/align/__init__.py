"""Linear-DPO preference alignment for diffusion and flow-matching models (arXiv 2605.21123)."""

from diffkit.align.losses import (
    hinge_dpo_loss,
    ipo_loss,
    linear_dpo_loss,
    linear_dpo_weight,
    linear_pure_loss,
    margin,
    sigmoid_dpo_loss,
)
from diffkit.align.objective import (
    SUPPORTED_MODELS,
    LinearDPO,
    LinearDPOConfig,
    model_kind,
    paired_errors,
    predict,
    t_from_uniform,
)
from diffkit.align.reference import EMAReference, FrozenReference, LoRAReference, make_reference

__all__ = [
    "SUPPORTED_MODELS",
    "EMAReference",
    "FrozenReference",
    "LinearDPO",
    "LinearDPOConfig",
    "LoRAReference",
    "hinge_dpo_loss",
    "ipo_loss",
    "linear_dpo_loss",
    "linear_dpo_weight",
    "linear_pure_loss",
    "make_reference",
    "margin",
    "model_kind",
    "paired_errors",
    "predict",
    "sigmoid_dpo_loss",
    "t_from_uniform",
]
