"""Evaluation of generated images in any feature space (spec distill-fpd.md (g)).

:func:`evaluate_features` takes the generated images, a reference image set and a *feature
extractor*: any callable images (N, C, H, W) -> features (N, D). On the tiny zoo that is the
evaluation network ``digit-classifier`` (never a training signal; :func:`evaluate_samples`); on a
real model, wrap Inception, CLIP or DINOv2 loaded from local weights, e.g. with
:class:`HFImageFeatures` around a transformers vision model. It reports KID and FID against the
reference, precision / recall / density / coverage, and, given labels, within-class diversity
relative to the reference and (given a classifier) class accuracy; given token ids, unique grids
and token statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from diffkit.core.metrics import frechet_distance, kernel_inception_distance, prdc

FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # images (N, C, H, W) -> features (N, D)


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
def extract(feature_fn: FeatureFn, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """``feature_fn`` over ``images`` in batches; (N, D) float features on the CPU."""
    out = []
    for i in range(0, len(images), batch_size):
        f = feature_fn(images[i : i + batch_size])
        if not isinstance(f, torch.Tensor) or f.dim() != 2:
            raise ValueError(
                "the feature extractor must return a (N, D) tensor, got "
                f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}"
            )
        out.append(f.detach().float().cpu())
    return torch.cat(out)


def token_metrics(ids: torch.Tensor, codebook_size: int | None = None) -> dict[str, float]:
    """Share of unique token grids; with ``codebook_size``, token entropy and codebook usage."""
    out = {"unique_grids": float(len(torch.unique(ids, dim=0)) / len(ids))}
    if codebook_size is not None:
        counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
        p = counts[counts > 0] / counts.sum()
        out["token_entropy"] = float(-(p * p.log()).sum())
        out["codebook_usage"] = float((counts > 0).float().mean())
    return out


@torch.no_grad()
def evaluate_features(
    images: torch.Tensor,
    reference: torch.Tensor,
    feature_fn: FeatureFn,
    *,
    labels: torch.Tensor | None = None,
    reference_labels: torch.Tensor | None = None,
    classify: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reference_features: torch.Tensor | None = None,
    kid_subsets: int = 20,
    kid_subset_size: int = 500,
    prdc_k: int = 5,
    batch_size: int = 256,
) -> dict[str, float]:
    """Metrics of generated ``images`` against ``reference`` images in ``feature_fn``'s space.

    Args:
        images: generated images (N, C, H, W), in the range the extractor expects.
        reference: reference images (M, C, H, W) (ignored if ``reference_features`` is given).
        feature_fn: images -> (N, D) features (e.g. :class:`HFImageFeatures`).
        labels / reference_labels: classes of both sets: adds ``diversity_ratio`` (within-class
            feature spread relative to the reference; > 1 = noisier than the reference).
        classify: images -> predicted labels (N,): adds ``class_acc`` against ``labels``.
        reference_features: precomputed (M, D) reference features (reuse across calls).

    Returns:
        kid (unbiased MMD^2, cubic kernel), fid, precision, recall, density, coverage, and the
        optional diversity_ratio and class_acc.
    """
    f_gen = extract(feature_fn, images, batch_size)
    f_real = (
        reference_features.float().cpu()
        if reference_features is not None
        else extract(feature_fn, reference, batch_size)
    )
    kid, _ = kernel_inception_distance(
        f_gen, f_real, num_subsets=kid_subsets,
        subset_size=min(len(f_gen), len(f_real), kid_subset_size),
    )  # fmt: skip
    out = {"kid": kid, "fid": frechet_distance(f_gen, f_real)}
    if classify is not None:
        if labels is None:
            raise ValueError("evaluate_features: classify needs the generated images' labels")
        pred = torch.cat([classify(images[i : i + batch_size]).cpu()
                          for i in range(0, len(images), batch_size)])  # fmt: skip
        out["class_acc"] = float((pred == labels).float().mean())
    if labels is not None and reference_labels is not None:
        out["diversity_ratio"] = within_class_spread(f_gen, labels) / within_class_spread(
            f_real, reference_labels
        )
    out.update(prdc(f_real, f_gen, k=prdc_k))
    return out


class HFImageFeatures:
    """A transformers vision model (CLIP, DINOv2, ...) as a feature extractor.

    Images in ``value_range`` are brought to [0, 1], grey images repeated to RGB, resized
    (bicubic, as the CLIP/DINOv2 processors) to ``image_size`` and normalised with ``mean`` /
    ``std``; the features are the model output's ``output`` field ("pooler_output": CLIP's pooled
    token, DINOv2's CLS token; "image_embeds" for ``CLIPVisionModelWithProjection``).

    Args:
        model: a transformers vision model called as ``model(pixel_values=...)``.
        image_size: side the images are resized to (224 for CLIP ViT-B and DINOv2).
        mean / std: the model's normalisation (defaults: ImageNet, DINOv2's; CLIP uses
            (0.4815, 0.4578, 0.4082) / (0.2686, 0.2613, 0.2758)).
        value_range: range of the images given (diffkit's generators: [-1, 1]).
        output: which field of the model output to use.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        image_size: int = 224,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        value_range: tuple[float, float] = (-1.0, 1.0),
        output: str = "pooler_output",
    ):
        if image_size < 1:
            raise ValueError(f"HFImageFeatures image_size must be >= 1, got {image_size}")
        self.model = model.eval().requires_grad_(False)
        self.image_size, self.value_range, self.output = image_size, value_range, output
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        lo, hi = self.value_range
        x = ((images.float() - lo) / (hi - lo)).clamp(0, 1)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic",
                              align_corners=False).clamp(0, 1)  # fmt: skip
        x = (x - self.mean) / self.std
        p = next(self.model.parameters())
        out = self.model(pixel_values=x.to(p.device, p.dtype))
        feats = getattr(out, self.output, None)
        if feats is None:
            raise ValueError(f"the model output has no {self.output!r} field")
        return feats.flatten(1)


@torch.no_grad()
def evaluate_samples(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    ids: torch.Tensor | None = None,
    codebook_size: int | None = None,
    kid_subsets: int = 20,
) -> dict[str, float]:
    """Digits: metrics of generated ``images`` (N, 1, 16, 16) meant to show classes ``labels``,
    in the evaluation network's features against the held-out test split."""
    from diffkit import models
    from diffkit.data.digits import load_digits

    net = models.load("digit-classifier")
    test = load_digits("test")
    out = evaluate_features(
        images.clamp(-1, 1), test.images, lambda x: net.embed(x)[0], labels=labels,
        reference_labels=test.labels, classify=lambda x: net.embed(x)[1],
        kid_subsets=kid_subsets, batch_size=len(images) + len(test.images),
    )  # fmt: skip
    if ids is not None:
        out.update(token_metrics(ids, codebook_size))
    return out
