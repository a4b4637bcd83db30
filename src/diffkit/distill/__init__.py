"""FPD: one-step distillation of masked-token diffusion generators (arXiv 2605.21484).

Components: :class:`Tokenizer` / :class:`MaskedTeacher` interfaces and adapters, the
:class:`DriftLoss` (:mod:`diffkit.distill.drift`), :func:`straight_through`, :func:`remask`,
:func:`refine`, :class:`FeatureLifter`, and the :class:`FPD` objective for
:func:`diffkit.train.fit`; :class:`NaiveKD` is the baseline; :func:`evaluate_features` scores
samples in any feature space. aMUSEd adapters live in :mod:`diffkit.distill.amused` (they need
diffusers).

Names are resolved on first access (PEP 562), so ``import diffkit.distill.cli`` (the CLI table)
does not import torch.
"""

from __future__ import annotations

from diffkit.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ("DriftConfig", "DriftLoss", "drift_field", "drift_targets", "group_layout"), "drift"
    ),
    **dict.fromkeys(
        (
            "FPD",
            "ConditionData",
            "Discriminator",
            "FPDConfig",
            "PositiveQueue",
            "draw_tokens",
            "sample_student",
            "student_input",
            "token_stats",
        ),
        "fpd",
    ),
    **dict.fromkeys(
        (
            "ClassConditionalTeacher",
            "MaskedTeacher",
            "MaskGITObjective",
            "Tokenizer",
            "check_compatible",
        ),
        "interfaces",
    ),
    **dict.fromkeys(("KDPool", "NaiveKD"), "kd"),
    **dict.fromkeys(("Dinov2Backbone", "FeatureLifter", "LifterConfig"), "lifter"),
    **dict.fromkeys(("Routed", "refine", "remask", "straight_through"), "ste"),
    **dict.fromkeys(("evaluate_features",), "evaluate"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
