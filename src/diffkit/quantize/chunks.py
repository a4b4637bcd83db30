"""Chunk tagging and S1, final-quality-aware chunk weighting (Q-ARVD, arXiv 2605.21072, sec. S1).

``with chunk(k):`` marks every layer input captured during calibration with chunk index ``k`` (an
int for KV-cached rollouts, or a per-token tensor of chunk ids for models that process all frames in
one call, e.g. SkyReels-V2 diffusion forcing). The same tag lets a converted model quantize *only*
chunk k (:func:`only_chunks`), which is the paper's sensitivity protocol:

    e_k = mean over the whole video of (L_k - L_fp)^2,   s_k = e_k / sum_j e_j,   w_k = K s_k,

where L_k is the rollout with quantization enabled only during chunk k's forward calls and L_fp the
full-precision rollout with identical noise. Because chunks before k are unaffected, the FP prefix
is reused and only the suffix is regenerated (:func:`measure_chunk_sensitivity`). Alternatives: a
fitted exponential s_k = a r^k (:func:`fit_exponential`) or uniform weights.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Sequence

import torch

_STATE = threading.local()


def current_chunk() -> int | torch.Tensor | None:
    """The active chunk tag (int, per-token tensor of ids) or None outside any ``chunk``."""
    return getattr(_STATE, "chunk", None)


@contextlib.contextmanager
def chunk(k: int | torch.Tensor) -> Iterator[None]:
    """Tag everything computed inside with chunk ``k`` (int, or (tokens,) long tensor of ids)."""
    if isinstance(k, int) and k < 0:
        raise ValueError(f"chunk index must be >= 0, got {k}")
    prev = current_chunk()
    _STATE.chunk = k
    try:
        yield
    finally:
        _STATE.chunk = prev


def active_chunks() -> frozenset[int] | None:
    """Chunks in which converted layers quantize (None = all)."""
    return getattr(_STATE, "only", None)


@contextlib.contextmanager
def only_chunks(ks: Sequence[int] | None) -> Iterator[None]:
    """Inside, converted layers that keep FP weights quantize only the rows tagged with a chunk in
    ``ks`` (an int ``chunk(k)`` tags every row of a call; a per-token tensor tags each token)."""
    prev = active_chunks()
    _STATE.only = None if ks is None else frozenset(int(k) for k in ks)
    try:
        yield
    finally:
        _STATE.only = prev


def row_tags(x: torch.Tensor) -> torch.Tensor:
    """Chunk id of each row of ``x.reshape(-1, K)`` (-1 = untagged)."""
    rows = x.numel() // x.shape[-1]
    tag = current_chunk()
    if tag is None:
        return torch.full((rows,), -1, dtype=torch.long)
    if isinstance(tag, int):
        return torch.full((rows,), tag, dtype=torch.long)
    if x.dim() >= 2 and x.shape[-2] == tag.numel():
        return tag.to(torch.long).cpu().repeat(rows // tag.numel())
    return torch.full((rows,), -1, dtype=torch.long)  # e.g. text tokens: not frame-aligned


def active_rows(x: torch.Tensor, only: frozenset[int]) -> torch.Tensor:
    """(rows,) bool: rows of ``x.reshape(-1, K)`` whose chunk tag (int or per-token) is in ``only``.

    Untagged rows (no ``chunk`` context, or tokens not aligned with the per-token tags, such as
    text tokens) are not in any chunk, so they stay full precision under :func:`only_chunks`.
    """
    tags = row_tags(x)
    if not only:
        return torch.zeros(len(tags), dtype=torch.bool)
    return torch.isin(tags, torch.tensor(sorted(only), dtype=torch.long))


def normalized_weights(s: Sequence[float]) -> torch.Tensor:
    """w_k = s_k / mean(s) (so uniform sensitivity gives all ones)."""
    t = torch.tensor([float(v) for v in s], dtype=torch.float64)
    if (t < 0).any() or t.sum() <= 0:
        raise ValueError(f"chunk sensitivities must be >= 0 with a positive sum, got {list(s)}")
    return (t / t.mean()).float()


def exponential_weights(num_chunks: int, decay: float, scale: float = 1.0) -> list[float]:
    """s_k = a r^k normalised to sum 1 (the paper's measured s fits a = 0.44, r = 0.55)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    s = [scale * decay**k for k in range(num_chunks)]
    total = sum(s)
    return [v / total for v in s]


def fit_exponential(s: Sequence[float]) -> tuple[float, float]:
    """Least-squares log-linear fit s_k ~ a r^k over the positive entries; returns (a, r)."""
    ks = [k for k, v in enumerate(s) if v > 0]
    if len(ks) < 2:
        raise ValueError(f"need >= 2 positive sensitivities to fit, got {list(s)}")
    ys = [math.log(s[k]) for k in ks]
    kb, yb = sum(ks) / len(ks), sum(ys) / len(ys)
    slope = sum((k - kb) * (y - yb) for k, y in zip(ks, ys)) / sum((k - kb) ** 2 for k in ks)
    return math.exp(yb - slope * kb), math.exp(slope)


@torch.no_grad()
def measure_chunk_sensitivity(
    run: Callable[..., torch.Tensor], num_chunks: int, *, reuse_prefix: bool = True
) -> dict:
    """The Q-ARVD S1 protocol on a converted model that kept its FP weights.

    ``run(only, start_chunk=0, prefix=None)`` must roll out the model (same noise every call) with
    quantization restricted to the chunks in ``only`` (``[]`` = full precision) and return the
    final latents (B, frames, ...). With ``reuse_prefix`` the FP latents of chunks < k are passed
    as ``prefix`` and ``start_chunk=k``, so only the suffix is regenerated.

    Returns {"s": [s_k], "e": [e_k], "weights": [w_k], "fit": (a, r)}.
    """
    fp = run([])
    e = []
    for k in range(num_chunks):
        if reuse_prefix and k > 0:
            out = run([k], start_chunk=k, prefix=fp)
        else:
            out = run([k])
        e.append(float((out.double() - fp.double()).pow(2).mean()))
    total = sum(e)
    s = [v / total for v in e] if total > 0 else [1.0 / num_chunks] * num_chunks
    try:
        fit = fit_exponential(s)
    except ValueError:
        fit = (float("nan"), float("nan"))
    return {"s": s, "e": e, "weights": normalized_weights(s).tolist(), "fit": list(fit)}
