"""Real integer GEMMs for W8A8 (and W4-storage) linear layers.

* CPU: oneDNN through ``torch.ops.onednn.qlinear_prepack`` + ``qlinear_pointwise`` (uint8 activation
  with a static per-tensor scale/zero point, int8 per-output-channel symmetric weight, fp32 out).
  It takes plain uint8/int8 tensors, so no quantized-tensor objects are involved.
* CUDA: ``torch._int_mm`` (int8 x int8 -> int32) with the activation zero point folded in.
* Otherwise (op missing from the installed torch): a simulated path (dequantize + ``F.linear``),
  announced once in the log with the name of the fallback.

On AVX2 CPUs without VNNI, oneDNN's u8 x s8 kernel can saturate int16 intermediate sums when the
activation codes use the full 0..255 range (spec quantize-qarvd.md (f)); :func:`full_range_exact`
probes this once and the converter then uses 7-bit activation codes (0..127), which are exact.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

Backend = str  # "onednn" | "cuda" | "simulate"


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


def prepack(w_int8: torch.Tensor, backend: Backend) -> torch.Tensor:
    """Prepare an (N, K) int8 weight for :func:`int8_linear`."""
    if backend == "onednn":
        return torch.ops.onednn.qlinear_prepack(w_int8.contiguous(), None)
    if backend == "cuda":
        return w_int8.t().contiguous()  # (K, N) for _int_mm
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
    """fp32 ``(x_q - x_zero) x_scale @ (w * w_scale)^T + bias`` for x_q uint8 (M, K)."""
    if backend == "onednn":
        zeros = torch.zeros(w_scale.numel(), dtype=torch.long)
        return torch.ops.onednn.qlinear_pointwise(
            x_q, float(x_scale), int(x_zero), packed, w_scale.float(), zeros, bias,
            1.0, 0, torch.float32, "none", [None], "",
        )  # fmt: skip
    if backend == "cuda":
        xs = (x_q.to(torch.int16) - 128).to(torch.int8)  # shift codes into int8
        M = xs.shape[0]
        pad = max(0, 17 - M)  # _int_mm needs M > 16
        if pad:
            xs = F.pad(xs, (0, 0, 0, pad))
        acc = torch._int_mm(xs, packed)[:M]  # (M, N) int32, = sum (q - 128) w
        colsum = packed.to(torch.int32).sum(0)  # sum_k w_kn
        acc = acc + (128 - int(x_zero)) * colsum
        out = acc.float() * (float(x_scale) * w_scale.float())
        return out + bias if bias is not None else out
    w = packed.float() * w_scale.float()[:, None]
    return F.linear((x_q.float() - x_zero) * x_scale, w, bias)


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
    out = int8_linear(xq, 1e-2, 3, prepack(wq, "onednn"), ws, None, "onednn")
    exact = ((xq.double() - 3) @ wq.double().T) * 1e-5
    err = float((out.double() - exact).abs().max() / exact.abs().max())
    if err > tol:
        _warn_once(
            "range",
            f"this CPU's oneDNN u8 x s8 GEMM is not exact with 8-bit activation codes (rel. err "
            f"{err:.2e}, no VNNI); using 7-bit activation codes (0..127) on the kernel path",
        )
    return err <= tol
