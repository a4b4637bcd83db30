"""The README / docs usage example runs (with 1 training step)."""

from __future__ import annotations

import pytest
import torch

from diffkit import models


def test_readme_example(tmp_path):
    for n in ("digits-patch-tokenizer", "digits-maskgit", "digits-lifter"):
        if not models.verify(n)[0]:
            pytest.skip(f"zoo weights missing: {n}")
    from diffkit import distill
    from diffkit.data.digits import load_digits
    from diffkit.train import TrainConfig, fit

    teacher = distill.ClassConditionalTeacher(models.load("digits-maskgit"))
    cfg = distill.FPDConfig(samples_per_group=24, queue_size=48, teacher_guidance=2.0,
                            ste="argmax", drift_guidance=1.5, gan_weight=1.0,
                            gan_conditional=True, real_positives=72)  # fmt: skip
    real = load_digits("train")
    fpd = distill.FPD(cfg, teacher=teacher, tokenizer=models.load("digits-patch-tokenizer"),
                      lifter_backbone=models.load("digits-lifter"),
                      real_images=real.images, real_labels=real.labels)  # fmt: skip
    student = fpd.make_student()
    fit(fpd, student, fpd.data(), TrainConfig(steps=1, batch_size=4, lr=2e-4), tmp_path)
    ids = distill.sample_student(
        teacher, student, teacher.condition(torch.arange(10)), mode=cfg.sample_mode
    )  # 1 NFE
    images = models.load("digits-patch-tokenizer").decode_ids(ids)
    assert images.shape == (10, 1, 16, 16)
