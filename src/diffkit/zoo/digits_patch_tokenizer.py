"""Zoo recipe: ``digits-patch-tokenizer``, k-means (K = 64) on the 2x2 patches of the train split.

Spec distill-fpd.md (g), tokenizer A. Records reconstruction MSE / PSNR on the held-out split and
codebook usage (fraction of codes used, perplexity). A few seconds.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from diffkit.core.io import atomic_write_json, save_model_dir
from diffkit.core.metrics import psnr
from diffkit.data.digits import load_digits
from diffkit.models.patch_tokenizer import DEFAULT_CONFIG, build, fit_kmeans

log = logging.getLogger(__name__)

SETTINGS = {"kmeans_iters": 40}


def usage_stats(ids: torch.Tensor, k: int) -> dict[str, float]:
    counts = torch.bincount(ids.flatten(), minlength=k).double()
    p = counts / counts.sum()
    ent = -(p[p > 0] * p[p > 0].log()).sum()
    return {"codebook_usage": float((counts > 0).double().mean()), "perplexity": float(ent.exp())}


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    tok = build(DEFAULT_CONFIG)
    tr, te = load_digits("train"), load_digits("test")
    patches = tok.patchify(tr.images).reshape(-1, tok.embed_dim)
    tok.codebook.copy_(fit_kmeans(patches, tok.codebook_size, SETTINGS["kmeans_iters"], g))
    rec = tok(te.images)
    ids = tok.encode(te.images)
    metrics = {
        "test_recon_mse": float((rec - te.images).pow(2).mean()),
        "test_psnr_db": float(psnr(rec, te.images).mean()),
        **usage_stats(ids, tok.codebook_size),
        "seed": seed,
        "settings": SETTINGS,
    }
    save_model_dir(out_dir, tok.state_dict(), tok.config)
    atomic_write_json(Path(out_dir) / "metrics.json", metrics)
    log.info("digits-patch-tokenizer: %s", metrics)
    return metrics
