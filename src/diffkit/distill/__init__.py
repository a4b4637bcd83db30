"""FPD: one-step distillation of masked-token diffusion generators (arXiv 2605.21484).

Components: :class:`Tokenizer` / :class:`MaskedTeacher` interfaces and adapters, the
:class:`DriftLoss` (:mod:`diffkit.distill.drift`), :func:`straight_through`, :func:`remask`,
:func:`refine`, :class:`FeatureLifter`, and the :class:`FPD` objective for
:func:`diffkit.train.fit`; :class:`NaiveKD` is the baseline. aMUSEd adapters live in
:mod:`diffkit.distill.amused` (imported lazily: it needs diffusers).
"""

from diffkit.distill.drift import DriftConfig, DriftLoss, drift_field, drift_targets, group_layout
from diffkit.distill.fpd import (
    FPD,
    ConditionData,
    Discriminator,
    FPDConfig,
    PositiveQueue,
    sample_student,
    student_input,
    token_stats,
)
from diffkit.distill.interfaces import (
    ClassConditionalTeacher,
    MaskedTeacher,
    MaskGITObjective,
    Tokenizer,
    check_compatible,
)
from diffkit.distill.kd import KDPool, NaiveKD
from diffkit.distill.lifter import Dinov2Backbone, FeatureLifter, LifterConfig
from diffkit.distill.ste import Routed, refine, remask, straight_through

__all__ = [
    "FPD",
    "ClassConditionalTeacher",
    "ConditionData",
    "Dinov2Backbone",
    "Discriminator",
    "DriftConfig",
    "DriftLoss",
    "FPDConfig",
    "FeatureLifter",
    "KDPool",
    "LifterConfig",
    "MaskGITObjective",
    "MaskedTeacher",
    "NaiveKD",
    "PositiveQueue",
    "Routed",
    "Tokenizer",
    "check_compatible",
    "drift_field",
    "drift_targets",
    "group_layout",
    "refine",
    "remask",
    "sample_student",
    "straight_through",
    "student_input",
    "token_stats",
]
