"""scikit-learn's bundled handwritten digits (1,797 images, 8x8, 10 classes), ready for diffusion.

Images are bilinearly resized to ``size`` x ``size`` (default 16), scaled to [-1, 1] and returned as
(N, 1, size, size) float32 tensors. The train/test split is fixed and stratified: within each class,
images are shuffled with seed 0 and the first 20 % go to the test split (359 test, 1,438 train).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Split = Literal["train", "test", "all"]
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class DigitsSplit:
    """Images (N, 1, S, S) in [-1, 1] and integer labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return {"x": self.images[i], "y": self.labels[i]}

    def get_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.images[idx], "y": self.labels[idx]}


@lru_cache(maxsize=1)
def _raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load

    d = _sk_load()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed stratified split: (train_idx, test_idx), each sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_test = int(round(TEST_FRACTION * len(idx)))
        test.extend(idx[:n_test])
        train.extend(idx[n_test:])
    return np.sort(np.array(train)), np.sort(np.array(test))


@lru_cache(maxsize=8)
def load_digits(split: Split = "train", size: int = 16) -> DigitsSplit:
    """Load a split of the bundled digits at ``size`` x ``size`` pixels in [-1, 1]."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split={split!r}; use 'train', 'test' or 'all'")
    if size < 8:
        raise ValueError(f"size must be >= 8 (the source is 8x8), got size={size}")
    images, labels = _raw()
    if split != "all":
        tr, te = split_indices(labels)
        sel = tr if split == "train" else te
        images, labels = images[sel], labels[sel]
    x = torch.from_numpy(images)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    return DigitsSplit(images=x, labels=torch.from_numpy(labels).clone())
