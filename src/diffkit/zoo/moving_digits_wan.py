"""Zoo recipe: train ``moving-digits-wan`` (tiny diffusers Wan2.1) by rectified flow on moving digits.

Two stages through :func:`diffkit.train.fit` with one fp32 EMA (the shipped weights):

1. **images**: single frames (``num_frames=1`` videos of the same generator), large batches; cheap
   on 64-token frames.
2. **videos**: the full 16-frame clips (1,024 tokens), which teach motion and a constant digit.

Every video starts with its digit in the centre of the canvas (``start="centre"``) and leaves it
with its random velocity. With uniformly random starts the average training image of a class is a
position-blurred blob, so at high noise the label says almost nothing and the class is learned late
(pilots, class accuracy of guided single-frame samples after 600 steps: 0.47 with centred 24-px
digits, 0.10 with randomly placed 16-px ones; randomly placed 24-px digits had reached 0.35 after
750 steps; centred, the full image stage reaches 0.995). The first frame fixes the class and the
rest of the clip moves it.

Noise levels are drawn with the flow-matching shift 3 (``sigma' = 3 s / (1 + 2 s)``): more training
at high noise, where only the label tells the classes apart (a pilot on frames: class accuracy of
samples 0.35 after 750 steps with shift 3 vs 0.15 after 1,000 with shift 1). Class-conditional with
10 % label dropout for classifier-free guidance. Training runs in the machine's fast dtype
(:func:`diffkit.core.machine.fast_dtype`: bf16 autocast on AMX CPUs and GPUs, fp32 on AVX2).
``metrics.json`` records the time, the machine and the sample quality on 20 videos per class.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.core.ema import EMA
from diffkit.core.io import atomic_dir, atomic_write_json
from diffkit.core.machine import fast_dtype, machine_info
from diffkit.core.objective import LossOutput
from diffkit.core.schedules import FlowMatching
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import moving_digits_wan as mdw
from diffkit.zoo._stages import moving_digit_stages, run_stages

log = logging.getLogger(__name__)

SETTINGS = {
    "train_images": 8000,
    "image_steps": 2400,
    "image_batch": 64,
    "image_lr": 1e-3,
    "train_videos": 4000,
    "video_steps": 1300,
    "video_batch": 8,
    "video_lr": 5e-4,
    "warmup_steps": 50,
    "ema_decay": 0.995,
    "label_dropout": 0.1,
    "shift": mdw.SHIFT,
    "eval_per_class": 20,
    "eval_steps": 20,
    "cfg_scale": mdw.CFG_SCALE,
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


def video_config(split: str = "train", num_frames: int | None = None) -> MovingDigitsConfig:
    v = mdw.VIDEO
    return MovingDigitsConfig(
        num_frames=num_frames or v["num_frames"],
        size=v["size"],
        digit_size=v["digit_size"],
        max_digits=v["max_digits"],
        min_speed=v["min_speed"],
        max_speed=v["max_speed"],
        grid=v.get("grid", 1),
        start=v.get("start", "random"),
        split=split,
    )


def train(
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = False,
    settings: dict | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Train from scratch in two stages, evaluate samples with the evaluation network, save.

    ``settings`` overrides entries of :data:`SETTINGS`. With ``work_dir`` each finished stage
    leaves the model and its EMA there, under a key of the settings, seed and stage, and a rerun
    skips the stages already done (a changed setting trains anew).
    """
    s = {**SETTINGS, **(settings or {})}
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    fast = fast_dtype(torch.device("cpu"))
    precision = "bf16" if fast == torch.bfloat16 else "no"
    model = mdw.build(mdw.DEFAULT_CONFIG)
    ema = EMA(model, s["ema_decay"])
    objective = FlowObjective(FlowMatching(shift=s["shift"]), s["label_dropout"])
    key = {"settings": s, "seed": seed, "config": mdw.DEFAULT_CONFIG, "video": mdw.VIDEO}
    plan = (("image", "train_images", 1), ("video", "train_videos", None))
    stages = moving_digit_stages(s, plan, video_config, seed, precision, betas=(0.9, 0.99))
    seconds, res = run_stages(
        stages, objective=objective, model=model, ema=ema, key=key, work_dir=work_dir,
        progress=progress, name="moving-digits-wan",
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    ema.copy_to(model)
    model.eval()
    metrics = evaluate(
        model,
        seed=seed,
        per_class=s["eval_per_class"],
        steps=s["eval_steps"],
        cfg_scale=s["cfg_scale"],
        dtype=fast,
    )
    metrics.update(
        final_loss=res.metrics.get("loss") if res is not None else None,
        train_seconds=round(train_s, 1),
        recipe_seconds=round(time.perf_counter() - t0, 1),
        training_dtype=str(fast).replace("torch.", ""),
        machine=machine_info(),
        **seconds,
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
def score_samples(
    draw,
    video_config_of,
    *,
    per_class: int,
    seed: int,
    batch_size: int,
    digit_size: int | None = None,
) -> dict:
    """Sample ``per_class`` videos of each digit and score them against held-out real videos.

    ``draw(labels, generator)`` returns (b, F, 1, S, S) videos in [-1, 1]; it is called on batches
    of ``batch_size`` labels with one generator seeded ``seed + 1``. ``video_config_of(split)``
    gives the real data's settings. The FID reference is as many real videos of the test split;
    the floor is as many real training-split videos against the same reference (what a generator
    that reproduced its training data would score). See
    :func:`diffkit.models.moving_digits_wan.evaluate`. Shared by the video zoo's recipes.
    """
    n = 10 * per_class
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(seed + 1)
    vids = torch.cat([draw(labels[i : i + batch_size], g) for i in range(0, n, batch_size)])
    real = make_moving_digits(n, video_config_of("test"), seed=seed + 2).videos
    floor = make_moving_digits(n, video_config_of("train"), seed=seed + 3).videos
    clf = models.load("digit-classifier")
    return mdw.evaluate(vids, labels, real, clf, floor_real=floor, digit_size=digit_size)


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
    """Sample ``per_class`` videos of each digit (Euler, ``steps``, CFG) and score them
    (:func:`score_samples`)."""

    def draw(labels, g):
        return mdw.sample(model, labels, steps=steps, cfg_scale=cfg_scale, generator=g, dtype=dtype)

    out = score_samples(draw, video_config, per_class=per_class, seed=seed, batch_size=batch_size)
    out.update(eval_steps=steps, cfg_scale=cfg_scale)
    return out
