"""Zoo recipe: train ``moving-digits-wan`` (tiny diffusers Wan2.1) by rectified flow on moving digits.

One bouncing digit per video, 8 frames of 32x32 pixels (2,048 tokens after the (1, 2, 2) patch),
class-conditional through a one-hot "text" token with 10 % label dropout (for guidance). Uses
:func:`diffkit.train.fit` with :class:`diffkit.core.schedules.FlowMatching`. The model need not be a
good generator: it is the toy video DiT on which RoPeSLR is applied and measured; its sample
quality is recorded honestly in ``metrics.json``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.core.io import atomic_dir, atomic_write_json
from diffkit.core.objective import LossOutput
from diffkit.core.schedules import FlowMatching
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import moving_digits_wan as mdw
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)

SETTINGS = {
    "train_videos": 2000,
    "steps": 450,
    "batch_size": 4,
    "lr": 2e-3,
    "warmup_steps": 30,
    "label_dropout": 0.1,
    "shift": 2.0,
    "eval_per_class": 20,
    "eval_steps": 20,
    "cfg_scale": 2.0,
}


class FlowObjective:
    """Rectified-flow MSE on velocity, class-conditional with label dropout."""

    def __init__(self, schedule: FlowMatching, label_dropout: float) -> None:
        self.schedule, self.label_dropout = schedule, label_dropout

    def __call__(self, model, batch, ctx) -> LossOutput:
        x0 = mdw.to_model(batch["x"])
        b = x0.shape[0]
        noise = ctx.randn(*x0.shape[1:])
        t = self.schedule.shift_sigma(ctx.rand(salt=1).flatten())
        drop = ctx.rand(salt=2).flatten() < self.label_dropout
        labels = torch.where(drop, torch.full((b,), mdw.NULL_CLASS), batch["y"][:, 0])
        xt = self.schedule.add_noise(x0, noise, t)
        cond = mdw.condition(labels, model.config.text_dim)
        pred = model(xt, self.schedule.model_t(t), cond, return_dict=False)[0]
        loss = (pred - self.schedule.target(x0, noise, t)).pow(2).mean()
        return LossOutput(loss)


def video_config(split: str = "train") -> MovingDigitsConfig:
    v = mdw.VIDEO
    return MovingDigitsConfig(
        num_frames=v["num_frames"],
        size=v["size"],
        digit_size=v["digit_size"],
        max_digits=v["max_digits"],
        min_speed=v["min_speed"],
        max_speed=v["max_speed"],
        split=split,
    )


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    """Train from scratch, evaluate samples with the evaluation network, save atomically."""
    s = SETTINGS
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    data = make_moving_digits(s["train_videos"], video_config("train"), seed=seed)
    model = mdw.build(mdw.DEFAULT_CONFIG)
    schedule = FlowMatching(shift=s["shift"])
    cfg = TrainConfig(
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        warmup_steps=s["warmup_steps"],
        lr_schedule="cosine",
        seed=seed,
        log_every=25,
        resume=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(
            FlowObjective(schedule, s["label_dropout"]), model, data, cfg, tmp, progress=progress
        )
    train_s = time.perf_counter() - t0
    model.eval()
    metrics = evaluate(
        model,
        seed=seed,
        per_class=s["eval_per_class"],
        steps=s["eval_steps"],
        cfg_scale=s["cfg_scale"],
    )
    metrics.update(
        final_loss=res.metrics.get("loss"),
        train_seconds=round(train_s, 1),
        params=sum(p.numel() for p in model.parameters()),
        tokens_per_video=tokens_per_video(mdw.DEFAULT_CONFIG),
        seed=seed,
        settings=s,
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        atomic_write_json(Path(tmp) / "metrics.json", metrics)
    log.info("moving-digits-wan: %s", metrics)
    return metrics


def tokens_per_video(config: dict) -> int:
    """Tokens of one video after the transformer's patch embedding."""
    p, v = config["patch_size"], mdw.VIDEO
    return (v["num_frames"] // p[0]) * (v["size"] // p[1]) * (v["size"] // p[2])


@torch.no_grad()
def evaluate(
    model,
    *,
    seed: int = 0,
    per_class: int = 20,
    steps: int = 20,
    cfg_scale: float = mdw.CFG_SCALE,
    dtype: torch.dtype | None = None,
    batch_size: int = 20,
) -> dict:
    """Sample ``per_class`` videos of each digit and score them against held-out real videos.

    The FID reference is as many real videos of the test split; the floor is as many real
    training-split videos against the same reference (what a generator that reproduced its
    training data would score). See :func:`diffkit.models.moving_digits_wan.evaluate`.
    """
    n = 10 * per_class
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(seed + 1)
    vids = torch.cat(
        [
            mdw.sample(
                model,
                labels[i : i + batch_size],
                steps=steps,
                cfg_scale=cfg_scale,
                generator=g,
                dtype=dtype,
            )
            for i in range(0, n, batch_size)
        ]
    )
    real = make_moving_digits(n, video_config("test"), seed=seed + 2).videos
    floor = make_moving_digits(n, video_config("train"), seed=seed + 3).videos
    out = mdw.evaluate(vids, labels, real, models.load("digit-classifier"), floor_real=floor)
    out.update(eval_steps=steps, cfg_scale=cfg_scale)
    return out
