"""A small CNN *feature lifter* for 16x16 digits (``digits-lifter``), used as FPD's drift space.

Deliberately different from the evaluation network (:mod:`diffkit.models.digit_classifier`): 5x5
stem, GroupNorm + SiLU, strided convolutions instead of max-pooling, global average pooling, a
different width and a different training seed. It is trained as a classifier on the *train* split
only; FPD uses its intermediate feature maps (never the evaluation network's).

Shapes for a (B, 1, 16, 16) input::

    stem   conv5x5(1->16) + GN + SiLU              (B, 16, 16, 16)   feature map 0
    down1  conv3x3 s2 (16->32) + GN + SiLU, conv   (B, 32,  8,  8)   feature map 1
    down2  conv3x3 s2 (32->48) + GN + SiLU, conv   (B, 48,  4,  4)   feature map 2
    head   global mean -> linear(48->10)           (B, 10)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffkit.core.io import load_model_dir

DEFAULT_CONFIG = {"widths": [16, 32, 48], "num_classes": 10}


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2),
        nn.GroupNorm(4, cout),
        nn.SiLU(),
    )


class DigitLifter(nn.Module):
    def __init__(self, widths: list[int] | tuple[int, ...] = (16, 32, 48), num_classes: int = 10):
        super().__init__()
        w0, w1, w2 = widths
        self.config = {"widths": list(widths), "num_classes": num_classes}
        self.stages = nn.ModuleList(
            [
                _conv(1, w0, k=5),
                nn.Sequential(_conv(w0, w1, stride=2), _conv(w1, w1)),
                nn.Sequential(_conv(w1, w2, stride=2), _conv(w2, w2)),
            ]
        )
        self.head = nn.Linear(w2, num_classes)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three stage outputs [(B, 16, 16, 16), (B, 32, 8, 8), (B, 48, 4, 4)]."""
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.feature_maps(x)[-1].mean((2, 3)))


def build(config: dict) -> DigitLifter:
    return DigitLifter(**config)


def load_dir(path: str | Path) -> DigitLifter:
    state, config = load_model_dir(path)
    model = build(config)
    model.load_state_dict(state)
    return model
