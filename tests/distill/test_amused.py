"""Real-model adapters: diffusers aMUSEd (UVit2DModel + VQModel + AmusedScheduler) and DINOv2.

Tiny random-init configs of the exact classes, saved with save_pretrained and reloaded with
from_pretrained (the path a user takes with real local weights).
"""

from __future__ import annotations

import pytest
import torch
from _amused_tiny import save_tiny_amused  # conftest.py puts this folder on sys.path

from diffkit.distill import (
    FPD,
    Dinov2Backbone,
    FeatureLifter,
    FPDConfig,
    LifterConfig,
    sample_student,
)
from diffkit.train import TrainConfig, fit

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def amused_dir(tmp_path_factory):
    return save_tiny_amused(tmp_path_factory.mktemp("amused"))


def _load(root):
    from transformers import CLIPTextModelWithProjection

    from diffkit.distill.amused import AmusedTeacher, VQTokenizer, encode_prompts

    te = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder")
    ids = torch.randint(3, 100, (3, 6), generator=torch.Generator().manual_seed(0))
    hidden, pooled = encode_prompts(te, ids)
    null_h, null_p = encode_prompts(te, torch.tensor([[0, 2, 1, 1, 1, 1]]))
    teacher = AmusedTeacher.from_pretrained(
        root, prompt_hidden=hidden, prompt_pooled=pooled, null_hidden=null_h[0],
        null_pooled=null_p[0], grid=(8, 8),
    )  # fmt: skip
    return teacher, VQTokenizer.from_pretrained(root, grid=(8, 8))


def test_amused_adapter_shapes_and_sampling(amused_dir):
    teacher, tok = _load(amused_dir)
    assert teacher.codebook_size == tok.codebook_size == 8 and teacher.mask_id == 31
    cond = teacher.condition(torch.tensor([0, 1]))
    logits = teacher.logits(torch.full((2, 64), 31), cond)
    assert logits.shape == (2, 64, 8)
    ids = teacher.sample(cond, 3, generator=torch.Generator().manual_seed(0), guidance_scale=2.0)
    assert ids.shape == (2, 64) and (ids < 8).all()
    imgs = tok.decode(tok.embed(ids))
    assert imgs.shape == (2, 3, 8, 8)
    enc = tok.encode(imgs.clamp(-1, 1))
    assert enc.shape == (2, 64) and (enc < 8).all()


@pytest.mark.parametrize("space", ["pixel", "dinov2"])
def test_fpd_steps_end_to_end_on_amused(amused_dir, tmp_path, space):
    teacher, tok = _load(amused_dir)
    backbone, lcfg = None, LifterConfig(space="pixel")
    if space == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        Dinov2Model(
            Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, patch_size=4, image_size=8)
        ).save_pretrained(tmp_path / "dino")  # fmt: skip
        backbone = Dinov2Backbone(Dinov2Model.from_pretrained(tmp_path / "dino"), blocks=(0, 1))
        lcfg = LifterConfig(layers=(0, 1), grid=2)
    cfg = FPDConfig(samples_per_group=3, teacher_guidance=2.0, lifter=lcfg)
    fpd = FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=backbone)
    student = fpd.make_student()
    before = {k: v.clone() for k, v in student.named_parameters()}
    res = fit(
        fpd, student, fpd.data(30), TrainConfig(steps=2, batch_size=2, lr=1e-2), tmp_path / "run"
    )
    assert res.step == 2 and res.skipped_nonfinite == 0
    changed = [k for k, v in student.named_parameters() if not torch.equal(v, before[k])]
    assert len(changed) > 0.8 * len(before)
    ids = sample_student(teacher, student, teacher.condition(torch.tensor([0, 2])))
    assert ids.shape == (2, 64) and (ids < 8).all()


def test_dinov2_lifter_is_differentiable(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    Dinov2Model(
        Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                     intermediate_size=32, patch_size=4, image_size=16)
    ).save_pretrained(tmp_path)  # fmt: skip
    backbone = Dinov2Backbone(Dinov2Model.from_pretrained(tmp_path), blocks=(1, 3))
    lifter = FeatureLifter(backbone, LifterConfig(layers=(0, 1)))
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    feats = lifter(x)
    assert feats["map0_grid"].shape == (4, 16, 16) and feats["map1_mean"].shape == (4, 16)
    sum(f.sum() for f in feats.values()).backward()
    assert x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in lifter.parameters())


def test_adapters_reject_other_classes():
    from diffkit.distill.amused import AmusedTeacher, VQTokenizer

    with pytest.raises(ValueError, match="UVit2DModel"):
        AmusedTeacher(torch.nn.Linear(1, 1), None, prompt_hidden=torch.zeros(1, 1, 1),
                      prompt_pooled=torch.zeros(1, 1), null_hidden=torch.zeros(1, 1),
                      null_pooled=torch.zeros(1), grid=(1, 1))  # fmt: skip
    with pytest.raises(ValueError, match="VQModel"):
        VQTokenizer(torch.nn.Linear(1, 1), (1, 1))
    with pytest.raises(ValueError, match="Dinov2Model"):
        Dinov2Backbone(torch.nn.Linear(1, 1))
