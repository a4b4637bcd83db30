"""Evaluation of generated digits on the *evaluation network's* features (never a training signal).

KID / FID against the held-out test split, class accuracy of the samples, precision / recall /
density / coverage, within-class diversity relative to real data, unique token grids, and token
statistics (spec distill-fpd.md (g)).
"""

from __future__ import annotations

import torch

from diffkit import models
from diffkit.core.metrics import frechet_distance, kernel_inception_distance, prdc
from diffkit.data.digits import load_digits


def within_class_spread(feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean pairwise feature distance inside each class, averaged over classes."""
    vals = []
    for c in labels.unique():
        f = feats[labels == c].double()
        if len(f) > 1:
            d = torch.cdist(f, f)
            vals.append(d.sum() / (len(f) * (len(f) - 1)))
    return float(torch.stack(vals).mean())


@torch.no_grad()
def evaluate_samples(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    ids: torch.Tensor | None = None,
    codebook_size: int | None = None,
    kid_subsets: int = 20,
) -> dict[str, float]:
    """Metrics of generated ``images`` (N, 1, 16, 16) meant to show classes ``labels``."""
    net = models.load("digit-classifier")
    test = load_digits("test")
    f_real, _ = net.embed(test.images)
    f_gen, pred = net.embed(images.clamp(-1, 1))
    kid, _ = kernel_inception_distance(
        f_gen, f_real, num_subsets=kid_subsets, subset_size=min(len(f_gen), len(f_real), 500)
    )
    out = {
        "kid": kid,
        "fid": frechet_distance(f_gen, f_real),
        "class_acc": float((pred == labels).float().mean()),
        "diversity_ratio": within_class_spread(f_gen, labels)
        / within_class_spread(f_real, test.labels),
        **prdc(f_real, f_gen, k=5),
    }
    if ids is not None:
        out["unique_grids"] = float(len(torch.unique(ids, dim=0)) / len(ids))
        if codebook_size is not None:
            counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
            p = counts[counts > 0] / counts.sum()
            out["token_entropy"] = float(-(p * p.log()).sum())
            out["codebook_usage"] = float((counts > 0).float().mean())
    return out
