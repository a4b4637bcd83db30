"""Real integer GEMMs for W8A8 (and W4-storage) linear layers, and the one-pass activation quantizer.

* CPU: oneDNN through ``torch.ops.onednn.qlinear_prepack`` + ``qlinear_pointwise`` (uint8 activation
  with a static per-tensor scale/zero point, int8 per-output-channel symmetric weight; bias added
  and the output written in the caller's dtype (fp32 or bf16) inside the kernel). It takes plain
  uint8/int8 tensors, so no quantized-tensor objects are involved in the GEMM.
* CUDA: ``torch._int_mm`` (int8 x int8 -> int32) with the activation zero point folded in through
  the precomputed column sums of the weight.
* Otherwise (op missing from the installed torch): a simulated path (dequantize + ``F.linear``),
  announced once in the log with the name of the fallback.

Activations are quantized in one fused pass where torch has one (``quantize_per_tensor`` on CPU
for full 8-bit codes), else with the reference ``clamp(round(x / s) + z, 0, qmax)``; the simulator
and the kernel path call the same function, so they see the same integers.

On AVX2 CPUs without VNNI, oneDNN's u8 x s8 kernel can saturate int16 intermediate sums when the
activation codes use the full 0..255 range (spec quantize-qarvd.md (f)); :func:`full_range_exact`
probes this once and the converter then uses 7-bit activation codes (0..127), which are exact.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Backend = str  # "onednn" | "cuda" | "simulate"
BACKENDS = ("auto", "onednn", "cuda", "simulate")


@functools.cache
def onednn_available() -> bool:
    ops = torch.ops.onednn
    ok = hasattr(ops, "qlinear_prepack") and hasattr(ops, "qlinear_pointwise")
    return bool(ok)


_WARNED: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg)


def resolve_backend(requested: str, device: torch.device | str = "cpu") -> Backend:
    """The backend that will actually run; logs (once) when it falls back to simulation."""
    if requested not in BACKENDS:
        raise ValueError(f"backend={requested!r} is not one of {', '.join(BACKENDS)}")
    dev = torch.device(device)
    if requested == "simulate":
        return "simulate"
    if dev.type == "cuda":
        if requested in ("auto", "cuda"):
            return "cuda"
        raise ValueError(f"backend={requested!r} cannot run on device {dev}; use 'cuda' or 'auto'")
    if requested == "cuda":
        raise ValueError("backend='cuda' needs the model on a CUDA device")
    if onednn_available():
        return "onednn"
    _warn_once(
        "onednn",
        "torch.ops.onednn.qlinear_prepack / qlinear_pointwise are missing from torch "
        f"{torch.__version__}; falling back to the simulated path (dequantize + F.linear in fp32). "
        "Outputs are identical up to fp32 rounding, but there is no int8 speed-up.",
    )
    return "simulate"


# ----------------------------------------------------------------------------- activations
@functools.cache
def _fused_quantize_ok() -> bool:
    """Does ``quantize_per_tensor`` exist and agree with the reference formula on this build?"""
    try:
        x = torch.linspace(-3, 3, 997)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = torch.quantize_per_tensor(x, 0.0251, 121, torch.quint8).int_repr()
    except (RuntimeError, AttributeError):
        return False
    ref = torch.clamp(torch.round(x * (1 / 0.0251)) + 121, 0, 255).to(torch.uint8)
    return bool((got.int() - ref.int()).abs().max() <= 1)


def quantize_act(x: torch.Tensor, scale: float, zero: int, qmax: int) -> torch.Tensor:
    """uint8 codes ``clamp(round(x / scale) + zero, 0, qmax)`` of a float (M, K) tensor.

    Full 8-bit codes on CPU take torch's fused quantizer (one pass instead of five); it rounds
    ``x * (1 / scale)``, which can differ from ``x / scale`` by one code at exact ties. Both
    execution modes call this function, so the simulator and the kernel see the same integers.
    """
    if qmax == 255 and x.device.type == "cpu" and _fused_quantize_ok():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.quantize_per_tensor(x.float(), scale, zero, torch.quint8).int_repr()
    return torch.clamp(torch.round(x.float() / scale) + zero, 0, qmax).to(torch.uint8)


# ----------------------------------------------------------------------------- GEMMs
@dataclass
class PackedWeight:
    """An int8 (N, K) weight prepared for one backend, with its per-row fp32 scales."""

    weight: torch.Tensor  # oneDNN: opaque prepacked; cuda: (K, N) int8; simulate: (N, K) fp32
    scale: torch.Tensor  # (N,) fp32
    zeros: torch.Tensor | None = None  # oneDNN weight zero points (all 0), allocated once
    colsum: torch.Tensor | None = None  # cuda: sum_k w_kn (int32), for the activation zero point


def pack_weight(w_int8: torch.Tensor, w_scale: torch.Tensor, backend: Backend) -> PackedWeight:
    """Prepare an (N, K) int8 weight and its (N,) scales for :func:`linear_packed` (once)."""
    scale = w_scale.float().contiguous()
    if backend == "onednn":
        packed = torch.ops.onednn.qlinear_prepack(w_int8.contiguous(), None)
        zeros = torch.zeros(scale.numel(), dtype=torch.long, device=scale.device)
        return PackedWeight(packed, scale, zeros=zeros)
    if backend == "cuda":
        wt = w_int8.t().contiguous()  # (K, N) for _int_mm
        return PackedWeight(wt, scale, colsum=wt.to(torch.int32).sum(0))
    return PackedWeight(w_int8.float() * scale[:, None], scale)


def linear_packed(
    x_q: torch.Tensor,
    x_scale: float,
    x_zero: int,
    w: PackedWeight,
    bias: torch.Tensor | None,
    backend: Backend,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x_q - x_zero) x_scale @ (w * w_scale)^T + bias`` for x_q uint8 (M, K), in ``out_dtype``."""
    if backend == "onednn":
        return torch.ops.onednn.qlinear_pointwise(
            x_q, float(x_scale), int(x_zero), w.weight, w.scale, w.zeros, bias,
            1.0, 0, out_dtype, "none", [None], "",
        )  # fmt: skip
    if backend == "cuda":
        xs = (x_q.to(torch.int16) - 128).to(torch.int8)  # shift codes into int8
        M = xs.shape[0]
        pad = max(0, 17 - M)  # _int_mm needs M > 16
        if pad:
            xs = F.pad(xs, (0, 0, 0, pad))
        acc = torch._int_mm(xs, w.weight)[:M]  # (M, N) int32, = sum (q - 128) w
        acc = acc + (128 - int(x_zero)) * w.colsum
        out = acc.float() * (float(x_scale) * w.scale)
        out = out + bias if bias is not None else out
        return out.to(out_dtype)
    out = F.linear((x_q.float() - x_zero) * x_scale, w.weight, bias)
    return out.to(out_dtype)


