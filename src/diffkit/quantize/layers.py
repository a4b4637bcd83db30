"""``QuantLinear``: the module that replaces an ``nn.Linear`` through prepare -> calibrate -> convert.

* **observing** (after ``prepare``): runs the FP layer and captures a bounded, seeded reservoir of
  input rows per chunk tag (``max_rows_per_chunk``), plus streaming per-channel |x| maxima over
  *all* rows (SmoothQuant). Memory per layer is O(chunks x rows x K), not O(data).
* **converted**: every quantization parameter is a (persistent) buffer, so ``state_dict()``,
  ``save_pretrained`` and :func:`~diffkit.quantize.storage.load_quantized` carry all of it:

  ================  =========================================================================
  ``qmeta``         int64 [format, w_bits, in_features, out_features, n_outlier]
  ``perm``          int32 (K,) S2 column order, outlier columns first (dual-scale layers only)
  ``smooth``        fp32 (K,) SmoothQuant input scale (SmoothQuant only)
  ``bias``          fp32 (N,)
  ``w_int_{g}``     int8 (N, K_g) codes ``q - z`` (5-8 bit weights; 8-bit ones are symmetric)
  ``w_packed_{g}``  uint8 (N, ceil(K_g / 2)) nibble-packed codes ``q`` in [0, 15] (<= 4 bit),
  ``w_zero_{g}``    uint8 (N,) their zero points; W4 stays packed in memory
  ``w_scale_{g}``   fp16 (N,) per-output-channel weight scales (chosen fp16-exact)
  ``act_{g}``       fp32 [scale, zero point, qmax] of the static per-tensor activation quantizer
  ``w_fp_{g}``      fp32 (N, K_0) the outlier group kept in full precision (``outlier_branch='fp'``)
  ================  =========================================================================

  Group 0 is the outlier group when ``n_outlier > 0``. ``.to(dtype)`` leaves these buffers in
  their dtypes (scales stay fp16/fp32); the output follows the input dtype.

``forward`` quantizes the input in one pass (:func:`~diffkit.quantize.kernels.quantize_act`) in the
original column order: the main group runs one GEMM over all K columns with a weight whose outlier
columns are zero, so no activation copy is permuted; the outlier group (a few dozen columns) is
gathered and runs its own small GEMM. The bias is added inside the main kernel. The kernel path
(oneDNN int8 on CPU, ``torch._int_mm`` on CUDA) and the simulator (dequantize + fp32 ``F.linear``)
run on the *same* integers and agree to fp32 rounding. The integer kernel is opaque to
``torch.compile`` (``torch.compiler.disable``): a compiled model compiles around it.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.quantize import chunks as chunklib
from diffkit.quantize import kernels
from diffkit.quantize.primitives import pack_int4, unpack_int4

log = logging.getLogger(__name__)

FORMAT = 1


class QuantLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` (see the module docstring)."""

    def __init__(
        self, linear: nn.Linear | None, name: str, max_rows_per_chunk: int = 1024, seed: int = 0
    ):
        super().__init__()
        self.name = name
        self.fp: nn.Linear | None = linear  # kept until convert (or for S1 measurement)
        if linear is not None:
            self.in_features, self.out_features = linear.in_features, linear.out_features
        self.converted = False
        self.mode = "simulate"  # or "onednn" / "cuda"
        self.compile_act_quant = False
        self.max_rows = max_rows_per_chunk
        self._gen = torch.Generator().manual_seed(seed)
        self._rt: dict = {}
        self.reset_observations()

    # ------------------------------------------------------------------ observation
    def reset_observations(self) -> None:
        self.rows: dict[int, torch.Tensor] = {}
        self.seen: dict[int, int] = {}
        self.absmax = torch.zeros(getattr(self, "in_features", 0))
        self.calls = 0

    def _observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, self.in_features).float().cpu()
        if flat.shape[0] == 0:
            raise ValueError(
                f"layer {self.name!r}: calibration input of shape {tuple(x.shape)} has no rows; "
                "calibrate with non-empty batches"
            )
        tags = chunklib.row_tags(x)
        self.calls += 1
        self.absmax = torch.maximum(self.absmax, flat.abs().amax(0))
        for k in tags.unique().tolist():
            rows = flat[tags == k]
            have = self.rows.get(k)
            seen = self.seen.get(k, 0)
            # Reservoir sampling (Vitter's algorithm R), vectorised per call.
            if have is None:
                have = rows[: self.max_rows].clone()
                rest, start = rows[self.max_rows :], min(len(rows), self.max_rows)
            else:
                free = self.max_rows - len(have)
                have = torch.cat([have, rows[:free]]) if free > 0 else have
                rest, start = rows[max(free, 0) :], max(free, 0)
            if len(rest):
                pos = seen + start + torch.arange(len(rest))
                j = (torch.rand(len(rest), generator=self._gen) * (pos + 1)).long()
                keep = j < self.max_rows
                have[j[keep]] = rest[keep]
            self.rows[k] = have
            self.seen[k] = seen + len(rows)

    def calibration_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows (n, K), chunk tag per row (n,)) from the reservoirs."""
        if not self.rows:
            raise RuntimeError(
                f"layer {self.name!r} saw no calibration data: run calibration rollouts between "
                "quantize_(..., step='prepare') and step='convert'"
            )
        keys = sorted(self.rows)
        x = torch.cat([self.rows[k] for k in keys])
        tags = torch.cat([torch.full((len(self.rows[k]),), k) for k in keys])
        return x, tags

    # ------------------------------------------------------------------ conversion
    def set_quantized_(
        self,
        *,
        perm: torch.Tensor | None,
        n_outlier: int,
        codes: list[torch.Tensor | None],
        w_qparams: list,
        a_qparams: list,
        w_bits: int,
        fp_groups: list[torch.Tensor | None],
        smooth: torch.Tensor | None,
        bias: torch.Tensor | None,
        keep_fp: bool = False,
    ) -> None:
        """Install integer state. Group 0 is the outlier group when ``n_outlier > 0``."""
        state: dict[str, torch.Tensor] = {
            "qmeta": torch.tensor(
                [FORMAT, w_bits, self.in_features, self.out_features, n_outlier], dtype=torch.int64
            )
        }
        if perm is not None:
            state["perm"] = perm.to(torch.int32)
        if smooth is not None:
            state["smooth"] = smooth.detach().float().clone()
        if bias is not None:
            state["bias"] = bias.detach().float().clone()
        for g, c in enumerate(codes):
            if c is None:
                state[f"w_fp_{g}"] = fp_groups[g].detach().float().clone()
                continue
            qp, aq = w_qparams[g], a_qparams[g]
            zp = qp.zero_point.reshape(-1)
            if w_bits <= 4:
                state[f"w_packed_{g}"] = pack_int4(c.round())
                state[f"w_zero_{g}"] = zp.to(torch.uint8)
            else:
                state[f"w_int_{g}"] = (c - zp[:, None]).round().to(torch.int8)  # q - z fits int8
            state[f"w_scale_{g}"] = qp.scale.reshape(-1).half()  # fp16-exact by construction
            state[f"act_{g}"] = torch.tensor(
                [float(aq.scale.reshape(-1)[0]), float(aq.zero_point.reshape(-1)[0]), aq.qmax],
                dtype=torch.float32,
            )
        self._install(state)
        if not keep_fp:
            self.fp = None
        self.reset_observations()

    def _install(self, state: dict[str, torch.Tensor]) -> None:
        meta = [int(v) for v in state["qmeta"].tolist()]
        if meta[0] != FORMAT:
            raise ValueError(f"layer {self.name!r}: quantized format {meta[0]}, expected {FORMAT}")
        _, self.w_bits, self.in_features, self.out_features, self.n_outlier = meta
        self.groups = 2 if self.n_outlier else 1
        for key, t in state.items():
            self.register_buffer(key, t)
        self.converted = True
        self._rt = {}

    @classmethod
    def from_state(cls, name: str, state: dict[str, torch.Tensor], mode: str = "simulate"):
        """A converted layer from its own ``state_dict()`` (keys without the layer prefix)."""
        if "qmeta" not in state:
            raise ValueError(f"layer {name!r}: no 'qmeta' buffer; not a quantized layer's state")
        self = cls(None, name)
        self._install(dict(state))
        self.set_mode_(mode)
        return self

    def set_mode_(self, mode: str, compile_act_quant: bool | None = None) -> None:
        """'simulate' (fp32 dequantized GEMM), 'onednn' (CPU int8) or 'cuda' (``_int_mm``);
        ``compile_act_quant`` (None: unchanged) picks the fused compiled activation quantizer."""
        if mode not in ("simulate", "onednn", "cuda"):
            raise ValueError(f"mode={mode!r}; use 'simulate', 'onednn' or 'cuda'")
        if mode != self.mode:
            self._rt = {}  # prepared weights belong to one backend
        self.mode = mode
        if compile_act_quant is not None:
            self.compile_act_quant = bool(compile_act_quant)

    def _apply(self, fn, recurse=True):
        # Module.to(dtype) / .half() / .bfloat16() would cast scales and fp32 state: keep them.
        keep = {
            k: b
            for k, b in self._buffers.items()
            if b is not None and b.is_floating_point() and self.converted
        }
        super()._apply(fn, recurse)
        for k, b in keep.items():
            new = self._buffers[k]
            if new.dtype != b.dtype:
                self._buffers[k] = b.to(new.device)
        self._rt = {}
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._rt = {}

    # ------------------------------------------------------------------ integer views
    def act_qparams(self, g: int) -> tuple[float, int, int] | None:
        """(scale, zero point, qmax) of group ``g``'s activation quantizer; None for an FP group."""
        a = self._buffers.get(f"act_{g}")
        if a is None:
            return None
        s, z, qmax = a.tolist()
        return float(s), int(z), int(qmax)

    def _group_cols(self, g: int) -> slice:
        if self.groups == 1:
            return slice(0, self.in_features)
        return slice(0, self.n_outlier) if g == 0 else slice(self.n_outlier, self.in_features)

    def group_width(self, g: int) -> int:
        c = self._group_cols(g)
        return c.stop - c.start

    def int_weight(self, g: int) -> torch.Tensor:
        """int8 (N, K_g) codes ``q - z`` of group ``g`` (unpacked for <= 4-bit weights)."""
        if f"w_int_{g}" in self._buffers:
            return self._buffers[f"w_int_{g}"]
        codes = unpack_int4(self._buffers[f"w_packed_{g}"], self.group_width(g)).to(torch.int16)
        return (codes - self._buffers[f"w_zero_{g}"].to(torch.int16)[:, None]).to(torch.int8)

    def _cols(self, g: int) -> torch.Tensor | None:
        """Original column indices of group g (None = all columns in order)."""
        if self.groups == 1:
            return None
        return self._buffers["perm"].long()[self._group_cols(g)]

    def _full_width(self, w: torch.Tensor, g: int) -> torch.Tensor:
        """Group g's (N, K_g) weight scattered into (N, K) original column order, zeros elsewhere."""
        cols = self._cols(g)
        if cols is None:
            return w
        full = torch.zeros(self.out_features, self.in_features, dtype=w.dtype, device=w.device)
        full[:, cols] = w
        return full

    def quantize_input(self, x: torch.Tensor, g: int) -> torch.Tensor:
        """uint8 codes of ``x`` (columns of group g, or all K) under group g's quantizer."""
        s, z, qmax = self.act_qparams(g)
        return kernels.quantize_act(x, s, z, qmax, compiled=self.compile_act_quant)

    def _runtime(self) -> dict:
        """Per-mode prepared weights, built on first use (int8 weights are unpacked here)."""
        if self._rt:
            return self._rt
        rt: dict = {"main": self.groups - 1, "outlier": 0 if self.groups == 2 else None}
        for g in range(self.groups):
            qp = self.act_qparams(g)
            if qp is None:
                rt[g] = ("fp", self._cols(g), None)
                continue
            cols = self._cols(g) if g == rt["outlier"] else None
            w = self.int_weight(g)
            if g == rt["main"]:
                w = self._full_width(w, g)
            packed = None
            if self.mode != "simulate":
                packed = kernels.pack_weight(w, self._buffers[f"w_scale_{g}"], self.mode)
            rt[g] = (qp, cols, packed)
        self._rt = rt
        return rt

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.converted:
            self._observe(x)
            return self.fp(x)
        only = chunklib.active_chunks()
        if only is None or self.fp is None:
            return self._quantized(x)
        mask = chunklib.active_rows(x, only)  # (rows,) bool: rows whose chunk tag is in `only`
        if bool(mask.all()):
            return self._quantized(x)
        if not bool(mask.any()):
            return self.fp(x)
        y = torch.where(
            mask.to(x.device)[:, None],
            self._quantized(x).reshape(-1, self.out_features),
            self.fp(x).reshape(-1, self.out_features),
        )
        return y.reshape(*x.shape[:-1], self.out_features)

    @torch.compiler.disable
    def _quantized(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        smooth = self._buffers.get("smooth")
        if smooth is not None:
            x2 = x2.float() / smooth
        rt = self._runtime()
        out_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        main = rt["main"]
        y = self._group_out(x2, main, rt[main], self._buffers.get("bias"), out_dtype)
        if rt["outlier"] is not None:
            y = y + self._group_out(x2, 0, rt[0], None, out_dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _group_out(self, x2, g, entry, bias, out_dtype) -> torch.Tensor:
        qp, cols, packed = entry
        if cols is not None:
            x2 = x2.index_select(1, cols)
        if qp == "fp":
            return F.linear(x2.float(), self._buffers[f"w_fp_{g}"], bias).to(out_dtype)
        s, z, qmax = qp
        xq = kernels.quantize_act(x2, s, z, qmax, compiled=self.compile_act_quant)
        if packed is None:  # simulate: dequantize on the fly (W4 stays packed in memory)
            w = self.int_weight(g)
            if g == self._rt["main"]:
                w = self._full_width(w, g)
            wd = w.float() * self._buffers[f"w_scale_{g}"].float()[:, None]
            return F.linear((xq.float() - z) * s, wd, bias).to(out_dtype)
        return kernels.linear_packed(xq, s, z, packed, bias, self.mode, out_dtype)

    # ------------------------------------------------------------------ fused MLPs
    def fusable(self) -> bool:
        """One integer group, no SmoothQuant input scale, a kernel backend: the GEMM can take its
        input codes from, or write its output codes for, a neighbour (:mod:`.fusion`)."""
        return (
            self.converted and self.mode != "simulate" and self.groups == 1
            and "smooth" not in self._buffers and self.act_qparams(0) is not None
        )  # fmt: skip

    @torch.compiler.disable
    def linear_codes(
        self,
        x_q: torch.Tensor,
        out_dtype: torch.dtype,
        *,
        gelu: str | None = None,
        out_q: tuple[float, int, int] | None = None,
    ) -> torch.Tensor:
        """The kernel GEMM of a :meth:`fusable` layer on (M, K) uint8 codes of its own activation
        quantizer, with GELU and output quantization as in :func:`kernels.linear_packed`."""
        qp, _, packed = self._runtime()[0]
        s, z, _ = qp
        bias = self._buffers.get("bias")
        return kernels.linear_packed(
            x_q, s, z, packed, bias, self.mode, out_dtype, gelu=gelu, out_q=out_q
        )

    def dequantized_weight(self) -> torch.Tensor:
        """The (N, K) weight the converted layer applies, in the original column order."""
        w = torch.zeros(self.out_features, self.in_features)
        for g in range(self.groups):
            if self.act_qparams(g) is None:
                wg = self._buffers[f"w_fp_{g}"]
            else:
                wg = self.int_weight(g).float() * self._buffers[f"w_scale_{g}"].float()[:, None]
            w = w + self._full_width(wg, g)
        smooth = self._buffers.get("smooth")
        return w if smooth is None else w / smooth

    def quant_state(self) -> dict[str, torch.Tensor]:
        """The layer's quantization buffers (what it stores at rest), without the prefix."""
        return {k: b for k, b in self._buffers.items() if b is not None}

    def summary(self) -> dict:
        """bits, outlier columns and bytes of this layer (the per-layer report)."""
        q = sum(t.numel() * t.element_size() for t in self.quant_state().values())
        has_bias = self._buffers.get("bias") is not None
        fp = 4 * (self.in_features * self.out_features + self.out_features * has_bias)
        a = self.act_qparams(self.groups - 1)
        a_bits = (a[2] + 1).bit_length() - 1 if a else None
        return {
            "w_bits": self.w_bits, "a_bits": a_bits, "in": self.in_features,
            "out": self.out_features, "outlier_cols": self.n_outlier,
            "outlier_branch": "fp" if self.groups == 2 and self.act_qparams(0) is None else "int",
            "bytes": q, "fp32_bytes": fp,
        }  # fmt: skip

    def extra_repr(self) -> str:
        if not self.converted:
            return f"{self.name}: observing, {sum(len(r) for r in self.rows.values())} rows kept"
        return (
            f"{self.name}: W{self.w_bits}, groups={self.groups}, outlier_cols={self.n_outlier}, "
            f"mode={self.mode}"
        )
