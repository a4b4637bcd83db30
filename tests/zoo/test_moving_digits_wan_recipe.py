"""The moving-digits-wan recipe's stage checkpoints: a rerun reuses them, a changed setting does not."""

from __future__ import annotations

from diffkit.zoo import moving_digits_wan as z

TINY = {
    "train_images": 16,
    "image_steps": 2,
    "image_batch": 4,
    "train_videos": 4,
    "video_steps": 1,
    "video_batch": 2,
    "warmup_steps": 1,
    "eval_per_class": 1,
    "eval_steps": 1,
}


def test_rerun_reuses_finished_stages_and_gives_the_same_model(tmp_path):
    work = tmp_path / "work"
    a = z.train(tmp_path / "a", settings=TINY, work_dir=work)
    kept = sorted(p.name for p in work.iterdir())
    assert [n.split("-")[0] for n in kept] == ["image", "video"]
    b = z.train(tmp_path / "b", settings=TINY, work_dir=work)
    assert b["final_loss"] is None  # nothing was trained again
    assert b["image_stage_seconds"] == a["image_stage_seconds"]
    wa = (tmp_path / "a" / "diffusion_pytorch_model.safetensors").read_bytes()
    wb = (tmp_path / "b" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert wa == wb
    # a changed setting trains anew: every stage is keyed on all settings, so both are new
    c = z.train(tmp_path / "c", settings={**TINY, "video_lr": 1e-4}, work_dir=work)
    assert c["final_loss"] is not None
    assert len(list(work.iterdir())) == 4
