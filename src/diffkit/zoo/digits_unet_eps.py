"""Zoo recipe: ``digits-unet-eps`` (diffusers UNet2DConditionModel, eps-prediction DDPM).

Trains the class-conditional denoiser of :mod:`diffkit.models.digits_unet` on the bundled 16x16
digits train split with :func:`diffkit.train.fit` (10 % null labels for classifier-free guidance,
AdamW, cosine schedule, fp32 EMA of the weights, which is what ships), then reports sample quality
with the evaluation network: FID/KID of 500 guided samples against the held-out test split, and
the fraction classified as the requested digit. ``train_denoiser`` is shared with the flow member.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.core.metrics import frechet_distance, kernel_inception_distance
from diffkit.core.objective import LossOutput
from diffkit.data.digits import load_digits
from diffkit.models import digits_unet
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)

SETTINGS = {
    "steps": 1500,
    "batch_size": 32,
    "lr": 2e-3,
    "warmup_steps": 50,
    "ema_decay": 0.995,
    "p_uncond": 0.1,
    "eval_per_class": 50,
    "eval_steps": 20,
    "guidance": 2.0,
}


class DenoisingObjective:
    """Plain eps / flow regression with label dropout (noise and t drawn per sample via ctx)."""

    def __init__(self, p_uncond: float) -> None:
        self.p_uncond = p_uncond

    def __call__(self, model, batch, ctx) -> LossOutput:
        x, y = batch["x"], batch["y"]
        s = model.schedule
        noise = ctx.randn(*x.shape[1:])
        u = ctx.rand(1, salt=1)[:, 0]
        drop = ctx.rand(1, salt=3)[:, 0] < self.p_uncond
        labels = torch.where(drop, torch.full_like(y, model.null_label), y)
        if isinstance(s, digits_unet.DDPM):
            t = (u * s.num_train_timesteps).long().clamp(max=s.num_train_timesteps - 1)
        else:
            t = s.shift_sigma(u)
        pred = model(s.add_noise(x, noise, t), t, labels)
        loss = (pred - s.target(x, noise, t)).pow(2).mean()
        return LossOutput(loss)


@torch.no_grad()
def evaluate(model, *, per_class: int, steps: int, guidance: float, seed: int) -> dict:
    """FID/KID vs the test split and class accuracy of guided samples (evaluation network)."""
    net = models.load("digit-classifier")
    labels = torch.arange(10).repeat_interleave(per_class)
    g = torch.Generator().manual_seed(seed + 12345)
    imgs = torch.cat(
        [
            model.sample(labels[i : i + 250], steps=steps, guidance=guidance, generator=g)
            for i in range(0, len(labels), 250)
        ]
    )
    f_gen, pred = net.embed(imgs)
    f_test, _ = net.embed(load_digits("test").images)
    kid, kid_std = kernel_inception_distance(f_test, f_gen, num_subsets=20, subset_size=200)
    return {
        "fid_vs_test": frechet_distance(f_test, f_gen),
        "kid_vs_test": kid,
        "kid_std": kid_std,
        "class_accuracy": float((pred == labels).float().mean()),
        "eval_samples": len(labels),
        "eval_sampler_steps": steps,
        "eval_guidance": guidance,
    }


def train_denoiser(config: dict, settings: dict, out_dir, *, seed: int, progress: bool) -> dict:
    torch.manual_seed(seed)
    model = digits_unet.build(config)
    data = load_digits("train")
    s = settings
    tcfg = TrainConfig(
        steps=s["steps"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        warmup_steps=s["warmup_steps"],
        lr_schedule="cosine",
        ema_decay=s["ema_decay"],
        seed=seed,
        log_every=100,
        resume=False,
    )
    from diffkit.core.ema import EMA

    ema = EMA(model, s["ema_decay"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        res = fit(
            DenoisingObjective(s["p_uncond"]), model, data, tcfg, work, ema=ema, progress=progress
        )
    train_s = time.perf_counter() - t0
    ema.copy_to(model)
    model.eval()
    metrics = evaluate(
        model,
        per_class=s["eval_per_class"],
        steps=s["eval_steps"],
        guidance=s["guidance"],
        seed=seed,
    )
    metrics.update(
        final_loss=res.metrics.get("loss"),
        train_seconds=round(train_s, 1),
        params=sum(p.numel() for p in model.parameters()),
        seed=seed,
        settings=s,
        torch_threads=torch.get_num_threads(),
    )
    digits_unet.save_dir(model, Path(out_dir), extra={"metrics.json": metrics})
    log.info("trained %s: %s", config["kind"], metrics)
    return metrics


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    return train_denoiser(
        digits_unet.DEFAULT_CONFIG, SETTINGS, out_dir, seed=seed, progress=progress
    )
