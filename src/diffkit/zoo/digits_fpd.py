"""Zoo recipe: ``digits-fpd``, the one-step FPD student of ``digits-maskgit``.

Spec distill-fpd.md (g): student initialised from the teacher, input 95 % masked + random codes,
re-mask r ~ U[0.1, 0.5], one guided teacher step (CFG 2),
drift on ``digits-lifter`` features with bandwidths (0.02, 0.05, 0.2), grouped by class; EMA.
At this scale the drift estimate needs many samples per class: 4 classes x 24 samples per step
plus a per-class queue of 48 refined positives (with 10 x 8 and no queue the student degraded).
Drafts are argmax tokens (deterministic given z_init; the student samples the same way), and each
draft's own refinement is left out of its positives (docs/distill.md, "What we learned").
72 real train images per class join the drift positives (real_positives), which frees the
diversity that training-time CFG of the drift (alpha = 1.5) trades for class accuracy, with a
class-conditional projection discriminator (lambda = 1, spectral norm) on the train split.
Records the student's metrics on the evaluation network (500 samples vs the held-out split).

``digits-fpd-datafree`` (:mod:`diffkit.zoo.digits_fpd_datafree`) is the paper's data-free FPD:
the same recipe with no real image anywhere (:data:`DATA_FREE_CONFIG`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import torch

from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.distill import FPDConfig
from diffkit.distill.evaluate import evaluate_samples
from diffkit.distill.pipeline import distill_digits, load_digits_zoo, sample_digits
from diffkit.train import TrainConfig

log = logging.getLogger(__name__)

FPD_CONFIG = FPDConfig(
    samples_per_group=24, teacher_guidance=2.0, queue_size=48, ste="argmax", drift_guidance=1.5,
    gan_weight=1.0, gan_conditional=True, real_positives=72,
)  # fmt: skip
#: The paper's data-free FPD (arXiv 2605.21484 sec. 3): no discriminator, no real positives, no
#: training-time drift guidance; the student learns only from its teacher's refinements.
DATA_FREE_CONFIG = dataclasses.replace(
    FPD_CONFIG, gan_weight=0.0, real_positives=0, drift_guidance=1.0
)
TRAIN = TrainConfig(
    steps=1000, batch_size=4, lr=2e-4, warmup_steps=20, grad_clip=2.0, ema_decay=0.98,
    log_every=10, betas=(0.9, 0.95),
)  # fmt: skip


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    return train_student(FPD_CONFIG, "digits-fpd", out_dir, seed=seed, progress=progress)


def train_student(
    fpd_config: FPDConfig, name: str, out_dir: str | Path, *, seed: int = 0, progress: bool = False
) -> dict:
    """Distil a one-step student with ``fpd_config`` (the recipe's training settings) and save it
    with its metrics (500 samples, evaluation network, held-out split) to ``out_dir``."""
    torch.manual_seed(seed)
    zoo = load_digits_zoo()
    cfg = TrainConfig(**{**TRAIN.__dict__, "seed": seed})
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        student, last = distill_digits(fpd_config, cfg, tmp, zoo=zoo, progress=progress)
    train_s = time.perf_counter() - t0
    labels = torch.arange(10).repeat_interleave(50)
    mode = fpd_config.sample_mode
    images, ids = sample_digits(
        zoo.teacher, zoo.tokenizer, labels, student=student, seed=seed, mode=mode
    )
    metrics = {
        **evaluate_samples(images, labels, ids=ids, codebook_size=64),
        "train_seconds": train_s,
        "final_drift_loss": last.get("drift_loss"),
        "seed": seed,
        "steps": cfg.steps,
        "sample_mode": mode,
        "real_positives": fpd_config.real_positives,
        "gan_weight": fpd_config.gan_weight,
    }
    save_model_dir(out_dir, student.state_dict(), student.config)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    log.info("%s: %s", name, metrics)
    return metrics
