"""Zoo recipe: ``digits-sd3-flow`` (diffusers SD3Transformer2DModel, rectified flow).

Same procedure as :mod:`diffkit.zoo.digits_unet_eps` (fit with 10 % null labels, fp32 EMA that
ships, evaluation-network FID/KID and class accuracy of guided Euler samples), with the flow model of
:mod:`diffkit.models.digits_sd3`.
"""

from __future__ import annotations

from pathlib import Path

from diffkit.models import digits_sd3
from diffkit.zoo.digits_unet_eps import train_denoiser

SETTINGS = {
    "steps": 1500,
    "batch_size": 32,
    "lr": 1e-3,
    "warmup_steps": 50,
    "ema_decay": 0.995,
    "p_uncond": 0.1,
    "eval_per_class": 50,
    "eval_steps": 20,
    "guidance": 2.0,
}


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    return train_denoiser(
        digits_sd3.DEFAULT_CONFIG, SETTINGS, out_dir, seed=seed, progress=progress
    )
