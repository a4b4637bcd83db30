"""The FPD objective end to end on tiny random-init zoo architectures, plus bad input."""

from __future__ import annotations

import json

import pytest
import torch

from diffkit.core.io import load_tensors
from diffkit.core.objective import StepContext
from diffkit.distill import (
    FPD,
    ClassConditionalTeacher,
    FPDConfig,
    KDPool,
    LifterConfig,
    NaiveKD,
    check_compatible,
    sample_student,
    student_input,
)
from diffkit.models.digit_lifter import DigitLifter
from diffkit.models.maskgit import TinyMaskGIT
from diffkit.models.patch_tokenizer import PatchTokenizer
from diffkit.train import TrainConfig, fit, latest_checkpoint


@pytest.fixture
def parts():
    torch.manual_seed(0)
    tok = PatchTokenizer()
    tok.codebook.copy_(torch.rand(64, 4) * 2 - 1)
    teacher = ClassConditionalTeacher(TinyMaskGIT(dim=32, depth=1, heads=2))
    return tok, teacher, DigitLifter()


def _ctx(step=0, seed=0):
    return StepContext(
        step=step, generator=torch.Generator().manual_seed(seed), sample_seeds=torch.arange(4)
    )


def test_student_input_mask_fraction(generator):
    z = student_input(3, 64, 64, 64, 0.95, generator)
    assert ((z == 64).sum(1) == round(0.95 * 64)).all() and (z <= 64).all()


@pytest.mark.parametrize(
    "cfg",
    [
        FPDConfig(samples_per_group=4),
        FPDConfig(samples_per_group=4, ste="soft", refine_source="random"),
        FPDConfig(samples_per_group=3, bandwidths=(0.05,), lifter=LifterConfig(space="pixel")),
        FPDConfig(samples_per_group=4, queue_size=6, gan_weight=1.0, gan_reg="r1"),
        FPDConfig(samples_per_group=4, gan_weight=0.5, ste="gumbel"),
        FPDConfig(samples_per_group=4, ste="argmax", queue_size=4, exclude_own_refinement=False),
        FPDConfig(samples_per_group=4, ste="argmax", queue_size=4, drift_guidance=1.5),
        FPDConfig(samples_per_group=4, queue_size=4, lifter=LifterConfig(space="embedding")),
    ],
    ids=[
        "default",
        "soft-random",
        "pixel-single-tau",
        "queue-gan-r1",
        "gumbel-gan-sn",
        "argmax-own-refinement-kept",
        "argmax-drift-guidance",
        "embedding-space",
    ],  # fmt: skip
)
def test_fpd_step_updates_every_student_param(parts, cfg):
    tok, teacher, lifter = parts
    real = torch.rand(20, 1, 16, 16) * 2 - 1
    fpd = FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=lifter, real_images=real)
    student = fpd.make_student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    t_before = {k: v.clone() for k, v in teacher.net.state_dict().items()}
    opt = torch.optim.SGD(student.parameters(), lr=1.0)
    for step in range(2):
        out = fpd(student, fpd.data().get_batch(torch.tensor([0, 3])), _ctx(step))
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    for key in ("drift_norm/tau0.05", "refine_changed_frac", "token_entropy", "codebook_usage"):
        if key.startswith("drift") and 0.05 not in cfg.bandwidths:
            continue
        assert key in out.metrics
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert set(changed) == set(before), set(before) - set(changed)
    for k, v in teacher.net.state_dict().items():  # the teacher is frozen
        assert torch.equal(v, t_before[k])


