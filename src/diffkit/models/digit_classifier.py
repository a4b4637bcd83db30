"""The evaluation network: a small CNN classifier for 16x16 digits in [-1, 1].

Its 128-d penultimate features feed FID/KID/PRDC (:mod:`diffkit.core.metrics`) and its logits give
class accuracy of generated digits. It is an *evaluation* model only: never use it as a training
signal (reward, loss or guidance) anywhere, or the metrics it produces stop meaning anything.

Architecture (shapes for a (B, 1, 16, 16) input)::

    conv3x3(1->32) + BN + ReLU        (B, 32, 16, 16)
    conv3x3(32->64) + BN + ReLU, pool (B, 64, 8, 8)
    conv3x3(64->64) + BN + ReLU, pool (B, 64, 4, 4)
    flatten -> linear(1024->128) + ReLU  = features (B, 128)
    linear(128->10)                      = logits
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.core.io import load_model_dir

DEFAULT_CONFIG = {"width": 32, "feature_dim": 128, "num_classes": 10, "image_size": 16}


class DigitClassifier(nn.Module):
    def __init__(
        self, width: int = 32, feature_dim: int = 128, num_classes: int = 10, image_size: int = 16
    ):
        super().__init__()
        self.config = {
            "width": width,
            "feature_dim": feature_dim,
            "num_classes": num_classes,
            "image_size": image_size,
        }
        w = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
            )

        self.body = nn.Sequential(
            block(1, w), block(w, 2 * w), nn.MaxPool2d(2), block(2 * w, 2 * w), nn.MaxPool2d(2)
        )
        self.fc = nn.Linear(2 * w * (image_size // 4) ** 2, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (B, feature_dim) used for FID/KID/PRDC."""
        return F.relu(self.fc(self.body(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, predicted labels) for a stack of images, in eval mode, batched."""
        was_training = self.training
        self.eval()
        feats, preds = [], []
        for i in range(0, len(x), batch_size):
            f = self.features(x[i : i + batch_size].float())
            feats.append(f)
            preds.append(self.head(f).argmax(1))
        self.train(was_training)
        return torch.cat(feats), torch.cat(preds)


def build(config: dict) -> DigitClassifier:
    return DigitClassifier(**config)


def load_dir(path: str | Path) -> DigitClassifier:
    state, config = load_model_dir(path)
    model = build(config)
    model.load_state_dict(state)
    return model


def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of ``images`` classified as ``labels``."""
    _, pred = model.embed(images)
    return float((pred == labels).float().mean())
