"""The README's FPD example (data-free) and the zoo recipe's variant with real images run (with 1
training step), and what they return is right."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from diffkit import models


@pytest.mark.parametrize("variant", ["data-free", "recipe"])
def test_readme_example(tmp_path, variant):
    for n in ("digits-patch-tokenizer", "digits-maskgit", "digits-lifter"):
        ok, msg = models.verify(n)  # shipped, hash-checked: missing is a failure, not a skip
        assert ok, f"shipped zoo weights of {n} fail their hash check: {msg}"
    from diffkit import distill
    from diffkit.data.digits import load_digits
    from diffkit.train import TrainConfig, fit

    teacher = distill.ClassConditionalTeacher(models.load("digits-maskgit"))
    cfg = distill.FPDConfig(samples_per_group=24, queue_size=48, teacher_guidance=2.0,
                            ste="argmax")  # fmt: skip
    real = {}
    if variant == "recipe":  # uses real images: no longer data-free
        cfg = dataclasses.replace(cfg, drift_guidance=1.5, gan_weight=1.0, gan_conditional=True,
                                  real_positives=72)  # fmt: skip
        train = load_digits("train")
        real = {"real_images": train.images, "real_labels": train.labels}
    fpd = distill.FPD(cfg, teacher=teacher, tokenizer=models.load("digits-patch-tokenizer"),
                      lifter_backbone=models.load("digits-lifter"), **real)  # fmt: skip
    student = fpd.make_student()
    before = {k: v.clone() for k, v in student.named_parameters()}
    res = fit(fpd, student, fpd.data(), TrainConfig(steps=1, batch_size=4, lr=2e-4), tmp_path)
    ids = distill.sample_student(
        teacher, student, teacher.condition(torch.arange(10)), mode=cfg.sample_mode,
        generator=torch.Generator().manual_seed(0),
    )  # 1 NFE  # fmt: skip
    tok = models.load("digits-patch-tokenizer")
    images = tok.decode_ids(ids)
    # the step trained: a finite loss, no skipped step, the student moved away from its teacher
    assert res.step == 1 and res.skipped_nonfinite == 0 and math.isfinite(res.metrics["loss"])
    moved = [k for k, v in student.named_parameters() if not torch.equal(v, before[k])]
    assert len(moved) > 0.8 * len(before)
    # argmax mode (the recipe's ste) reads the student's most likely code at every position
    assert cfg.sample_mode == "argmax" and ids.shape == (10, 64)
    z = distill.student_input(10, 64, 64, teacher.mask_id, cfg.r_init,
                              torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        expect = teacher.forward_logits(student, z, teacher.condition(torch.arange(10))).argmax(-1)
    assert torch.equal(ids, expect)
    # the images show the digits asked for: the evaluation network (never trained on) reads
    # most of them as their class (one step from the teacher's init: ~0.97 per sample, so 7 of
    # 10 fails only for a broken example, P < 1e-3)
    assert images.shape == (10, 1, 16, 16)
    _, pred = models.load("digit-classifier").embed(images.clamp(-1, 1))
    assert int((pred == torch.arange(10)).sum()) >= 7, pred.tolist()
