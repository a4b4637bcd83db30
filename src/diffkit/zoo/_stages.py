"""Finished training stages of a multi-stage zoo recipe, kept so that a rerun can skip them.

A stage is stored as one safetensors file (the model, its EMA and the stage's time) named by a hash
of everything that shapes it (settings, seed, architecture, data, stage name): a changed setting
gives another name, so stale work is never resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from pathlib import Path

import torch

from diffkit.core.ema import EMA
from diffkit.core.io import load_tensors, save_tensors
from diffkit.data import make_moving_digits
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)


def stage_path(work_dir, key: dict, stage: str) -> Path | None:
    """Where stage ``stage`` is kept under ``work_dir``, keyed on ``key`` (None: not kept)."""
    if work_dir is None:
        return None
    text = json.dumps({**key, "stage": stage}, sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Path(work_dir) / f"{stage}-{digest}.safetensors"


def save_stage(path: Path, model, ema: EMA, seconds: float) -> None:
    """Model, EMA (its own state_dict) and the stage's time, written atomically."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors["seconds"] = torch.tensor(seconds, dtype=torch.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(path, tensors)


def load_stage(path: Path, model, ema: EMA) -> float:
    """Restore what :func:`save_stage` wrote; returns the stage's recorded seconds."""
    tensors = load_tensors(path)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return float(tensors["seconds"])


def stage_train_config(s: dict, stage: str, index: int, seed: int, precision: str, **extra):
    """The :class:`~diffkit.train.TrainConfig` of stage ``stage`` (the ``index``-th) from the
    recipe settings ``s`` (``{stage}_steps``, ``{stage}_batch``, ``{stage}_lr``, ``warmup_steps``,
    ``ema_decay``); ``extra`` adds recipe-specific fields (betas, weight decay, clipping)."""
    return TrainConfig(
        steps=s[f"{stage}_steps"],
        batch_size=s[f"{stage}_batch"],
        lr=s[f"{stage}_lr"],
        warmup_steps=s["warmup_steps"],
        lr_schedule="cosine",
        ema_decay=s["ema_decay"],
        seed=seed + index,
        log_every=50,
        resume=False,
        mixed_precision=precision,
        **extra,
    )


def run_stages(
    stages, *, objective, model, ema: EMA, key: dict, work_dir, progress: bool, name: str
):
    """Train ``stages`` in order, each a ``(stage, make_data, TrainConfig)``, with one EMA.

    A stage already kept under ``work_dir`` for ``key`` is restored instead of trained (its data are
    then never built); a trained stage is kept there. Returns ``({"<stage>_stage_seconds": s},
    the last fit result or None)``.
    """
    seconds, res = {}, None
    for stage, make_data, cfg in stages:
        ts = time.perf_counter()
        done = stage_path(work_dir, key, stage)
        if done is not None and done.exists():
            seconds[f"{stage}_stage_seconds"] = load_stage(done, model, ema)
            log.info("%s %s stage: reused %s", name, stage, done)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            res = fit(objective, model, make_data(), cfg, tmp, ema=ema, progress=progress)
        seconds[f"{stage}_stage_seconds"] = round(time.perf_counter() - ts, 1)
        log.info("%s %s stage: %s", name, stage, res.metrics)
        if done is not None:
            save_stage(done, model, ema, seconds[f"{stage}_stage_seconds"])
    return seconds, res


def moving_digit_stages(s: dict, plan, video_config, seed: int, precision: str, **extra) -> list:
    """:func:`run_stages`' list for moving-digits recipes: ``plan`` holds ``(stage, count key,
    frames)`` (frames None: the recipe's clip length); each stage's data are ``s[count key]``
    videos of ``video_config("train", frames)``, built only if the stage is trained."""

    def data(n: str, frames):
        return lambda: make_moving_digits(s[n], video_config("train", frames), seed=seed)

    return [
        (stage, data(n, frames), stage_train_config(s, stage, i, seed, precision, **extra))
        for i, (stage, n, frames) in enumerate(plan)
    ]
