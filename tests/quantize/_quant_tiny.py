"""Shared tiny fixtures for the quantize tests (random-init causal model, small config)."""

from __future__ import annotations

import dataclasses

import torch

from diffkit.models import causal_wan as cw
from diffkit.quantize import chunk, quantize_

TINY = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 2, "num_frames": 6}


def tiny_model(seed: int = 0) -> cw.CausalWan:
    torch.manual_seed(seed)
    return cw.build(TINY).eval()


def tiny_inputs(n: int = 2, seed: int = 0):
    labels = torch.stack([torch.arange(n) % 10, torch.full((n,), -1)], 1)
    return labels, cw.rollout_noise(n, TINY, torch.Generator().manual_seed(seed))


def quantized(cfg, seed: int = 0, keep_fp: bool = False):
    model = tiny_model(seed)
    labels, noise = tiny_inputs()
    quantize_(model, cfg)
    cw.rollout(model, labels, noise, chunk_context=chunk)
    quantize_(model, dataclasses.replace(cfg, step="convert"), keep_fp=keep_fp)
    return model
