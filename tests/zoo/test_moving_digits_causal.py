"""Recipe of moving-digits-causal: the objective trains, the data scores as real, stages are kept."""

from __future__ import annotations

import torch

from diffkit.core.objective import StepContext
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import causal_wan as cw
from diffkit.zoo.moving_digits_causal import TeacherForcingFlow


def test_teacher_forcing_objective_trains_every_parameter():
    cfg = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 1}
    torch.manual_seed(0)
    model = cw.build(cfg)
    data = make_moving_digits(2, MovingDigitsConfig(max_digits=1), seed=0)
    ctx = StepContext(
        step=0, generator=torch.Generator().manual_seed(0), sample_seeds=torch.arange(2)
    )
    out = TeacherForcingFlow(cfg)(model, data.get_batch(torch.arange(2)), ctx)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_label_dropout_trains_the_null_condition():
    """label_dropout=1 drops every label: the loss is the one of an all-absent batch."""
    from diffkit.zoo.moving_digits_causal import video_config

    cfg = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 1}
    torch.manual_seed(0)
    model = cw.build(cfg)
    batch = make_moving_digits(2, video_config(), seed=0).get_batch(torch.arange(2))

    def loss(obj, b):
        ctx = StepContext(
            step=0, generator=torch.Generator().manual_seed(0), sample_seeds=torch.arange(2)
        )
        return obj(model, b, ctx).loss

    null = {"x": batch["x"], "y": torch.full_like(batch["y"], -1)}
    dropped = loss(TeacherForcingFlow(cfg, label_dropout=1.0), batch)
    assert torch.equal(dropped, loss(TeacherForcingFlow(cfg), null))
    assert not torch.equal(dropped, loss(TeacherForcingFlow(cfg), batch))


def test_recipe_data_scores_as_real_with_its_crops():
    """The recipe's own real videos (24 px digits) pass its evaluation."""
    from diffkit import models
    from diffkit.models import moving_digits_wan as mdw
    from diffkit.zoo.moving_digits_causal import DATA, video_config

    clf = models.load("digit-classifier")
    fake = make_moving_digits(40, video_config("test"), seed=5)
    real = make_moving_digits(40, video_config("test"), seed=6).videos
    m = mdw.evaluate(fake.videos, fake.labels[:, 0], real, clf, digit_size=DATA["digit_size"])
    assert m["frame_accuracy"] >= 0.95 and m["videos_consistent_95"] >= 0.9
    assert m["displacement"] > 1  # the digits move


def test_evaluate_samples_scores_guided_rollouts():
    from diffkit.zoo.moving_digits_causal import evaluate_samples

    cfg = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 1}
    torch.manual_seed(0)
    model = cw.build(cfg).eval()
    out = evaluate_samples(model, per_class=1, steps=2, cfg_scale=2.0)
    assert out["videos"] == 10 and out["frames"] == 10 * cfg["num_frames"]
    assert out["steps"] == 2 and out["cfg_scale"] == 2.0
    assert 0 <= out["frame_accuracy"] <= 1 and out["fid_real_floor"] > 0
    again = evaluate_samples(model, per_class=1, steps=2, cfg_scale=2.0)
    assert again["frame_accuracy"] == out["frame_accuracy"]  # seeded: same videos


def test_a_one_chunk_clip_runs_only_the_noisy_copy():
    """A first chunk sees no clean frame, so the short path equals the teacher-forcing one."""
    cfg = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 1}
    torch.manual_seed(0)
    model = cw.build(cfg).eval()
    clip = make_moving_digits(3, MovingDigitsConfig(num_frames=3, max_digits=1), seed=0)
    batch = clip.get_batch(torch.arange(3))
    ctx = StepContext(
        step=0, generator=torch.Generator().manual_seed(0), sample_seeds=torch.arange(3)
    )
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append((args, out)))
    assert torch.isfinite(TeacherForcingFlow(cfg)(model, batch, ctx).loss)
    assert len(calls) == 1
    (noisy, t, labels), v = calls[0]
    assert noisy.shape[1] == 3 and t.shape == (3, 3)  # the noisy frames only
    clean = cw.encode_video(batch["x"], cfg)
    seq, idx, mask = cw.teacher_forcing_inputs(model, clean, noisy)
    full = model(seq, torch.cat([torch.zeros(3, 3), t], 1), labels, frame_index=idx, mask=mask)
    torch.testing.assert_close(full[:, 3:], v, atol=1e-5, rtol=1e-5)


def test_recipe_rerun_reuses_finished_stages(tmp_path):
    from diffkit.zoo import moving_digits_causal as z

    tiny = {
        "train_chunks": 8,
        "chunk_steps": 2,
        "chunk_batch": 4,
        "train_videos": 4,
        "video_steps": 1,
        "video_batch": 2,
        "warmup_steps": 1,
        "eval_per_class": 1,
    }
    work = tmp_path / "work"
    a = z.train(tmp_path / "a", settings=tiny, work_dir=work)
    assert sorted(p.name.split("-")[0] for p in work.iterdir()) == ["chunk", "video"]
    assert a["videos"] == 10 and a["training_dtype"] in ("float32", "bfloat16")
    b = z.train(tmp_path / "b", settings=tiny, work_dir=work)
    assert b["final_loss"] is None  # nothing was trained again
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (
        tmp_path / "b" / "model.safetensors"
    ).read_bytes()
    reloaded = cw.load_dir(tmp_path / "b")
    assert reloaded.config["cfg_scale"] == z.MODEL["cfg_scale"] and reloaded.tokens_per_frame == 64