def prepack(w_int8: torch.Tensor, backend: Backend) -> torch.Tensor:
    """The backend's form of an (N, K) int8 weight (for :func:`int8_linear`)."""
    if backend == "onednn":
        return torch.ops.onednn.qlinear_prepack(w_int8.contiguous(), None)
    if backend == "cuda":
        return w_int8.t().contiguous()
    return w_int8


def int8_linear(
    x_q: torch.Tensor,
    x_scale: float,
    x_zero: int,
    packed: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    backend: Backend,
) -> torch.Tensor:
    """One-off form of :func:`linear_packed` on a :func:`prepack` weight, fp32 out (a layer
    prepares its :class:`PackedWeight` once instead)."""
    scale = w_scale.float()
    if backend == "onednn":
        w = PackedWeight(packed, scale, zeros=torch.zeros(scale.numel(), dtype=torch.long))
    elif backend == "cuda":
        w = PackedWeight(packed, scale, colsum=packed.to(torch.int32).sum(0))
    else:
        w = PackedWeight(packed.float() * scale[:, None], scale)
    return linear_packed(x_q, x_scale, x_zero, w, bias, backend)


@functools.cache
def full_range_exact(tol: float = 1e-5) -> bool:
    """Does the CPU int8 kernel reproduce the exact integer result with codes in 0..255?"""
    if not onednn_available():
        return True
    g = torch.Generator().manual_seed(0)
    M, K, N = 64, 256, 64
    xq = torch.randint(0, 256, (M, K), generator=g).to(torch.uint8)
    wq = torch.randint(-127, 128, (N, K), generator=g).to(torch.int8)
    ws = torch.full((N,), 1e-3)
    out = linear_packed(xq, 1e-2, 3, pack_weight(wq, ws, "onednn"), None, "onednn")
    exact = ((xq.double() - 3) @ wq.double().T) * 1e-5
    err = float((out.double() - exact).abs().max() / exact.abs().max())
    if err > tol:
        _warn_once(
            "range",
            f"this CPU's oneDNN u8 x s8 GEMM is not exact with 8-bit activation codes (rel. err "
            f"{err:.2e}, no VNNI); using 7-bit activation codes (0..127) on the kernel path",
        )
    return err <= tol
