"""Zoo recipe: ``digits-lifter``, the CNN whose feature maps are FPD's drift space.

Trained as a classifier on the *train* split only, with a seed offset (seed + 1234) and an
architecture different from the evaluation network, so that FPD never optimises the metric's own
features. About 20 s on 2 cores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.data.digits import load_digits
from diffkit.models.digit_lifter import DEFAULT_CONFIG, build
from diffkit.zoo._classifier import fit_classifier

log = logging.getLogger(__name__)

SETTINGS = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "seed_offset": 1234, "noise": 0.1}


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    s = SETTINGS
    torch.manual_seed(seed + s["seed_offset"])
    g = torch.Generator().manual_seed(seed + s["seed_offset"])
    tr, te = load_digits("train"), load_digits("test")
    model = build(DEFAULT_CONFIG)
    fit_classifier(
        model,
        tr.images,
        tr.labels,
        epochs=s["epochs"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        weight_decay=1e-4,
        # Gaussian pixel noise: robustness to generated samples.
        augment=lambda x, gen: x + s["noise"] * torch.randn(x.shape, generator=gen),
        generator=g,
        desc="digits-lifter",
        progress=progress,
    )
    with torch.no_grad():
        acc = float((model(te.images).argmax(1) == te.labels).float().mean())
        acc_tr = float((model(tr.images).argmax(1) == tr.labels).float().mean())
    metrics = {"train_accuracy": acc_tr, "test_accuracy": acc, "seed": seed, "settings": s}
    save_model_dir(out_dir, model.state_dict(), model.config)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    log.info("digits-lifter: %s", metrics)
    return metrics
