"""Patch k-means tokenizer for 16x16 digits: 2x2 pixel patches -> K = 64 codes, an 8x8 token grid.

The tokenizer of the FPD zoo (``digits-patch-tokenizer``; spec distill-fpd.md (g), option A). Each
non-overlapping 2x2 patch is replaced by its nearest codebook vector (k-means centroid). Decoding is
a codebook lookup followed by un-patchify, so ``decode`` is *linear* in the embeddings and
straight-through gradients through it are exact.

Shapes for a (B, 1, 16, 16) input::

    patchify        (B, 64, 4)      64 patches of 2x2 = 4 pixels, row-major over the 8x8 grid
    encode          (B, 64)         nearest code ids in [0, K)
    embed(ids)      (B, 64, 4)      codebook rows
    decode(emb)     (B, 1, 16, 16)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffkit.core.io import load_model_dir

DEFAULT_CONFIG = {"codebook_size": 64, "patch_size": 2, "image_size": 16, "channels": 1}


class PatchTokenizer(nn.Module):
    """Nearest-centroid tokenizer over non-overlapping ``patch_size`` patches."""

    def __init__(
        self, codebook_size: int = 64, patch_size: int = 2, image_size: int = 16, channels: int = 1
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"image_size={image_size} is not a multiple of patch_size={patch_size}"
            )
        self.config = {
            "codebook_size": codebook_size,
            "patch_size": patch_size,
            "image_size": image_size,
            "channels": channels,
        }
        self.codebook_size = codebook_size
        self.patch_size = patch_size
        self.image_size = image_size
        self.channels = channels
        self.grid = image_size // patch_size
        self.num_tokens = self.grid**2
        self.embed_dim = channels * patch_size**2
        self.register_buffer("codebook", torch.zeros(codebook_size, self.embed_dim))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L, C*p*p)."""
        B, C, H, W = x.shape
        if (self.channels, self.image_size, self.image_size) != (C, H, W):
            raise ValueError(
                f"PatchTokenizer expects ({self.channels}, {self.image_size}, {self.image_size}) "
                f"images, got {(C, H, W)}"
            )
        p, g = self.patch_size, self.grid
        x = x.reshape(B, C, g, p, g, p).permute(0, 2, 4, 1, 3, 5)  # (B, g, g, C, p, p)
        return x.reshape(B, g * g, C * p * p)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, C*p*p) -> (B, C, H, W)."""
        B = patches.shape[0]
        p, g, C = self.patch_size, self.grid, self.channels
        x = patches.reshape(B, g, g, C, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(B, C, g * p, g * p)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> token ids (B, L)."""
        patches = self.patchify(x.float())
        d = torch.cdist(patches, self.codebook[None].expand(len(patches), -1, -1))
        return d.argmin(-1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> codebook embeddings (B, L, d)."""
        if ids.min() < 0 or ids.max() >= self.codebook_size:
            raise ValueError(
                f"token ids must be codes in [0, {self.codebook_size}), got range "
                f"[{int(ids.min())}, {int(ids.max())}] (is a mask id left in the grid?)"
            )
        return self.codebook[ids]

    def decode(self, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, L, d) -> images (B, C, H, W); linear, so differentiable."""
        return self.unpatchify(emb)

    def decode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(ids))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the codebook."""
        return self.decode_ids(self.encode(x))


def fit_kmeans(
    patches: torch.Tensor, k: int, iters: int = 50, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding and dead-code restarts; returns (k, d) centroids."""
    x = patches.double()
    n = len(x)
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    idx = [int(torch.randint(n, (1,), generator=generator))]
    d2 = (x - x[idx[0]]).pow(2).sum(1)
    for _ in range(k - 1):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1 / n)
        j = int(torch.multinomial(probs, 1, generator=generator))
        idx.append(j)
        d2 = torch.minimum(d2, (x - x[j]).pow(2).sum(1))
    c = x[idx].clone()
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        alive = counts > 0
        c[alive] = sums[alive] / counts[alive, None]
        if (~alive).any():  # dead-code restart: move dead codes to the worst-fit points
            err = (x - c[assign]).pow(2).sum(1)
            worst = err.topk(int((~alive).sum())).indices
            c[~alive] = x[worst]
    return c.float()


def build(config: dict) -> PatchTokenizer:
    return PatchTokenizer(**config)


def load_dir(path: str | Path) -> PatchTokenizer:
    state, config = load_model_dir(path)
    model = build(config)
    model.load_state_dict(state)
    return model
