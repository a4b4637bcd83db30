"""Zoo recipe: ``moving-digits-causal``, the tiny Self-Forcing-style causal video model.

Teacher-forcing flow matching (spec quantize-qarvd.md (b)): the sequence is [clean frames; noisy
frames] with the teacher-forcing mask (:func:`~diffkit.models.causal_wan.teacher_forcing_inputs`),
each chunk of the noisy copy gets its own noise level (75 %: one of the sampler's warped levels,
25 %: uniform), and the loss is the velocity MSE on the noisy frames.

Two stages through :func:`diffkit.train.fit` with one fp32 EMA (the shipped weights), as for
``moving-digits-wan``:

1. **first chunks**: clips of one chunk (3 frames), which have no clean context, so only the noisy
   copy runs; large batches, cheap. This stage learns what each digit looks like.
2. **videos**: the full clips with the teacher-forcing sequence, which teach the later chunks to
   continue the digit and its motion from the cached frames.

Data: bundled one-digit moving digits (9 frames = 3 chunks, 32x32, 24 px digits as in
``moving-digits-wan``) through the fixed orthogonal "VAE" (2x2 pixel patches -> 4 channels, so a
frame is 4x16x16 latents and 64 tokens). Every digit starts in the centre of the canvas
(``start="centre"``) and leaves it with its random velocity: the first chunk then shows the class's
digit in one place, so the label is learned early instead of being averaged away over positions
(random starts left samples at chance). 10 % of the labels are dropped (both slots absent) for
classifier-free guidance, applied at sampling with the model's ``config["cfg_scale"]``. Training
runs in the machine's fast dtype (:func:`diffkit.core.machine.fast_dtype`: bf16 autocast on AMX and
AVX-512-bf16 CPUs and GPUs, fp32 on AVX2). ``metrics.json`` records the time, the machine and the
quality of 20 sampled videos per class scored by the evaluation network.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from diffkit.core.ema import EMA
from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.core.machine import fast_dtype, machine_info
from diffkit.core.objective import LossOutput
from diffkit.core.schedules import FlowMatching
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import causal_wan as cw
from diffkit.zoo._stages import moving_digit_stages, run_stages
from diffkit.zoo.moving_digits_wan import score_samples

log = logging.getLogger(__name__)

#: Architecture of the shipped model (over :data:`diffkit.models.causal_wan.DEFAULT_CONFIG`).
MODEL = {
    "dim": 128,
    "heads": 4,
    "ffn_dim": 512,
    "layers": 4,
    "in_channels": 4,
    "vae_patch": 2,
    "latent_size": 16,
    "num_frames": 9,
    "cfg_scale": 3.0,
    "sample_steps": 4,
    "digit_size": 24,  # the data's sprite size: evaluation crops (diffkit.quantize.targets)
}
DATA = {
    "max_digits": 1,
    "size": 32,
    "digit_size": MODEL["digit_size"],
    "min_speed": 1.0,
    "max_speed": 3.0,
    "start": "centre",
}
SETTINGS = {
    "train_chunks": 8000,
    "chunk_steps": 2400,
    "chunk_batch": 24,
    "chunk_lr": 1e-3,
    "train_videos": 4000,
    "video_steps": 1100,
    "video_batch": 8,
    "video_lr": 5e-4,
    "warmup_steps": 50,
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "ema_decay": 0.995,
    "label_dropout": 0.1,
    "eval_per_class": 20,
}


class TeacherForcingFlow:
    """Objective ``(model, batch, ctx) -> LossOutput`` for the causal model."""

    def __init__(self, config: dict, p_levels: float = 0.75, label_dropout: float = 0.0) -> None:
        self.config = config
        self.p_levels = p_levels
        self.label_dropout = label_dropout
        shift = config.get("shift", cw.SHIFT)
        self.levels = cw.sampler_sigmas(config).float()
        self.schedule = FlowMatching(shift=shift)

    def __call__(self, model, batch, ctx) -> LossOutput:
        c = self.config
        clean = cw.encode_video(batch["x"], c)
        B, Fr = clean.shape[:2]
        n_chunks = Fr // c["chunk_frames"]
        u = ctx.rand(n_chunks, 2, salt=1)  # per sample: (pick, uniform value) per chunk
        pick = self.levels[(u[..., 0] * len(self.levels)).long().clamp(max=len(self.levels) - 1)]
        uni = self.schedule.shift_sigma(u[..., 1])
        sigma = torch.where(ctx.rand(n_chunks, salt=2) < self.p_levels, pick, uni)
        sigma = sigma.repeat_interleave(c["chunk_frames"], dim=1)  # (B, F)
        noise = ctx.randn(*clean.shape[1:], salt=3)
        s = sigma[..., None, None, None]
        noisy = (1 - s) * clean + s * noise
        labels = batch["y"]
        if self.label_dropout:  # the null condition for classifier-free guidance: no slot present
            drop = ctx.rand(salt=4).flatten() < self.label_dropout
            labels = torch.where(drop[:, None], torch.full_like(labels, -1), labels)
        if n_chunks == 1:  # a first chunk has no clean context: only the noisy copy runs
            v = model(noisy, 1000.0 * sigma, labels)
        else:
            seq, idx, mask = cw.teacher_forcing_inputs(model, clean, noisy)
            t = torch.cat([torch.zeros(B, Fr), 1000.0 * sigma], dim=1)
            v = model(seq, t, labels, frame_index=idx, mask=mask)[:, Fr:]
        loss = (v - (noise - clean)).pow(2).mean()
        return LossOutput(loss)


def video_config(split: str = "train", num_frames: int | None = None) -> MovingDigitsConfig:
    """The moving-digits settings of the shipped model's data (``num_frames``: its 9 frames)."""
    return MovingDigitsConfig(num_frames=num_frames or MODEL["num_frames"], split=split, **DATA)


