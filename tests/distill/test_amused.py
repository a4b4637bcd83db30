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


@pytest.mark.parametrize("space", ["pixel", "embedding", "dinov2"])
def test_fpd_steps_end_to_end_on_amused(amused_dir, tmp_path, space):
    teacher, tok = _load(amused_dir)
    backbone, lcfg = None, LifterConfig(space="embedding" if space == "embedding" else "pixel")
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
                      null_pooled=torch.zeros(1), vae_scale_factor=1)  # fmt: skip
    with pytest.raises(ValueError, match="VQModel"):
        VQTokenizer(torch.nn.Linear(1, 1), (1, 1))
    with pytest.raises(ValueError, match="Dinov2Model"):
        Dinov2Backbone(torch.nn.Linear(1, 1))


def _uvit(sample_size):
    from diffusers import UVit2DModel

    torch.manual_seed(0)
    return UVit2DModel(
        hidden_size=8, use_bias=False, cond_embed_dim=8, micro_cond_encode_dim=2,
        micro_cond_embed_dim=10, encoder_hidden_size=8, vocab_size=32, codebook_size=8,
        in_channels=8, block_out_channels=8, num_res_blocks=1, downsample=True, upsample=True,
        block_num_heads=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
        sample_size=sample_size,
    )  # fmt: skip


def test_grid_and_micro_conditions_come_from_the_config(amused_dir):
    """The grid is config.sample_size and width/height = grid x the VQ scale factor, as
    AmusedPipeline computes them (amused-512: 32 tokens x 16 = 512, not a fixed 256)."""
    from diffusers import AmusedScheduler

    from diffkit.distill.amused import AmusedTeacher, vae_scale_factor

    assert vae_scale_factor({"block_out_channels": [128, 128, 256, 512, 768]}) == 16
    emb = {"prompt_hidden": torch.zeros(1, 4, 8), "prompt_pooled": torch.zeros(1, 8),
           "null_hidden": torch.zeros(4, 8), "null_pooled": torch.zeros(8)}  # fmt: skip
    sch = AmusedScheduler(mask_token_id=31)
    t512 = AmusedTeacher(_uvit(32), sch, vae_scale_factor=16, aesthetic_score=5.5, **emb)
    assert t512.grid == (32, 32) and t512.num_tokens == 1024
    assert t512.micro_conds.tolist() == [512.0, 512.0, 0.0, 0.0, 5.5]
    assert AmusedTeacher(_uvit(16), sch, vae_scale_factor=16, **emb).micro_conds.tolist()[:2] == [
        256.0, 256.0,
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"grid mismatch.*sample_size=32"):
        AmusedTeacher(_uvit(32), sch, vae_scale_factor=16, grid=(16, 16), **emb)
    teacher, _ = _load(amused_dir)  # the tiny folder: 8x8 tokens, VQ scale 1
    assert teacher.micro_conds.tolist() == [8.0, 8.0, 0.0, 0.0, 6.0]
    # the micro-conditions reach the network
    z, cond = torch.full((1, 64), 31), teacher.condition(torch.tensor([0]))
    before = teacher.logits(z, cond)
    teacher.micro_conds[4] = 2.0
    assert not torch.allclose(before, teacher.logits(z, cond))


def test_prompts_from_a_list_a_text_file_or_jsonl(tmp_path):
    from diffkit.distill.amused_run import load_prompts

    assert load_prompts(["a cat", "a dog"]) == ["a cat", "a dog"]
    txt = tmp_path / "prompts.txt"
    txt.write_text("a cat\n\n  a red apple  \n")
    assert load_prompts(str(txt)) == ["a cat", "a red apple"]  # not 11 one-character prompts
    jl = tmp_path / "prompts.jsonl"
    jl.write_text('{"prompt": "a cat", "id": 3}\n"a dog"\n')
    assert load_prompts(str(jl)) == ["a cat", "a dog"]
    jl.write_text('{"caption": "a cat"}\n')
    with pytest.raises(ValueError, match=r"prompts.jsonl:1"):
        load_prompts(str(jl))
    with pytest.raises(ValueError, match="is not a file"):
        load_prompts("prompts-missing.txt")


