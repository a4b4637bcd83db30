"""Quantized KV cache for autoregressive (chunk-by-chunk) video diffusion.

In Self-Forcing-style inference every chunk's clean output is written once to a per-block cache of
self-attention keys/values (B, heads, S, head_dim) that every later chunk reads, so the cache grows
linearly with video length and dominates memory on long rollouts (Q-ARVD, arXiv 2605.21072, the
ARVD memory term; spec quantize-qarvd.md (e) 6). This module keeps it as int8 or nibble-packed
int4 codes with fp32 scales and dequantizes on read.

Quantizer (the uniform quantizer of :mod:`diffkit.quantize.primitives`, per group g):

* symmetric: Δ_g = max|x_g| / (2^(b-1) − 1), q = clamp(round(x/Δ_g), ±(2^(b-1) − 1)),
  x̂ = q·Δ_g (codes stored offset by 2^(b-1) as unsigned bytes);
* asymmetric: Δ_g = (max x_g − min x_g) / (2^b − 1), q = clamp(round((x − min x_g)/Δ_g), 0, 2^b − 1),
  x̂ = q·Δ_g + min x_g.

Without clipping |x̂ − x| ≤ Δ_g / 2 for every element. Groups (``granularity``): ``"token"``, one
scale per (batch, head, token) over head_dim (KIVI's choice for values); ``"channel"``, one scale per
(batch, head, channel) over the tokens of each appended segment (a chunk; KIVI's choice for keys,
whose outliers sit in fixed channels). Anchors: Quant VideoGen (2-bit KV, up to 7x KV memory, < 4 %
latency overhead on Self-Forcing-class models); a study of 33 KV methods on Self-Forcing Wan2.1
found soft-pruned INT4 at ~5.4x compression the practical point.

``quantize_kv_cache_(model, KVCacheConfig(...))`` installs the store on a model with a pluggable
cache (``model.kv_cache_factory``, e.g. :class:`diffkit.models.causal_wan.CausalWan`);
``remove_kv_cache_quantization_(model)`` restores the FP cache. It composes with ``quantize_``
(weights): the two touch different parts of the model.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from diffkit.quantize.primitives import pack_int4, unpack_int4

log = logging.getLogger(__name__)

KVGranularity = Literal["token", "channel"]
_GRANULARITIES = ("token", "channel")
_BITS = (8, 4)


@dataclass(frozen=True, kw_only=True)
class KVCacheConfig:
    """Quantized KV-cache options.

    bits: 8 (one byte per element) or 4 (two codes per byte).
    granularity: scale groups of the keys: ``"token"`` (per token and head, over head_dim) or
        ``"channel"`` (per channel and head, over each appended chunk's tokens).
    value_granularity: the same for the values; None = ``granularity``.
    symmetric: symmetric codes (scale only) or asymmetric (scale and minimum per group).
    """

    bits: int = 8
    granularity: KVGranularity = "token"
    value_granularity: KVGranularity | None = None
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in _BITS or isinstance(self.bits, bool):
            raise ValueError(f"bits={self.bits!r} is not supported; use one of {_BITS}")
        for name in ("granularity", "value_granularity"):
            value = getattr(self, name)
            if value not in _GRANULARITIES and not (name == "value_granularity" and value is None):
                raise ValueError(f"{name}={value!r} is not supported; use one of {_GRANULARITIES}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"symmetric={self.symmetric!r} must be a bool")

    @property
    def value_groups(self) -> KVGranularity:
        return self.value_granularity or self.granularity


class QuantizedKV(NamedTuple):
    """Codes of one (B, heads, S, head_dim) tensor: uint8 codes (int4: packed two per byte along
    head_dim), fp32 ``scale`` and ``offset`` (asymmetric only) broadcasting against it."""

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor | None
    bits: int
    head_dim: int
    dtype: torch.dtype

    def nbytes(self) -> int:
        parts = [self.codes, self.scale] + ([] if self.offset is None else [self.offset])
        return sum(p.numel() * p.element_size() for p in parts)


def _reduce_dim(granularity: KVGranularity) -> int:
    return -1 if granularity == "token" else -2


def quantize_kv(
    x: torch.Tensor, bits: int, granularity: KVGranularity, symmetric: bool = True
) -> QuantizedKV:
    """Quantize keys or values (..., S, head_dim) group-wise (module docstring equations)."""
    xf = x.float()
    dim = _reduce_dim(granularity)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (xf.abs().amax(dim, keepdim=True) / qmax).clamp_min(1e-12)
        q = torch.round(xf / scale).clamp(-qmax, qmax) + 2 ** (bits - 1)
        offset = None
    else:
        lo = xf.amin(dim, keepdim=True)
        scale = ((xf.amax(dim, keepdim=True) - lo) / (2**bits - 1)).clamp_min(1e-12)
        q = torch.round((xf - lo) / scale).clamp(0, 2**bits - 1)
        offset = lo
    codes = q.to(torch.uint8)
    if bits == 4:
        codes = pack_int4(codes)
    return QuantizedKV(codes, scale, offset, bits, x.shape[-1], x.dtype)


def dequantize_kv(q: QuantizedKV, out: torch.Tensor | None = None) -> torch.Tensor:
    """x̂ from :func:`quantize_kv`'s codes, in the input's dtype.

    ``out``: an fp32 (..., S, head_dim) tensor (e.g. a slice of a larger buffer) to write x̂ into
    in place; the codes are widened straight into it, without intermediate tensors.
    """
    shape = (*q.codes.shape[:-1], q.head_dim)
    if out is None:
        out = torch.empty(shape, dtype=torch.float32, device=q.codes.device)
    if q.bits == 8:
        out.copy_(q.codes)
    elif q.head_dim % 2 == 0:  # low nibble -> even channel, high nibble -> odd channel
        pairs = out.unflatten(-1, (q.head_dim // 2, 2))
        pairs[..., 0].copy_(q.codes & 0x0F)
        pairs[..., 1].copy_(q.codes >> 4)
    else:
        out.copy_(unpack_int4(q.codes, q.head_dim))
    if q.offset is None:
        out.sub_(2 ** (q.bits - 1)).mul_(q.scale)
    else:
        out.mul_(q.scale).add_(q.offset)
    return out.to(q.dtype)


def fake_quantize_kv(
    x: torch.Tensor, bits: int, granularity: KVGranularity, symmetric: bool = True
) -> torch.Tensor:
    """dequantize_kv(quantize_kv(x)): the values a quantized cache returns for ``x``."""
    return dequantize_kv(quantize_kv(x, bits, granularity, symmetric))


class QuantizedKVCache:
    """Per-block KV cache holding codes; same interface as ``causal_wan.KVCache``.

    Each :meth:`append` (one chunk's t = 0 refresh pass) is quantized on its own, so per-channel
    scales never change once written, then concatenated to the block's codes and scales (per-token
    scales along tokens; per-channel ones as one row per chunk). :meth:`get` dequantizes a block in
    one pass (only one block's keys/values exist in full precision at a time).
    """

    def __init__(self, layers: int, config: KVCacheConfig) -> None:
        self.config = config
        self.frames = 0
        self.keys: list[QuantizedKV | None] = [None] * layers
        self.values: list[QuantizedKV | None] = [None] * layers
        self.lengths: list[list[int]] = [[] for _ in range(layers)]  # tokens per appended chunk

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        c = self.config
        self.keys[i] = _concat(self.keys[i], quantize_kv(k, c.bits, c.granularity, c.symmetric))
        self.values[i] = _concat(
            self.values[i], quantize_kv(v, c.bits, c.value_groups, c.symmetric)
        )
        self.lengths[i].append(k.shape[-2])

    def get(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.keys[i] is None:
            return None, None
        c, n = self.config, self.lengths[i]
        return _dequantize(self.keys[i], c.granularity, n), _dequantize(
            self.values[i], c.value_groups, n
        )

    def nbytes(self) -> int:
        """Bytes held: codes (int4 packed two per byte) + fp32 scales (+ offsets)."""
        return sum(q.nbytes() for q in self.keys + self.values if q is not None)


def _concat(old: QuantizedKV | None, new: QuantizedKV) -> QuantizedKV:
    """Append ``new``'s tokens (codes, and scales/offsets: per token or one row per chunk)."""
    if old is None:
        return new
    offset = None if new.offset is None else torch.cat([old.offset, new.offset], -2)
    return new._replace(
        codes=torch.cat([old.codes, new.codes], -2),
        scale=torch.cat([old.scale, new.scale], -2),
        offset=offset,
    )


def _dequantize(q: QuantizedKV, granularity: KVGranularity, lengths: list[int]) -> torch.Tensor:
    """Dequantize a block's concatenated codes; per-channel scales hold one row per chunk."""
    if granularity == "token" or len(lengths) == 1:
        return dequantize_kv(q)
    if len(set(lengths)) == 1:  # equal chunks: (..., chunks, L, d) against (..., chunks, 1, d)
        split = q._replace(
            codes=q.codes.unflatten(-2, (len(lengths), lengths[0])),
            scale=q.scale.unsqueeze(-2),
            offset=None if q.offset is None else q.offset.unsqueeze(-2),
        )
        return dequantize_kv(split).flatten(-3, -2)
    buf = torch.empty(*q.codes.shape[:-1], q.head_dim, device=q.codes.device)
    start = 0
    for j, n in enumerate(lengths):
        rows = slice(j, j + 1)
        seg = q._replace(
            codes=q.codes[..., start : start + n, :],
            scale=q.scale[..., rows, :],
            offset=None if q.offset is None else q.offset[..., rows, :],
        )
        dequantize_kv(seg, out=buf[..., start : start + n, :])
        start += n
    return buf.to(q.dtype)


def quantize_kv_cache_(model: nn.Module, config: KVCacheConfig) -> nn.Module:
    """Make ``model``'s rollouts use a :class:`QuantizedKVCache` (in place; returns the model).

    The model must expose a pluggable cache store (``kv_cache_factory``, as ``CausalWan`` does).
    A runtime option: it is not saved with the weights; apply it again after loading.
    """
    if not isinstance(config, KVCacheConfig):
        raise ValueError(f"config={type(config).__name__} must be a KVCacheConfig")
    if not hasattr(model, "kv_cache_factory"):
        raise ValueError(
            f"{type(model).__name__} has no pluggable KV cache (kv_cache_factory attribute)"
        )
    model.kv_cache_factory = functools.partial(QuantizedKVCache, config=config)
    log.info("KV cache quantized: %s", config)
    return model


def remove_kv_cache_quantization_(model: nn.Module) -> nn.Module:
    """Restore the model's full-precision KV cache (in place; returns the model)."""
    if hasattr(model, "kv_cache_factory"):
        model.kv_cache_factory = None
    return model


def kv_cache_config(model: nn.Module) -> KVCacheConfig | None:
    """The installed :class:`KVCacheConfig`, or None when the cache is full precision."""
    factory = getattr(model, "kv_cache_factory", None)
    return factory.keywords.get("config") if isinstance(factory, functools.partial) else None
