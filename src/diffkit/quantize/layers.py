"""``QuantLinear``: the module that replaces an ``nn.Linear`` through prepare -> calibrate -> convert.

* **observing** (after ``prepare``): runs the FP layer and captures a bounded, seeded reservoir of
  input rows per chunk tag (``max_rows_per_chunk``), plus streaming per-channel |x| maxima over
  *all* rows (SmoothQuant). Memory per layer is O(chunks x rows x K), not O(data).
* **converted**: holds integer weight codes (int8; 4-bit codes are nibble-packed at rest), per-row
  weight scales, per-tensor static activation (scale, zero point), an optional S2 column
  permutation with a second (outlier) group, an optional SmoothQuant input scale. ``forward`` runs
  either the real int8 GEMM (:mod:`diffkit.quantize.kernels`) or the simulator
  (dequantize + fp32 ``F.linear``) on the *same* integers; the two agree to fp32 rounding.

Weight codes are stored as ``q - z`` (asymmetric uint4 gives [-15, 15], exact in int8; 8-bit
weights are symmetric so that ``q`` fits int8), so the GEMM sees a symmetric int8 weight.
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


class QuantLinear(nn.Module):
    """Drop-in replacement of ``nn.Linear`` (see the module docstring)."""

    def __init__(self, linear: nn.Linear, name: str, max_rows_per_chunk: int = 1024, seed: int = 0):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.name = name
        self.fp: nn.Linear | None = linear  # kept until convert (or for S1 measurement)
        self.converted = False
        self.mode = "simulate"  # or "onednn" / "cuda"
        self.max_rows = max_rows_per_chunk
        self._gen = torch.Generator().manual_seed(seed)
        self.reset_observations()

    # ------------------------------------------------------------------ observation
    def reset_observations(self) -> None:
        self.rows: dict[int, torch.Tensor] = {}
        self.seen: dict[int, int] = {}
        self.absmax = torch.zeros(self.in_features)
        self.calls = 0

    def _observe(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, self.in_features).float().cpu()
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
        self.w_bits = w_bits
        self.n_outlier = n_outlier
        self.register_buffer("perm", perm.to(torch.int32) if perm is not None else None)
        self.register_buffer("smooth", smooth)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.groups = len(codes)
        for g in range(self.groups):
            if codes[g] is None:
                self.register_buffer(f"w_fp_{g}", fp_groups[g].detach().float().clone())
                setattr(self, f"a_scale_{g}", None)
                continue
            qp = w_qparams[g]
            wq = (codes[g] - qp.zero_point).round().to(torch.int8)  # q - z, fits int8
            self.register_buffer(f"w_int_{g}", wq)
            self.register_buffer(f"w_zero_{g}", qp.zero_point.reshape(-1).to(torch.int16))
            self.register_buffer(f"w_scale_{g}", qp.scale.reshape(-1).float())
            aq = a_qparams[g]
            setattr(self, f"a_scale_{g}", float(aq.scale.reshape(-1)[0]))
            setattr(self, f"a_zero_{g}", int(aq.zero_point.reshape(-1)[0]))
            setattr(self, f"a_qmax_{g}", int(aq.qmax))
        self.converted = True
        if not keep_fp:
            self.fp = None
        self.reset_observations()
        self.rows = {}
        self._packed: dict[int, torch.Tensor] = {}

    def set_mode_(self, mode: str) -> None:
        """'simulate' (fp32 dequantized GEMM), 'onednn' (CPU int8) or 'cuda' (``_int_mm``)."""
        if mode not in ("simulate", "onednn", "cuda"):
            raise ValueError(f"mode={mode!r}; use 'simulate', 'onednn' or 'cuda'")
        self.mode = mode
        self._packed = {}

    def _group_cols(self, g: int) -> slice:
        if self.groups == 1:
            return slice(0, self.in_features)
        return slice(0, self.n_outlier) if g == 0 else slice(self.n_outlier, self.in_features)

    def quantize_input(self, x: torch.Tensor, g: int) -> torch.Tensor:
        s, z, qmax = (
            getattr(self, f"a_scale_{g}"),
            getattr(self, f"a_zero_{g}"),
            getattr(self, f"a_qmax_{g}"),
        )
        return torch.clamp(torch.round(x / s) + z, 0, qmax).to(torch.uint8)

    def _prepared_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, self.in_features).float()
        if self.smooth is not None:
            x = x / self.smooth
        if self.perm is not None:
            x = x.index_select(1, self.perm.long())
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.converted:
            self._observe(x)
            return self.fp(x)
        only = chunklib.active_chunks()
        if only is not None and self.fp is not None:
            tag = chunklib.current_chunk()
            if not (isinstance(tag, int) and tag in only):
                return self.fp(x)
        shape = x.shape
        xp = self._prepared_input(x)
        out = None
        for g in range(self.groups):
            xg = xp[:, self._group_cols(g)]
            if getattr(self, f"a_scale_{g}") is None:  # full-precision outlier branch
                y = F.linear(xg, getattr(self, f"w_fp_{g}"))
            else:
                y = self._int_group(xg, g)
            out = y if out is None else out + y
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def _int_group(self, xg: torch.Tensor, g: int) -> torch.Tensor:
        xq = self.quantize_input(xg, g)
        s, z = getattr(self, f"a_scale_{g}"), getattr(self, f"a_zero_{g}")
        wq, ws = getattr(self, f"w_int_{g}"), getattr(self, f"w_scale_{g}")
        if self.mode == "simulate":
            return F.linear((xq.float() - z) * s, wq.float() * ws[:, None])
        if g not in self._packed:
            self._packed[g] = kernels.prepack(wq, self.mode)
        return kernels.int8_linear(xq.contiguous(), s, z, self._packed[g], ws, None, self.mode)

    def dequantized_weight(self) -> torch.Tensor:
        """The (N, K) weight the converted layer applies, in the original column order."""
        cols = []
        for g in range(self.groups):
            if getattr(self, f"a_scale_{g}") is None:
                cols.append(getattr(self, f"w_fp_{g}"))
            else:
                cols.append(
                    getattr(self, f"w_int_{g}").float() * getattr(self, f"w_scale_{g}")[:, None]
                )
        w = torch.cat(cols, 1)
        if self.perm is not None:
            w = w[:, torch.argsort(self.perm.long())]
        if self.smooth is not None:
            w = w / self.smooth
        return w

    # ------------------------------------------------------------------ storage
    def packed_state(self) -> dict[str, torch.Tensor]:
        """Tensors at rest: 4-bit codes nibble-packed with their zero points, 8-bit as int8."""
        out: dict[str, torch.Tensor] = {}
        for key in ("perm", "smooth", "bias"):
            t = getattr(self, key)
            if t is not None:
                out[key] = t
        for g in range(self.groups):
            if getattr(self, f"a_scale_{g}") is None:
                out[f"w_fp_{g}"] = getattr(self, f"w_fp_{g}")
                continue
            wq, zp = getattr(self, f"w_int_{g}"), getattr(self, f"w_zero_{g}")
            if self.w_bits <= 4:
                codes = (wq.to(torch.int16) + zp[:, None]).to(torch.uint8)  # back to [0, 15]
                out[f"w_packed_{g}"] = pack_int4(codes)
                out[f"w_zero_{g}"] = zp.to(torch.uint8)
            else:
                out[f"w_int_{g}"] = wq
                if bool((zp != 0).any()):
                    out[f"w_zero_{g}"] = zp
            out[f"w_scale_{g}"] = getattr(self, f"w_scale_{g}").half()  # fp16-exact by design
            out[f"a_{g}"] = torch.tensor(
                [
                    getattr(self, f"a_scale_{g}"),
                    getattr(self, f"a_zero_{g}"),
                    getattr(self, f"a_qmax_{g}"),
                ],
                dtype=torch.float64,
            )
        return out

    def meta(self) -> dict:
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "w_bits": self.w_bits,
            "n_outlier": self.n_outlier,
            "groups": self.groups,
        }

    @classmethod
    def from_packed(cls, name: str, meta: dict, tensors: dict[str, torch.Tensor]) -> QuantLinear:
        lin = nn.Linear(meta["in_features"], meta["out_features"], bias="bias" in tensors)
        self = cls(lin, name)
        self.w_bits, self.n_outlier, self.groups = meta["w_bits"], meta["n_outlier"], meta["groups"]
        self.register_buffer("perm", tensors.get("perm"))
        self.register_buffer("smooth", tensors.get("smooth"))
        self.register_buffer("bias", tensors.get("bias"))
        for g in range(self.groups):
            if f"w_fp_{g}" in tensors:
                self.register_buffer(f"w_fp_{g}", tensors[f"w_fp_{g}"])
                setattr(self, f"a_scale_{g}", None)
                continue
            if f"w_packed_{g}" in tensors:
                n_cols = (
                    (self.n_outlier if g == 0 else self.in_features - self.n_outlier)
                    if self.groups == 2
                    else self.in_features
                )
                zp = tensors[f"w_zero_{g}"].to(torch.int16)
                codes = unpack_int4(tensors[f"w_packed_{g}"], n_cols).to(torch.int16)
                wq = (codes - zp[:, None]).to(torch.int8)
            else:
                wq = tensors[f"w_int_{g}"]
                zp = tensors.get(f"w_zero_{g}", torch.zeros(wq.shape[0], dtype=torch.int16))
            self.register_buffer(f"w_int_{g}", wq)
            self.register_buffer(f"w_zero_{g}", zp.to(torch.int16))
            self.register_buffer(f"w_scale_{g}", tensors[f"w_scale_{g}"].float())
            a = tensors[f"a_{g}"].tolist()
            setattr(self, f"a_scale_{g}", float(a[0]))
            setattr(self, f"a_zero_{g}", int(a[1]))
            setattr(self, f"a_qmax_{g}", int(a[2]))
        self.converted, self.fp, self._packed = True, None, {}
        return self

    def extra_repr(self) -> str:
        if not self.converted:
            return f"{self.name}: observing, {sum(len(r) for r in self.rows.values())} rows kept"
        return (
            f"{self.name}: W{self.w_bits}, groups={self.groups}, outlier_cols={self.n_outlier}, "
            f"mode={self.mode}"
        )