def test_embedding_space_is_pixel_space_for_a_patch_tokenizer(parts):
    """PatchTokenizer decodes by un-patchify, so a flattened image is a permutation of the flattened
    codebook embeddings: every distance, hence the drift loss and its gradient, is the same in the
    two spaces (up to fp32 summation order). Real positives enter the embedding space through the
    tokenizer (encode -> embed), i.e. quantized, so there the two differ."""
    tok, teacher, _ = parts
    real, labels = torch.rand(12, 1, 16, 16) * 2 - 1, torch.arange(12) % 10

    def loss_and_grad(space, real_positives=0):
        cfg = FPDConfig(samples_per_group=4, ste="argmax", lifter=LifterConfig(space=space),
                        real_positives=real_positives)  # fmt: skip
        fpd = FPD(cfg, teacher=teacher, tokenizer=tok, real_images=real, real_labels=labels)
        torch.manual_seed(0)
        student = fpd.make_student()
        out = fpd(student, {"cond": torch.tensor([1, 2])}, _ctx(seed=3))
        out.loss.backward()
        return out.loss.detach(), torch.cat([p.grad.flatten() for p in student.parameters()])

    (l_pix, g_pix), (l_emb, g_emb) = loss_and_grad("pixel"), loss_and_grad("embedding")
    assert float(l_emb) == pytest.approx(float(l_pix), rel=1e-4)
    assert g_pix.abs().max() > 0
    torch.testing.assert_close(g_emb, g_pix, rtol=1e-3, atol=1e-4 * float(g_pix.abs().max()))
    l_pix_r, _ = loss_and_grad("pixel", real_positives=2)
    l_emb_r, _ = loss_and_grad("embedding", real_positives=2)
    assert torch.isfinite(l_emb_r) and float(l_emb_r) != pytest.approx(float(l_pix_r), rel=1e-4)


def test_embedding_lifter_needs_embeddings():
    from diffkit.distill import FeatureLifter

    lifter = FeatureLifter(None, LifterConfig(space="embedding"))
    emb = torch.randn(3, 64, 4)
    assert lifter(None, emb)["embedding"].shape == (3, 256)
    with pytest.raises(ValueError, match="pass emb"):
        lifter(torch.zeros(3, 1, 16, 16))
    with pytest.raises(ValueError, match="'embedding'"):
        LifterConfig(space="tokens")


def test_sample_mode_follows_routing():
    modes = {m: FPDConfig(ste=m).sample_mode for m in ("categorical", "gumbel", "argmax", "soft")}
    assert modes == {"categorical": "categorical", "gumbel": "categorical", "argmax": "argmax",
                     "soft": "argmax"}  # fmt: skip


def test_own_refinement_exclusion_changes_the_loss(parts):
    tok, teacher, lifter = parts
    losses = []
    for excl in (True, False):
        fpd = FPD(FPDConfig(samples_per_group=4, exclude_own_refinement=excl), teacher=teacher,
                  tokenizer=tok, lifter_backbone=lifter)  # fmt: skip
        torch.manual_seed(0)
        s = fpd.make_student()
        losses.append(float(fpd(s, {"cond": torch.tensor([1, 2])}, _ctx(seed=5)).loss))
    assert losses[0] != pytest.approx(losses[1], rel=1e-4)


def test_fpd_deterministic(parts):
    tok, teacher, lifter = parts
    fpd = FPD(
        FPDConfig(samples_per_group=4), teacher=teacher, tokenizer=tok, lifter_backbone=lifter
    )
    s = fpd.make_student()
    a = fpd(s, {"cond": torch.tensor([1, 2])}, _ctx(seed=5))
    b = fpd(s, {"cond": torch.tensor([1, 2])}, _ctx(seed=5))
    assert torch.equal(a.loss, b.loss)


