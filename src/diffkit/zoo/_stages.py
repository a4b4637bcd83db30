"""Finished training stages of a multi-stage zoo recipe, kept so that a rerun can skip them.

A stage is stored as one safetensors file (the model, its EMA and the stage's time) named by a hash
of everything that shapes it (settings, seed, architecture, data, stage name): a changed setting
gives another name, so stale work is never resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from diffkit.core.ema import EMA
from diffkit.core.io import load_tensors, save_tensors


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