@pytest.mark.parametrize("mode", ["argmax", "categorical"])
def test_one_step_pipeline_matches_the_fpd_sampler(tmp_path, mode):
    """AmusedOneStepPipeline (the diffusers way to use a saved student) draws the same start
    state and tokens as FPD's sample_student on the training adapter, and decodes them as the
    VQTokenizer does."""
    from diffkit.distill.amused_pipeline import AmusedOneStepPipeline
    from diffkit.distill.amused_run import AmusedRunConfig, load_amused, save_student

    root = save_tiny_amused(tmp_path / "amused", text_vocab=64, eos_token_id=1, tokenizer=True)
    prompts = ["a cat", "a red dog"]
    teacher, tok, _ = load_amused(root, AmusedRunConfig(prompts=tuple(prompts), max_length=8))
    student = teacher.make_student().eval()
    with torch.no_grad():  # a student that differs from its teacher
        for p in student.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    out = save_student(root, student, tmp_path / "student", r_init=0.9, sample_mode=mode,
                       max_length=8)  # fmt: skip
    pipe = AmusedOneStepPipeline.from_pretrained(out)
    assert pipe.config.r_init == 0.9 and pipe.config.sample_mode == mode
    ids = pipe(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(4),
               output_type="latent").images  # fmt: skip
    cond = teacher.condition(torch.tensor([0, 0, 0, 1, 1, 1]))
    ref = sample_student(teacher, student, cond, r_init=0.9, mode=mode,
                         generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert torch.equal(ids.view(6, -1), ref)
    imgs = pipe(prompts, num_images_per_prompt=3, generator=torch.Generator().manual_seed(4),
                output_type="pt").images  # fmt: skip
    # the same decoder on the same codes, only laid out differently in memory: fp32 rounding
    torch.testing.assert_close(imgs, tok.decode(tok.embed(ref)).clip(0, 1), rtol=0, atol=1e-4)


def test_bf16_mixed_precision_through_accelerate(tmp_path):
    """amused.mixed_precision: bf16 runs the student's forward under accelerate's autocast while
    the trained weights, their gradients and the drift loss stay fp32; the run completes."""
    from diffkit.core.objective import StepContext
    from diffkit.distill.amused_run import (
        AmusedRunConfig,
        _Autocast,
        distill_amused,
        load_amused,
        make_accelerator,
    )

    root = save_tiny_amused(tmp_path / "amused", text_vocab=64, eos_token_id=1, tokenizer=True)
    run = AmusedRunConfig(
        prompts=("a cat", "a dog"), max_length=8, mixed_precision="bf16", cpu=True
    )
    teacher, tok, _ = load_amused(root, run)
    acc = make_accelerator(run)
    assert acc.mixed_precision == "bf16" and acc.device.type == "cpu"
    cfg = FPDConfig(samples_per_group=2, teacher_guidance=2.0, lifter=LifterConfig(space="pixel"))
    fpd = FPD(cfg, teacher=teacher, tokenizer=tok)
    student = fpd.make_student()
    seen = []
    student.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    ctx = StepContext(step=0, generator=torch.Generator().manual_seed(0),
                      sample_seeds=torch.arange(4))  # fmt: skip
    out = _Autocast(fpd, acc)(student, {"cond": torch.tensor([0, 1])}, ctx)
    assert seen == [torch.bfloat16]
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert any(p.grad is not None and p.grad.dtype == torch.float32 for p in student.parameters())
    # end to end through the runner
    opts = {"prompts": ["a cat", "a dog"], "max_length": 8, "mixed_precision": "bf16", "cpu": True}
    path = distill_amused(root, opts, cfg, TrainConfig(steps=1, batch_size=2, lr=1e-3),
                          tmp_path / "out", progress=False)  # fmt: skip
    assert (path / "transformer" / "config.json").is_file()
    with pytest.raises(ValueError, match="fp16"):
        AmusedRunConfig(prompts=("a",), mixed_precision="fp16")
