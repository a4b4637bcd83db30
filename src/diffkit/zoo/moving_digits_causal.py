"""Zoo recipe: ``moving-digits-causal``, the tiny Self-Forcing-style causal video model.

Teacher-forcing flow matching (spec quantize-qarvd.md (b)): the sequence is [clean frames; noisy
frames] with the teacher-forcing mask (:func:`~diffkit.models.causal_wan.teacher_forcing_inputs`),
each chunk of the noisy copy gets its own noise level (75 %: one of the 4 warped inference levels,
25 %: uniform), and the loss is the velocity MSE on the noisy frames. Data: bundled one-digit moving
digits (12 frames, 32x32) through the fixed orthogonal "VAE". The shipped weights are the fp32 EMA.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from diffkit.core.ema import EMA
from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.core.objective import LossOutput
from diffkit.core.schedules import FlowMatching
from diffkit.data import MovingDigitsConfig, make_moving_digits
from diffkit.models import causal_wan as cw
from diffkit.train import TrainConfig, fit
from diffkit.zoo.moving_digits_wan import score_samples

log = logging.getLogger(__name__)

DATA = {"n": 4000, "max_digits": 1, "num_frames": 12, "size": 32, "digit_size": 16}
TRAIN = {
    "steps": 500,
    "batch_size": 12,
    "lr": 2e-3,
    "warmup_steps": 50,
    "lr_schedule": "cosine",
    "weight_decay": 0.01,
    "grad_clip": 1.0,
    "ema_decay": 0.99,
    "log_every": 50,
}


class TeacherForcingFlow:
    """Objective ``(model, batch, ctx) -> LossOutput`` for the causal model."""

    def __init__(self, config: dict, p_levels: float = 0.75, label_dropout: float = 0.0) -> None:
        self.config = config
        self.p_levels = p_levels
        self.label_dropout = label_dropout
        self.levels = cw.sigmas_for().float()
        self.schedule = FlowMatching(shift=cw.SHIFT)

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
        seq, idx, mask = cw.teacher_forcing_inputs(model, clean, noisy)
        t = torch.cat([torch.zeros(B, Fr), 1000.0 * sigma], dim=1)
        labels = batch["y"]
        if self.label_dropout:  # the null condition for classifier-free guidance: no slot present
            drop = ctx.rand(salt=4).flatten() < self.label_dropout
            labels = torch.where(drop[:, None], torch.full_like(labels, -1), labels)
        v = model(seq, t, labels, frame_index=idx, mask=mask)[:, Fr:]
        loss = (v - (noise - clean)).pow(2).mean()
        return LossOutput(loss)


def video_config(split: str = "train") -> MovingDigitsConfig:
    """The moving-digits settings of the recipe's data."""
    return MovingDigitsConfig(
        num_frames=DATA["num_frames"],
        size=DATA["size"],
        digit_size=DATA["digit_size"],
        max_digits=DATA["max_digits"],
        split=split,
    )


def _data(seed: int):
    return make_moving_digits(DATA["n"], video_config(), seed=seed)


@torch.no_grad()
def evaluate(model, n: int = 16, seed: int = 1) -> dict:
    """Held-out teacher-forcing velocity loss on test-split digits (same objective as training)."""
    data = make_moving_digits(n, MovingDigitsConfig(max_digits=1, split="test"), seed=seed + 10_000)
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
    steps: int = len(cw.DENOISING_TIMESTEPS),
    cfg_scale: float | None = None,
    batch_size: int = 50,
) -> dict:
    """Sample ``per_class`` videos of each digit (cached rollout) and score them (issue 14).

    Scored like ``moving-digits-wan`` (:func:`diffkit.zoo.moving_digits_wan.score_samples` on the
    recipe's 16 px digit crops): per-frame accuracy, class consistency, motion, crop FID/KID
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
    out.update(steps=steps, cfg_scale=scale)
    return out


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    torch.manual_seed(seed)
    config = dict(cw.DEFAULT_CONFIG)
    model = cw.build(config)
    data = _data(seed)
    tcfg = TrainConfig(**TRAIN, seed=seed, resume=False)
    ema = EMA(model, tcfg.ema_decay)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        res = fit(TeacherForcingFlow(config), model, data, tcfg, work, ema=ema, progress=progress)
    ema.copy_to(model)
    metrics = {
        "train_v_loss": res.metrics.get("loss"),
        **evaluate(model),
        "train_seconds": round(time.perf_counter() - t0, 1),
        "params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "settings": {"data": DATA, "train": TRAIN},
    }
    out_dir = Path(out_dir)
    save_model_dir(out_dir, model.state_dict(), model.config)
    atomic_write_json(out_dir / "metrics.json", metrics)
    log.info("moving-digits-causal: %s", json.dumps(metrics))
    return metrics
