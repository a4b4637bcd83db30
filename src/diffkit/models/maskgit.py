"""A tiny class-conditional MaskGIT transformer over token grids (``digits-maskgit``, ``digits-fpd``).

MaskGIT (Chang et al. 2022, arXiv 2202.04200): a bidirectional transformer predicts the code of
every position of a partly masked token grid. Vocabulary = K codes + one mask id ``K`` (distinct
from every code); classes = ``num_classes`` + one *null* class (id ``num_classes``) used for
classifier-free guidance (label dropped during training).

Shapes::

    tokens (B, L) in [0, K]  -> tok_emb + pos_emb     (B, L, D)
    label  (B,)   in [0, C]  -> class token prefix     (B, 1 + L, D)
    depth x pre-norm blocks (SDPA, 4-D)                (B, 1 + L, D)
    norm + head, class token dropped                   (B, L, K)   logits over codes only
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.core.io import load_model_dir

DEFAULT_CONFIG = {
    "codebook_size": 64,
    "num_tokens": 64,
    "num_classes": 10,
    "dim": 64,
    "depth": 4,
    "heads": 4,
    "mlp_ratio": 2,
}


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, S, 3, self.heads, D // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x + self.proj(a.transpose(1, 2).reshape(B, S, D))
        return x + self.mlp(self.norm2(x))


class TinyMaskGIT(nn.Module):
    """Bidirectional token transformer with a class-token prefix; logits over the K codes."""

    def __init__(
        self,
        codebook_size: int = 64,
        num_tokens: int = 64,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: int = 2,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.config = {
            "codebook_size": codebook_size,
            "num_tokens": num_tokens,
            "num_classes": num_classes,
            "dim": dim,
            "depth": depth,
            "heads": heads,
            "mlp_ratio": mlp_ratio,
        }
        self.codebook_size = codebook_size
        self.mask_id = codebook_size
        self.num_tokens = num_tokens
        self.num_classes = num_classes
        self.null_class = num_classes
        self.tok_emb = nn.Embedding(codebook_size + 1, dim)
        self.cls_emb = nn.Embedding(num_classes + 1, dim)
        self.pos_emb = nn.Parameter(torch.randn(1, num_tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, codebook_size)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.cls_emb.weight, std=0.02)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        B, L = tokens.shape
        if self.num_tokens != L:
            raise ValueError(f"expected {self.num_tokens} tokens per sample, got {L}")
        x = torch.cat([self.cls_emb(labels)[:, None], self.tok_emb(tokens)], 1) + self.pos_emb
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, 1:]))


def build(config: dict) -> TinyMaskGIT:
    return TinyMaskGIT(**config)


def load_dir(path: str | Path) -> TinyMaskGIT:
    state, config = load_model_dir(path)
    model = build(config)
    model.load_state_dict(state)
    return model
