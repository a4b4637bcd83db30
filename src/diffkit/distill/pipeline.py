"""End-to-end FPD runs on the tiny zoo (used by the CLI, the zoo recipe and the benchmark).

``distill_digits(fpd_config, train_config, out_dir)`` loads ``digits-patch-tokenizer``,
``digits-maskgit`` (teacher) and ``digits-lifter`` (drift space), trains the one-step student with
:func:`diffkit.train.fit` and returns the student with its EMA weights copied in (when enabled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from diffkit import models
from diffkit.core.ema import EMA
from diffkit.data.digits import load_digits
from diffkit.distill.fpd import FPD, FPDConfig, sample_student
from diffkit.distill.interfaces import ClassConditionalTeacher
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)

# The teacher's sampling settings used throughout, chosen on the teacher alone by KID in a sweep of
# CFG {2, 3} x choice temperature {2, 4.5} (benchmarks/distill_datafree.py; docs/distill.md):
# teacher-8 KID 9.5 +- 1.8 here vs 15.3 +- 0.8 with the first pass's choice temperature 2.
TEACHER_SAMPLING = {"guidance_scale": 2.0, "choice_temperature": 4.5}
SAMPLING_FILE = "sampling.json"  # beside a saved student: {"sample_mode": "argmax" | "categorical"}


def write_sample_mode(student_dir: str | Path, mode: str) -> None:
    """Record how a saved student's tokens are drawn (its training routing, FPDConfig.sample_mode)."""
    from diffkit.core.io import atomic_write_json

    atomic_write_json(Path(student_dir) / SAMPLING_FILE, {"sample_mode": mode})


def sample_mode_of(model: str | Path) -> Literal["categorical", "argmax"]:
    """The recorded sampling mode of a zoo student (its metrics) or a student folder; categorical
    when nothing is recorded."""
    import json

    if str(model) in models.list_models():
        return models.metrics(str(model)).get("sample_mode", "categorical")
    f = Path(model) / SAMPLING_FILE
    return json.loads(f.read_text())["sample_mode"] if f.is_file() else "categorical"


@dataclass
class DigitsZoo:
    tokenizer: nn.Module
    teacher: ClassConditionalTeacher
    lifter_backbone: nn.Module


def load_digits_zoo() -> DigitsZoo:
    """The shipped tokenizer, teacher and lifter (zoo weights must be present)."""
    return DigitsZoo(
        tokenizer=models.load("digits-patch-tokenizer"),
        teacher=ClassConditionalTeacher(models.load("digits-maskgit")),
        lifter_backbone=models.load("digits-lifter"),
    )


def distill_digits(
    fpd_config: FPDConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    zoo: DigitsZoo | None = None,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, float]]:
    """Train a one-step FPD student of ``digits-maskgit``; returns (student, last metrics)."""
    zoo = zoo or load_digits_zoo()
    needs_real = fpd_config.gan_weight > 0 or fpd_config.real_positives > 0
    real = load_digits("train") if needs_real else None
    fpd = FPD(
        fpd_config,
        teacher=zoo.teacher,
        tokenizer=zoo.tokenizer,
        lifter_backbone=zoo.lifter_backbone,
        real_images=None if real is None else real.images,
        real_labels=None if real is None else real.labels,
    )
    student = fpd.make_student()
    ema = EMA(student, train_config.ema_decay) if train_config.ema_decay > 0 else None
    res = fit(fpd, student, fpd.data(), train_config, out_dir, ema=ema, progress=progress)
    if ema is not None:
        ema.copy_to(student)
    return student.eval(), res.metrics


@torch.no_grad()
def sample_digits(
    teacher: ClassConditionalTeacher,
    tokenizer: nn.Module,
    labels: torch.Tensor,
    *,
    student: nn.Module | None = None,
    steps: int = 8,
    r_init: float = 0.95,
    mode: Literal["categorical", "argmax"] = "categorical",
    seed: int = 0,
    batch_size: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and token ids for ``labels``: the student (1 NFE, ``mode`` tokens) if given, else
    the ``steps``-step teacher with :data:`TEACHER_SAMPLING`."""
    g = torch.Generator().manual_seed(seed)
    ids = []
    for i in range(0, len(labels), batch_size):
        c = teacher.condition(labels[i : i + batch_size])
        if student is not None:
            ids.append(sample_student(teacher, student, c, r_init=r_init, mode=mode, generator=g))
        else:
            ids.append(teacher.sample(c, steps, generator=g, **TEACHER_SAMPLING))
    ids = torch.cat(ids)
    return tokenizer.decode(tokenizer.embed(ids)).clamp(-1, 1), ids
