"""Zoo recipe: ``digits-lifter``, the CNN whose feature maps are FPD's drift space.

Trained as a classifier on the *train* split only, with a seed offset (seed + 1234) and an
architecture different from the evaluation network, so that FPD never optimises the metric's own
features. About 20 s on 2 cores.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.data.digits import load_digits
from diffkit.models.digit_lifter import DEFAULT_CONFIG, build

log = logging.getLogger(__name__)

SETTINGS = {"epochs": 15, "batch_size": 64, "lr": 3e-3, "seed_offset": 1234, "noise": 0.1}


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    s = SETTINGS
    torch.manual_seed(seed + s["seed_offset"])
    g = torch.Generator().manual_seed(seed + s["seed_offset"])
    tr, te = load_digits("train"), load_digits("test")
    model = build(DEFAULT_CONFIG)
    opt = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=1e-4)
    n_steps = s["epochs"] * ((len(tr) + s["batch_size"] - 1) // s["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s["lr"], total_steps=n_steps)
    it = range(s["epochs"])
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="digits-lifter", unit="epoch")
    for _ in it:
        model.train()
        perm = torch.randperm(len(tr), generator=g)
        for i in range(0, len(tr), s["batch_size"]):
            idx = perm[i : i + s["batch_size"]]
            x = tr.images[idx]
            x = x + s["noise"] * torch.randn(x.shape, generator=g)  # robustness to generated noise
            loss = F.cross_entropy(model(x), tr.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(te.images).argmax(1) == te.labels).float().mean())
        acc_tr = float((model(tr.images).argmax(1) == tr.labels).float().mean())
    metrics = {"train_accuracy": acc_tr, "test_accuracy": acc, "seed": seed, "settings": s}
    save_model_dir(out_dir, model.state_dict(), model.config)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    log.info("digits-lifter: %s", metrics)
    return metrics
