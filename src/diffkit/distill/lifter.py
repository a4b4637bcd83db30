"""Feature lifters: frozen, differentiable maps from decoded images to the drift space of FPD.

FPD (arXiv 2605.21484) computes its drift loss after *lifting* tokens to continuous features: in
one-hot space all codes are equidistant, so a kernel there carries no similarity. Following
Drifting Models (arXiv 2602.04770, App. A.5) a lifter returns several feature *types*, each a drift
problem of its own: per-location vectors of chosen feature maps pooled to a ``grid`` x ``grid``
grid, the global per-channel mean and std of each map, and optionally the raw pixels.
``space="embedding"`` drifts the tokens' codebook embeddings E[z] instead (one flattened vector per
sample, no decoder and no backbone): the spec's "codebook-embedding space" ablation.

Backbones expose ``feature_maps(images) -> list[(B, C, H, W)]``:

* :class:`diffkit.models.digit_lifter.DigitLifter` (zoo ``digits-lifter``) directly;
* :class:`Dinov2Backbone` wraps transformers' ``Dinov2Model`` (local weights; blocks -> patch grids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, kw_only=True)
class LifterConfig:
    """Which features :class:`FeatureLifter` returns.

    Attributes:
        space: "feature" (backbone features, plus pixels if ``pixel_term``), "pixel" (raw pixels
            only; the paper's pixel-space ablation) or "embedding" (the codebook embeddings of the
            tokens, flattened; ablation, spec distill-fpd.md (g)).
        layers: indices into the backbone's feature maps to use.
        grid: pool each map to grid x grid locations (one drift problem per location); 0 = none.
        stats: add the global per-channel mean and std of each map.
        pixel_term: add the flattened image as one more feature type.
    """

    space: Literal["feature", "pixel", "embedding"] = "feature"
    layers: tuple[int, ...] = (1, 2)
    grid: int = 4
    stats: bool = True
    pixel_term: bool = True

    def __post_init__(self) -> None:
        if self.space not in ("feature", "pixel", "embedding"):
            raise ValueError(
                f"LifterConfig.space={self.space!r}; use 'feature', 'pixel' or 'embedding'"
            )
        if self.grid < 0:
            raise ValueError(f"LifterConfig.grid must be >= 0, got {self.grid}")
        if self.space == "feature" and not self.layers:
            raise ValueError("LifterConfig.layers must name at least one feature map")
        if self.space == "feature" and self.grid == 0 and not self.stats:
            raise ValueError("LifterConfig: grid=0 and stats=False leave no backbone features")


class FeatureLifter(nn.Module):
    """Frozen multi-feature lifter: ``lifter(images) -> {name: (B, C) or (B, S, C)}``."""

    def __init__(self, backbone: nn.Module | None, config: LifterConfig | None = None):
        super().__init__()
        self.config = config or LifterConfig()
        if self.config.space == "feature":
            if backbone is None or not hasattr(backbone, "feature_maps"):
                raise ValueError(
                    "FeatureLifter(space='feature') needs a backbone with .feature_maps(images), "
                    f"such as DigitLifter or Dinov2Backbone; got {type(backbone).__name__}"
                )
            self.backbone = backbone.eval().requires_grad_(False)
        else:
            self.backbone = None

    def train(self, mode: bool = True) -> FeatureLifter:  # always frozen / eval
        return super().train(False)

    def forward(
        self, images: torch.Tensor | None, emb: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Features of decoded ``images`` (B, C, H, W), or, for ``space="embedding"``, of the
        tokens' codebook embeddings ``emb`` (B, L, d)."""
        cfg = self.config
        if cfg.space == "embedding":
            if emb is None:
                raise ValueError(
                    "FeatureLifter(space='embedding') lifts token embeddings: pass emb"
                )
            return {"embedding": emb.flatten(1).float()}
        out: dict[str, torch.Tensor] = {}
        if cfg.space == "pixel" or cfg.pixel_term:
            out["pixels"] = images.flatten(1).float()
        if cfg.space == "pixel":
            return out
        maps = self.backbone.feature_maps(images)
        for i in cfg.layers:
            if not -len(maps) <= i < len(maps):
                raise ValueError(f"lifter layer {i} out of range: backbone has {len(maps)} maps")
            m = maps[i].float()
            if cfg.grid:
                g = min(cfg.grid, m.shape[-1], m.shape[-2])
                out[f"map{i}_grid"] = F.adaptive_avg_pool2d(m, g).flatten(2).transpose(1, 2)
            if cfg.stats:
                out[f"map{i}_mean"] = m.mean((2, 3))
                out[f"map{i}_std"] = (m.var((2, 3), unbiased=False) + 1e-6).sqrt()
        return out


class Dinov2Backbone(nn.Module):
    """transformers ``Dinov2Model`` as a backbone: hidden states of ``blocks`` -> (B, C, h, w) grids.

    Images in [-1, 1] with 1 or 3 channels are resized to ``image_size``, repeated to RGB and
    normalised with ImageNet statistics. FPD used DINOv3 ViT-B/16 blocks (2, 5, 8, 11) [mirror].
    """

    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, model: nn.Module, blocks: tuple[int, ...] = (2, 5, 8, 11), image_size=None):
        super().__init__()
        cls = type(model).__name__
        if cls != "Dinov2Model":
            raise ValueError(f"Dinov2Backbone supports transformers Dinov2Model, got {cls}")
        cfg = model.config
        n = cfg.num_hidden_layers
        bad = [b for b in blocks if not 0 <= b < n]
        if bad:
            raise ValueError(f"Dinov2Backbone blocks {bad} out of range: the model has {n} layers")
        self.model = model.eval().requires_grad_(False)
        self.blocks = tuple(blocks)
        self.patch = cfg.patch_size
        self.image_size = image_size or cfg.image_size
        self.register_buffer("mean", torch.tensor(self.MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.STD).view(1, 3, 1, 1), persistent=False)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        hs = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        g = self.image_size // self.patch
        maps = []
        for b in self.blocks:
            tok = hs[b + 1][:, -g * g :]  # drop CLS (and register) tokens
            maps.append(tok.transpose(1, 2).reshape(len(x), -1, g, g))
        return maps
