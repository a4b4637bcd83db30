"""Uniform affine quantization primitives (pure functions over tensors).

q = clamp(round(x / scale) + zero_point, qmin, qmax),  x_hat = (q - zero_point) * scale.

Granularities are typed (torchao's ``granularity.py`` shape): :class:`PerTensor` or
:class:`PerChannel` (one (scale, zero point) per slice along ``axis``). Asymmetric quantizers use
levels [0, 2^b - 1]; symmetric ones [-(2^(b-1) - 1), 2^(b-1) - 1] with zero point 0. The percentile
search is the initialisation of Q-ARVD (arXiv 2605.21072; reference code ``quant/quantizer.py``):
try clip ranges [q(1-p), q(p)] for p in {0.999, 0.9999, 0.99999} and keep the lowest MSE. 4-bit
values are stored two per byte (:func:`pack_int4`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SUPPORTED_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


@dataclass(frozen=True)
class PerTensor:
    """One (scale, zero point) for the whole tensor."""


@dataclass(frozen=True)
class PerChannel:
    """One (scale, zero point) per slice along ``axis`` (0 = output channels of a weight)."""

    axis: int = 0


Granularity = PerTensor | PerChannel


@dataclass(frozen=True)
class QParams:
    """Quantization parameters; ``scale``/``zero_point`` broadcast against the tensor."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: int
    qmax: int

    @property
    def bits(self) -> int:
        return int(self.qmax - self.qmin).bit_length()


def check_bits(bits: int, what: str = "bits") -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"{what}={bits} is not supported; use one of {SUPPORTED_BITS}")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer levels: symmetric [-(2^(b-1)-1), 2^(b-1)-1] or asymmetric [0, 2^b - 1]."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _reduce(x: torch.Tensor, granularity: Granularity, fn) -> torch.Tensor:
    if isinstance(granularity, PerTensor):
        return fn(x.reshape(-1), 0).reshape([1] * x.dim())
    axis = granularity.axis % x.dim()
    moved = x.movedim(axis, 0).reshape(x.shape[axis], -1)
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return fn(moved, 1).reshape(shape)