@torch.no_grad()
def evaluate(model, n: int = 16, seed: int = 1) -> dict:
    """Held-out teacher-forcing velocity loss on test-split digits (same objective as training)."""
    data = make_moving_digits(n, video_config("test"), seed=seed + 10_000)
    obj = TeacherForcingFlow(model.config)
    from diffkit.core.objective import StepContext

    ctx = StepContext(
        step=0, generator=torch.Generator().manual_seed(seed), sample_seeds=torch.arange(n)
    )
    return {"heldout_v_loss": float(obj(model.eval(), data.get_batch(torch.arange(n)), ctx).loss)}


@torch.no_grad()
def evaluate_samples(
    model,
    *,
    per_class: int = 20,
    seed: int = 0,
    steps: int | None = None,
    cfg_scale: float | None = None,
    batch_size: int = 50,
) -> dict:
    """Sample ``per_class`` videos of each digit (cached rollout) and score them (issue 14).

    Scored like ``moving-digits-wan`` (:func:`diffkit.zoo.moving_digits_wan.score_samples` on the
    recipe's 24 px digit crops): per-frame accuracy, class consistency, motion, crop FID/KID
    against as many held-out real videos, and the real-vs-real floor from training-split videos.
    """

    def draw(labels, g):
        return cw.sample(model, labels, steps=steps, generator=g, cfg_scale=cfg_scale)

    out = score_samples(
        draw,
        video_config,
        per_class=per_class,
        seed=seed,
        batch_size=batch_size,
        digit_size=DATA["digit_size"],
    )
    scale = model.config.get("cfg_scale", 1.0) if cfg_scale is None else cfg_scale
    steps = cw.sample_steps(model.config) if steps is None else steps
    out.update(steps=steps, cfg_scale=scale)
    return out


def train(
    out_dir: str | Path,
    *,
    seed: int = 0,
    progress: bool = False,
    settings: dict | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Train from scratch in two stages, evaluate sampled videos, save (fp32 EMA weights).

    ``settings`` overrides entries of :data:`SETTINGS`. With ``work_dir`` each finished stage
    leaves the model and its EMA there, keyed on the settings, seed, architecture and data, and a
    rerun skips the stages already done (a changed setting trains anew).
    """
    s = {**SETTINGS, **(settings or {})}
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    fast = fast_dtype(torch.device("cpu"))
    precision = "bf16" if fast == torch.bfloat16 else "no"
    config = {**cw.DEFAULT_CONFIG, **MODEL}
    model = cw.build(config)
    ema = EMA(model, s["ema_decay"])
    objective = TeacherForcingFlow(config, label_dropout=s["label_dropout"])
    key = {"settings": s, "seed": seed, "config": config, "data": DATA}
    plan = (("chunk", "train_chunks", config["chunk_frames"]), ("video", "train_videos", None))
    extra = {"weight_decay": s["weight_decay"], "grad_clip": s["grad_clip"]}
    stages = moving_digit_stages(s, plan, video_config, seed, precision, **extra)
    seconds, res = run_stages(
        stages, objective=objective, model=model, ema=ema, key=key, work_dir=work_dir,
        progress=progress, name="moving-digits-causal",
    )  # fmt: skip
    train_s = time.perf_counter() - t0
    ema.copy_to(model)
    model.eval()
    metrics = {
        **evaluate_samples(model, per_class=s["eval_per_class"], seed=seed),
        **evaluate(model),
        "final_loss": res.metrics.get("loss") if res is not None else None,
        "train_seconds": round(train_s, 1),
        "recipe_seconds": round(time.perf_counter() - t0, 1),
        "training_dtype": str(fast).replace("torch.", ""),
        "machine": machine_info(),
        **seconds,
        "params": sum(p.numel() for p in model.parameters()),
        "tokens_per_video": model.tokens_per_frame * config["num_frames"],
        "seed": seed,
        "settings": {"model": MODEL, "data": DATA, "train": s},
    }
    out_dir = Path(out_dir)
    save_model_dir(out_dir, model.state_dict(), model.config)
    atomic_write_json(out_dir / "metrics.json", metrics)
    log.info("moving-digits-causal: %s", json.dumps(metrics))
    return metrics
