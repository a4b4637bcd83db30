"""Shared fitting loop of the zoo's digit classifiers (the evaluation network and FPD's lifter).

AdamW with a one-cycle schedule over shuffled mini-batches of the train split; each recipe passes
its own augmentation (``augment(x, generator) -> x``) and keeps its own seed, settings and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def fit_classifier(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    augment: Augment,
    generator: torch.Generator,
    desc: str,
    progress: bool = False,
) -> nn.Module:
    """Cross-entropy training in place; returns ``model`` in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(images) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    iterator = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=desc, unit="epoch")
    for epoch in iterator:
        model.train()
        perm = torch.randperm(len(images), generator=generator)
        for i in range(0, len(images), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(augment(images[idx], generator)), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        log.info("%s: epoch %d loss %.4f", desc, epoch, loss.item())
    return model.eval()