def test_fit_with_fpd_and_resume(parts, tmp_path):
    """2 steps, stop, resume to 4 == 4 steps straight: weights, EMA and the positive queue (the
    objective's checkpointed state) continue bit-identically."""
    tok, teacher, lifter = parts
    cfg = FPDConfig(samples_per_group=2, queue_size=4)

    def run(steps, out):
        fpd = FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=lifter)
        torch.manual_seed(1)
        student = fpd.make_student()
        tc = TrainConfig(steps=steps, batch_size=2, lr=1e-3, log_every=1, ema_decay=0.9)
        return fpd, student, fit(fpd, student, fpd.data(100), tc, out)

    fpd_a, student_a, res_a = run(4, tmp_path / "straight")
    run(2, tmp_path / "resumed")
    fpd_b, student_b, res_b = run(4, tmp_path / "resumed")  # resumes from its step-2 checkpoint
    assert res_a.step == res_b.step == 4 and "drift_loss" in res_b.metrics
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]  # steps 3-4 ran after resuming
    for (k, a), b in zip(student_a.state_dict().items(), student_b.state_dict().values()):
        assert torch.equal(a, b), k
    ea = load_tensors(latest_checkpoint(tmp_path / "straight") / "ema.safetensors")
    eb = load_tensors(latest_checkpoint(tmp_path / "resumed") / "ema.safetensors")
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert torch.equal(fpd_a.queue.count, fpd_b.queue.count)
    assert int(fpd_b.queue.count.sum()) == 4 * 2 * 2  # 4 steps x 2 groups x 2 samples
    for k in fpd_a.queue.store:
        assert torch.equal(fpd_a.queue.store[k], fpd_b.queue.store[k]), k
    # and the resumed student still samples valid codes
    ids = sample_student(
        teacher, student_b, teacher.condition(torch.arange(4)),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert ids.shape == (4, 64) and (ids < 64).all()


def test_naive_kd(parts, tmp_path):
    _, teacher, _ = parts
    pool = KDPool(teacher, 2, steps=2, generator=torch.Generator().manual_seed(0))
    assert len(pool) == 20 and (pool.targets < 64).all()
    student = teacher.make_student()
    res = fit(NaiveKD(teacher), student, pool, TrainConfig(steps=2, batch_size=4), tmp_path)
    assert "token_acc" in res.metrics


def test_vocabulary_mismatch(parts):
    _, teacher, lifter = parts
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        FPD(FPDConfig(), teacher=teacher, tokenizer=PatchTokenizer(codebook_size=32),
            lifter_backbone=lifter)  # fmt: skip
    with pytest.raises(ValueError, match="grid mismatch"):
        check_compatible(teacher, PatchTokenizer(image_size=8))


def test_mask_id_colliding_with_code():
    net = TinyMaskGIT(dim=16, depth=1, heads=2)
    net.mask_id = 5
    with pytest.raises(ValueError, match="collides with a codebook entry"):
        ClassConditionalTeacher(net)


def test_unsupported_teacher_network():
    with pytest.raises(ValueError, match="AmusedTeacher"):
        ClassConditionalTeacher(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples_per_group": 1}, "samples_per_group=1"),
        ({"r_init": 1.5}, "r_init"),
        ({"remask_min": 0.6, "remask_max": 0.5}, "remask_min"),
        ({"ste": "hard"}, "ste="),
        ({"refine_source": "data"}, "refine_source"),
        ({"drift_guidance": 0.5}, "drift_guidance"),
        ({"bandwidths": (-1.0,)}, "bandwidths"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FPDConfig(**kwargs)


def test_gan_needs_real_images(parts):
    tok, teacher, lifter = parts
    with pytest.raises(ValueError, match="real_images"):
        FPD(FPDConfig(gan_weight=1.0), teacher=teacher, tokenizer=tok, lifter_backbone=lifter)


@pytest.mark.parametrize("reg", ["spectral", "r1"])
def test_conditional_gan_step_trains_the_class_embedding(parts, reg):
    """gan_conditional: the discriminator step trains the projection's class embedding (its
    parameter, not the spectral norm's power-iteration state, which any forward changes), each
    fake scored against a real image of its own condition."""
    tok, teacher, lifter = parts
    real = torch.rand(40, 1, 16, 16) * 2 - 1
    labels = torch.arange(10).repeat(4)
    cfg = FPDConfig(samples_per_group=4, gan_weight=1.0, gan_conditional=True, ste="argmax",
                    gan_reg=reg)  # fmt: skip
    fpd = FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=lifter, real_images=real,
              real_labels=labels)  # fmt: skip
    emb = fpd.disc.embed
    param = emb.parametrizations.weight.original if reg == "spectral" else emb.weight
    before = param.detach().clone()
    student = fpd.make_student()
    with torch.no_grad():  # a forward alone must not count as training the embedding
        fpd.disc(real[:2], torch.tensor([1, 7]))
    assert torch.equal(param, before)
    out = fpd(student, {"cond": torch.tensor([1, 7])}, _ctx())
    assert torch.isfinite(out.loss) and "gan/g_loss" in out.metrics
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    moved = (param.detach() != before).any(1)
    if reg == "r1":  # plain embedding: only the rows of the batch's conditions get a gradient
        assert moved.nonzero().flatten().tolist() == [1, 7]
    else:  # spectral norm couples the rows through sigma(W): the parameter moved
        assert moved.any()
    # the reals drawn for a batch share the fakes' conditions
    y = torch.tensor([1, 1, 7, 7, 3, 3, 3, 0])
    idx = fpd._real_of(y, torch.Generator().manual_seed(0))
    assert torch.equal(labels[idx], y)


def test_conditional_discriminator_depends_on_the_label():
    from diffkit.distill import Discriminator

    torch.manual_seed(0)
    d = Discriminator(num_classes=10, spectral=False)
    with torch.no_grad():
        d.embed.weight.normal_()
    x = torch.rand(3, 1, 16, 16)
    assert not torch.allclose(d(x, torch.tensor([0, 0, 0])), d(x, torch.tensor([5, 5, 5])))
    with pytest.raises(ValueError, match="labels"):
        d(x)


@pytest.mark.parametrize(
    "labels,match",
    [
        (None, "real_labels"),
        (torch.arange(20) % 10 + 5, r"must lie in \[0, 10\)"),
        (torch.zeros(20, dtype=torch.long), r"no image of condition"),
    ],
)
def test_conditional_gan_bad_labels(parts, labels, match):
    tok, teacher, lifter = parts
    real = torch.rand(20, 1, 16, 16)
    with pytest.raises(ValueError, match=match):
        FPD(FPDConfig(gan_weight=1.0, gan_conditional=True), teacher=teacher, tokenizer=tok,
            lifter_backbone=lifter, real_images=real, real_labels=labels)  # fmt: skip


def test_real_positives_join_the_drift_positives_of_their_condition(parts):
    """real_positives: each batch condition gets that many real images of its own class as extra
    drift positives (never its own refinement, so pos_source = -1), and they change the loss."""
    tok, teacher, lifter = parts
    real = torch.rand(40, 1, 16, 16) * 2 - 1
    labels = torch.arange(10).repeat(4)
    seen = {}
    losses = []
    for n_real in (0, 3):
        cfg = FPDConfig(samples_per_group=4, ste="argmax", real_positives=n_real, queue_size=4)
        fpd = FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=lifter, real_images=real,
                  real_labels=labels)  # fmt: skip
        drift = fpd.drift

        def spy(f_gen, pos, groups, drift=drift, **kw):
            seen.update(pos=pos, groups=groups, **kw)
            return drift(f_gen, pos, groups, **kw)

        fpd.drift = spy
        student = fpd.make_student()
        torch.manual_seed(0)
        losses.append(float(fpd(student, {"cond": torch.tensor([2, 5])}, _ctx()).loss))
    pg, src = seen["pos_groups"], seen["pos_source"]
    assert len(pg) == 8 + 6 and torch.equal(pg[8:], torch.tensor([2, 2, 2, 5, 5, 5]))
    assert (src[8:] == -1).all() and torch.equal(src[:8], torch.arange(8))
    assert all(f.shape[0] == 14 for f in seen["pos"].values())
    assert losses[0] != losses[1]
    # the reals drawn for a condition are images of that condition
    idx = fpd._real_of(torch.tensor([3, 3, 9]), torch.Generator().manual_seed(1))
    assert torch.equal(labels[idx], torch.tensor([3, 3, 9]))


def test_real_positives_need_labelled_real_images(parts):
    tok, teacher, lifter = parts
    cfg = FPDConfig(real_positives=2)
    with pytest.raises(ValueError, match="real_images"):
        FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=lifter)
    with pytest.raises(ValueError, match="real_labels"):
        FPD(cfg, teacher=teacher, tokenizer=tok, lifter_backbone=lifter,
            real_images=torch.rand(20, 1, 16, 16))  # fmt: skip
    with pytest.raises(ValueError, match="real_positives"):
        FPDConfig(real_positives=-1)
