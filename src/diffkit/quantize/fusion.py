"""Fused quantized MLPs: ``Linear -> GELU -> Linear`` as two integer GEMMs and nothing between.

In a transformer's feed-forward block the activation between the two projections is the largest
tensor of the layer (tokens x ffn_dim, 5.8x the hidden size in Wan). Run unfused, the first int8
GEMM writes it in bf16/fp32, GELU reads and writes it again, and the second layer's activation
quantizer reads it a third time. Here the first GEMM applies GELU as a post-op and writes the
second layer's uint8 codes directly (oneDNN ``qlinear_pointwise`` with ``post_op="gelu"`` and an
output scale / zero point = the second layer's static activation quantizer); the second GEMM
reads them. The activation is written once, in one byte per element.

The result equals the unfused kernel path up to where the intermediate is rounded: unfused, the
GELU input is the first GEMM's output rounded to the model dtype (bf16: 8 bits of mantissa), fused
it is the fp32 accumulator, so a few codes of the second layer's input move by one step.

:func:`fuse_mlps_` swaps two patterns for subclasses that keep the original child names (so
``state_dict`` keys do not change): diffusers ``FeedForward`` with a ``GELU`` projection (Wan,
SkyReels-V2, ...) and ``nn.Sequential(Linear, GELU, Linear)`` (the zoo's causal Wan). The fused path
runs only when both layers are :meth:`~diffkit.quantize.layers.QuantLinear.fusable` (one integer
group, no SmoothQuant, a kernel backend), no dropout is active and no :func:`only_chunks` selection
is in force; otherwise the original modules run one after the other, unchanged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn

from diffkit.quantize import chunks as chunklib
from diffkit.quantize.layers import QuantLinear

log = logging.getLogger(__name__)

_APPROX = ("none", "tanh")


def _diffusers_gelu_type() -> type | None:
    try:
        from diffusers.models.activations import GELU
    except ImportError:  # pragma: no cover - diffusers is a dependency
        return None
    return GELU


def _fused_forward(x, up: QuantLinear, approximate: str, down: QuantLinear) -> torch.Tensor:
    """``down(gelu(up(x)))`` as two integer GEMMs; the intermediate is only uint8 codes."""
    shape = x.shape
    out_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
    x_q = up.quantize_input(x.reshape(-1, up.in_features), 0)
    h_q = up.linear_codes(x_q, out_dtype, gelu=approximate, out_q=down.act_qparams(0))
    y = down.linear_codes(h_q, out_dtype)
    return y.reshape(*shape[:-1], down.out_features).to(x.dtype)


class _FusedMLP:
    """Mixin: ``up`` / ``approximate`` / ``down`` / ``dropouts`` name the pattern's parts."""

    fused: bool = True  # switch off to run the modules one by one (benchmarks, tests)

    def can_fuse(self, x: torch.Tensor) -> bool:
        up, down = self.up, self.down
        return (
            self.fused and x.is_floating_point() and up.fusable() and down.fusable()
            and up.mode == down.mode and chunklib.active_chunks() is None
            and not any(d.training and d.p > 0 for d in self.dropouts)
        )  # fmt: skip


class QuantFeedForward(_FusedMLP, nn.Module):
    """diffusers ``FeedForward`` (``net = [GELU(proj), Dropout, Linear(, Dropout)]``) whose two
    projections are :class:`QuantLinear`; same children, so the same ``state_dict`` keys."""

    def __init__(self, net: nn.ModuleList):
        super().__init__()
        self.net = net
        self.approximate = net[0].approximate

    @property
    def up(self) -> QuantLinear:
        return self.net[0].proj

    @property
    def down(self) -> QuantLinear:
        return next(m for m in reversed(self.net) if isinstance(m, QuantLinear))

    @property
    def dropouts(self) -> list[nn.Dropout]:
        return [m for m in self.net if isinstance(m, nn.Dropout)]

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.can_fuse(hidden_states):
            return _fused_forward(hidden_states, self.up, self.approximate, self.down)
        for module in self.net:
            hidden_states = module(hidden_states)
        return hidden_states


class QuantMLP(_FusedMLP, nn.Sequential):
    """``nn.Sequential(QuantLinear, nn.GELU, [Dropout...], QuantLinear)`` with the fused path."""

    def __init__(self, seq: nn.Sequential):
        super().__init__(OrderedDict(seq._modules))
        self.approximate = seq[1].approximate

    @property
    def up(self) -> QuantLinear:
        return self[0]

    @property
    def down(self) -> QuantLinear:
        return self[len(self) - 1]

    @property
    def dropouts(self) -> list[nn.Dropout]:
        return [m for m in self if isinstance(m, nn.Dropout)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.can_fuse(x):
            return _fused_forward(x, self.up, self.approximate, self.down)
        return super().forward(x)


def _is_feedforward(m: nn.Module) -> bool:
    net = getattr(m, "net", None)
    if type(m).__name__ != "FeedForward" or not isinstance(net, nn.ModuleList) or len(net) < 3:
        return False
    gelu_t = _diffusers_gelu_type() if type(m).__module__.startswith("diffusers") else None
    first, rest = net[0], list(net)[1:]
    quant = [i for i, x in enumerate(rest) if isinstance(x, QuantLinear)]
    return (
        gelu_t is not None and type(first) is gelu_t and isinstance(first.proj, QuantLinear)
        and first.approximate in _APPROX and len(quant) == 1
        and all(isinstance(x, nn.Dropout) for i, x in enumerate(rest) if i != quant[0])
    )  # fmt: skip


def _is_mlp(m: nn.Module) -> bool:
    if type(m) is not nn.Sequential or len(m) < 3:
        return False
    parts = list(m)
    return (
        isinstance(parts[0], QuantLinear) and type(parts[1]) is nn.GELU
        and parts[1].approximate in _APPROX and isinstance(parts[-1], QuantLinear)
        and all(isinstance(x, nn.Dropout) for x in parts[2:-1])
    )  # fmt: skip


def fuse_mlps_(model: nn.Module) -> int:
    """Swap every ``Linear -> GELU -> Linear`` block of quantized layers for its fused form (see
    the module docstring); returns how many were swapped. Idempotent."""
    found = [
        (name, m)
        for name, m in model.named_modules()
        if name and (_is_feedforward(m) or _is_mlp(m))
    ]
    for name, m in found:
        new = QuantFeedForward(m.net) if _is_feedforward(m) else QuantMLP(m)
        new.train(m.training)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, new)
    if found:
        log.info("fused %d quantized Linear-GELU-Linear blocks", len(found))
    return len(found)


def set_fused_(model: nn.Module, fused: bool) -> None:
    """Turn the fused path of every fused block on or off (off: the modules run one by one)."""
    for m in model.modules():
        if isinstance(m, _FusedMLP):
            m.fused = bool(fused)