def _fp16_exact(scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Round scales *up* to fp16-representable values (so they are stored as fp16 at rest without
    loss and the range still covers [lo, hi]); 16-bit quantizers keep fp32 scales."""
    if bits > 8:
        return scale
    h = scale.clamp(6.2e-5, 6.5e4).half()
    h = torch.where(h.float() < scale, torch.nextafter(h, torch.full_like(h, float("inf"))), h)
    return h.float()


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> QParams:
    """(scale, zero point) that map [lo, hi] (broadcastable tensors) onto the integer levels."""
    qmin, qmax = qrange(bits, symmetric)
    lo = torch.minimum(lo, torch.zeros_like(lo)).float()
    hi = torch.maximum(hi, torch.zeros_like(hi)).float()
    if symmetric:
        scale = _fp16_exact((torch.maximum(-lo, hi) / qmax).clamp_min(1e-8), bits)
        zp = torch.zeros_like(scale)
    else:
        scale = _fp16_exact(((hi - lo) / (qmax - qmin)).clamp_min(1e-8), bits)
        zp = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return QParams(scale, zp, qmin, qmax)


def choose_qparams(
    x: torch.Tensor, bits: int, *, symmetric: bool = False, granularity: Granularity = PerTensor()
) -> QParams:
    """Min-max (round-to-nearest) quantization parameters of ``x``."""
    lo = _reduce(x, granularity, lambda t, d: t.amin(d))
    hi = _reduce(x, granularity, lambda t, d: t.amax(d))
    return qparams_from_range(lo, hi, bits, symmetric)


def quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """Integer codes (as float) clamp(round(x / scale) + zp, qmin, qmax)."""
    return torch.clamp(torch.round(x / qp.scale) + qp.zero_point, qp.qmin, qp.qmax)


def dequantize(q: torch.Tensor, qp: QParams) -> torch.Tensor:
    return (q.float() - qp.zero_point) * qp.scale


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """dequantize(quantize(x)); 16-bit is (nearly) the identity."""
    return dequantize(quantize(x, qp), qp)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round with a straight-through gradient."""
    return x + (torch.round(x) - x).detach()


def fake_quantize_lsq(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int):
    """Fake quantization differentiable in ``scale`` (LSQ, Esser et al. arXiv 1902.08153)."""
    q = torch.clamp(round_ste(x / scale) + zp, qmin, qmax)
    return (q - zp) * scale


def percentile_search(
    x: torch.Tensor,
    bits: int,
    *,
    symmetric: bool = False,
    granularity: Granularity = PerTensor(),
    percentiles: tuple[float, ...] = (0.999, 0.9999, 0.99999),
    sample_weight: torch.Tensor | None = None,
    include_minmax: bool = True,
) -> QParams:
    """Clip-range search: for each candidate p use [q(1-p), q(p)], keep the lowest-MSE one.

    Per channel the choice is made per slice. ``sample_weight`` (one weight per row of a 2-D
    ``x``, per-tensor only) turns the score into a weighted mean of per-row MSE: Q-ARVD's
    chunk-weighted activation initialisation (S1).
    """
    cands = list(percentiles) + ([1.0] if include_minmax else [])
    if isinstance(granularity, PerChannel):
        axis = granularity.axis % x.dim()
        flat = x.movedim(axis, 0).reshape(x.shape[axis], -1).float()
        shape = [1] * x.dim()
        shape[axis] = x.shape[axis]
        srt = flat.sort(dim=1).values
        best_err = torch.full((flat.shape[0],), float("inf"))
        best_lo, best_hi = flat.amin(1), flat.amax(1)
        for p in cands:
            if p >= 1.0:
                lo, hi = flat.amin(1), flat.amax(1)
            else:
                lo, hi = _quantiles(srt, (1 - p, p))
            qp = qparams_from_range(lo[:, None], hi[:, None], bits, symmetric)
            err = (fake_quantize(flat, qp) - flat).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, lo, best_lo), torch.where(better, hi, best_hi)
        return qparams_from_range(best_lo.reshape(shape), best_hi.reshape(shape), bits, symmetric)
    flat = x.reshape(-1).float()
    srt = flat.sort().values[None]
    best = None
    for p in cands:
        if p >= 1.0:
            lo, hi = flat.min(), flat.max()
        else:
            lo, hi = (v[0] for v in _quantiles(srt, (1 - p, p)))
        qp = qparams_from_range(lo.reshape(1), hi.reshape(1), bits, symmetric)
        sq = (fake_quantize(x.float(), qp) - x.float()).pow(2)
        if sample_weight is not None:
            row = sq.reshape(sq.shape[0], -1).mean(1)
            err = float((row * sample_weight).sum() / sample_weight.sum())
        else:
            err = float(sq.mean())
        if best is None or err < best[0]:
            best = (err, qp)
    qp = best[1]
    return QParams(
        qp.scale.reshape([1] * x.dim()), qp.zero_point.reshape([1] * x.dim()), qp.qmin, qp.qmax
    )


def _quantiles(sorted_rows: torch.Tensor, ps: tuple[float, ...]) -> list[torch.Tensor]:
    """Linear-interpolated quantiles of each row of an already sorted (R, n) tensor."""
    n = sorted_rows.shape[1]
    out = []
    for p in ps:
        pos = p * (n - 1)
        i = int(pos)
        j = min(i + 1, n - 1)
        out.append(sorted_rows[:, i] + (pos - i) * (sorted_rows[:, j] - sorted_rows[:, i]))
    return out


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack integer codes in [0, 15] along the last dim, two per byte (low nibble first)."""
    q = q.to(torch.uint8)
    if q.min() < 0 or q.max() > 15:
        raise ValueError("pack_int4 expects codes in [0, 15]")
    if q.shape[-1] % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, last_dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 (..., ceil(n/2)) -> uint8 codes (..., n)."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).flatten(-2)[..., :last_dim]
