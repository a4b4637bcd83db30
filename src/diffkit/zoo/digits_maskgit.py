"""Zoo recipe: ``digits-maskgit``, the tiny class-conditional MaskGIT teacher of FPD.

Trains :class:`diffkit.models.maskgit.TinyMaskGIT` on the ``digits-patch-tokenizer`` token grids of
the train split with :class:`diffkit.distill.MaskGITObjective` (masked-token cross-entropy, cosine
mask schedule, 10 % null-class drop for CFG) through :func:`diffkit.train.fit`, with horizontal
+-1 pixel shifts as augmentation. Records the held-out masked-token accuracy.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from diffkit import models
from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.core.objective import StepContext
from diffkit.data.digits import load_digits
from diffkit.distill import MaskGITObjective
from diffkit.models.maskgit import DEFAULT_CONFIG, build
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)

TRAIN = TrainConfig(
    steps=1500, batch_size=64, lr=1e-3, weight_decay=0.01, warmup_steps=100,
    lr_schedule="cosine", grad_clip=1.0, ema_decay=0.0, log_every=50, betas=(0.9, 0.98),
)  # fmt: skip


class TokenData:
    """Token grids + labels, with +-1 pixel shifted copies of every image."""

    def __init__(self, tokens: torch.Tensor, labels: torch.Tensor):
        self.tokens, self.labels = tokens, labels

    def __len__(self) -> int:
        return len(self.labels)

    def get_batch(self, idx: torch.Tensor) -> dict:
        return {"tokens": self.tokens[idx], "y": self.labels[idx]}


def shifted(images: torch.Tensor) -> torch.Tensor:
    out = [images]
    for dx in (-1, 1):
        s = torch.roll(images, dx, dims=3)
        s[..., 0 if dx == 1 else -1] = -1.0
        out.append(s)
    return torch.cat(out)


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    torch.manual_seed(seed)
    tok = models.load("digits-patch-tokenizer")
    tr, te = load_digits("train"), load_digits("test")
    data = TokenData(tok.encode(shifted(tr.images)), tr.labels.repeat(3))
    net = build(DEFAULT_CONFIG)
    obj = MaskGITObjective(mask_id=net.mask_id, null_class=net.null_class, label_drop=0.1)
    cfg = TrainConfig(**{**TRAIN.__dict__, "seed": seed})
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(obj, net, data, cfg, tmp, progress=progress)
    net.eval()
    g = torch.Generator().manual_seed(seed + 1)
    te_tok = tok.encode(te.images)
    with torch.no_grad():
        ctx = StepContext(step=0, generator=g, sample_seeds=torch.arange(len(te_tok)))
        obj_eval = MaskGITObjective(mask_id=net.mask_id, null_class=net.null_class, label_drop=0)
        out = obj_eval(net, {"tokens": te_tok, "y": te.labels}, ctx)
    metrics = {
        "final_train_loss": res.metrics.get("loss"),
        "test_masked_ce": float(out.loss),
        "test_masked_acc": float(out.metrics["masked_acc"]),
        "params": sum(p.numel() for p in net.parameters()),
        "seed": seed,
        "steps": cfg.steps,
    }
    save_model_dir(out_dir, net.state_dict(), net.config)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    log.info("digits-maskgit: %s", metrics)
    return metrics
