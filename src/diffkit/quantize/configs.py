"""Quantization configs: one frozen dataclass per method, every option checked at construction.

``RTNConfig`` < ``PercentileConfig`` < ``SmoothQuantConfig`` / ``AdaRoundConfig`` < ``QARVDConfig``
(Q-ARVD, arXiv 2605.21072), and ``PerLayerConfig`` (regex -> config rules). Closed options are
``Literal`` fields, validated generically (:func:`_check_options`); bit widths are 2-8 because the
integer path holds int8/uint8 codes.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from dataclasses import dataclass
from typing import Literal

from diffkit.config import from_dict
from diffkit.quantize.chunks import normalized_weights

DEFAULT_SKIP = (
    "time_embedding", "time_projection", "time_embedder", "time_proj", "timestep",
    "head", "proj_out", "norm_out", "label_embedding", "patch_embedding",
)  # fmt: skip

_BASE_DOC = """
        w_bits: weight bit width, 2-8 (the integer path holds int8 codes; compare against the
            unquantized model for a reference). 8-bit weights are symmetric (so the code fits
            int8), narrower ones asymmetric per output channel.
        a_bits: activation bit width, 2-8 (static, per-tensor, asymmetric, uint8 codes).
        step: "prepare" (swap layers in, start observing) or "convert" (quantize observed layers).
        skip: name fragments of Linear layers left in full precision (default filter).
        backend: "auto" (oneDNN int8 GEMM on CPU, torch._int_mm on CUDA), "onednn", "cuda", or
            "simulate" (dequantize + fp32 GEMM on the same integers).
        act_reduce_range: "auto" uses 7-bit activation codes for a_bits=8 when the CPU kernel is
            not exact with full 8-bit codes (AVX2 without VNNI); "on"/"off" force it.
        compile_act_quant: quantize activations with one fused kernel from torch.compile (faster,
            bf16 inputs read directly; needs a C++ compiler, first call compiles, ~20 s).
        max_rows_per_chunk: calibration rows kept per layer and chunk (reservoir sample).
        seed: seeds reservoir sampling and the AdaRound minibatches."""


INT_BITS = (2, 3, 4, 5, 6, 7, 8)


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    return {k: typing.get_args(t) for k, t in hints.items() if typing.get_origin(t) is Literal}


def _check_options(cfg) -> None:
    """Every closed option (``Literal`` field) is checked at construction, never at convert."""
    for field, allowed in _literal_fields(type(cfg)).items():
        value = getattr(cfg, field)
        if value not in allowed:
            raise ValueError(
                f"{type(cfg).__name__}.{field}={value!r} is not one of "
                f"{', '.join(repr(a) for a in allowed)}"
            )


@dataclass(frozen=True, kw_only=True)
class RTNConfig:
    w_bits: int = 8
    a_bits: int = 8
    step: Literal["prepare", "convert"] = "prepare"
    skip: tuple[str, ...] = DEFAULT_SKIP
    backend: Literal["auto", "onednn", "cuda", "simulate"] = "auto"
    act_reduce_range: Literal["auto", "on", "off"] = "auto"
    compile_act_quant: bool = False
    max_rows_per_chunk: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        _check_options(self)
        for field in ("w_bits", "a_bits"):
            bits = getattr(self, field)
            if bits not in INT_BITS:
                raise ValueError(
                    f"{type(self).__name__}.{field}={bits}: the integer path holds int8/uint8 "
                    f"codes; use one of {INT_BITS}"
                )
        if self.max_rows_per_chunk < 16:
            raise ValueError(
                f"{type(self).__name__}.max_rows_per_chunk must be >= 16, got {self.max_rows_per_chunk}"
            )


RTNConfig.__doc__ = f"""Round-to-nearest with min-max ranges (the simplest baseline).

    Attributes:{_BASE_DOC}
"""


@dataclass(frozen=True, kw_only=True)
class PercentileConfig(RTNConfig):
    percentiles: tuple[float, ...] = (0.999, 0.9999, 0.99999)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.percentiles or not all(0.5 < p < 1 for p in self.percentiles):
            raise ValueError(f"percentiles must be in (0.5, 1), got {self.percentiles}")


_PCT_DOC = """
        percentiles: clip candidates p, range [q(1-p), q(p)], best MSE kept (and min-max)."""
PercentileConfig.__doc__ = f"""Percentile-MSE range search for weights (per row) and activations.

    Attributes:{_BASE_DOC}{_PCT_DOC}
"""


@dataclass(frozen=True, kw_only=True)
class SmoothQuantConfig(PercentileConfig):
    alpha: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"SmoothQuantConfig.alpha must be in [0, 1], got {self.alpha}")


SmoothQuantConfig.__doc__ = f"""SmoothQuant migration (Xiao et al., arXiv 2211.10438, eq. 4):
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha); X' = X / s, W' = W diag(s); then percentile init.

    Attributes:{_BASE_DOC}{_PCT_DOC}
        alpha: migration strength.
"""


@dataclass(frozen=True, kw_only=True)
class AdaRoundConfig(PercentileConfig):
    iters: int = 2000
    batch_rows: int = 1024
    lam: float = 0.01
    learn_act_step: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iters < 1 or self.batch_rows < 1:
            raise ValueError(
                f"iters and batch_rows must be >= 1, got {self.iters}, {self.batch_rows}"
            )
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")


_ADA_DOC = """
        iters: AdaRound iterations per layer (paper: 2000).
        batch_rows: token rows per AdaRound minibatch.
        lam: weight of the rounding regulariser (paper: 0.01).
        learn_act_step: learn the activation step (LSQ) jointly."""
AdaRoundConfig.__doc__ = f"""Percentile init + layer-wise AdaRound + learned activation step,
    uniform chunk weights (the Q-ARVD pipeline without S1 and S2).

    Attributes:{_BASE_DOC}{_PCT_DOC}{_ADA_DOC}
"""


@dataclass(frozen=True, kw_only=True)
class QARVDConfig(AdaRoundConfig):
    chunk_weighting: Literal["given", "exponential", "uniform"] = "exponential"
    chunk_sensitivities: tuple[float, ...] = ()
    chunk_decay: float = 0.55
    s2: bool = True
    s2_rule: Literal["mad_zscore", "iqr"] = "mad_zscore"
    s2_z: float = 3.5
    s2_ratio: float = 1.2
    s2_multiple: int = 32
    s2_scope: tuple[str, ...] = ("blocks",)
    outlier_branch: Literal["int8", "fp"] = "int8"
    s1_off_in_s2_layers: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.chunk_weighting == "given" and not self.chunk_sensitivities:
            raise ValueError("QARVDConfig.chunk_weighting='given' needs chunk_sensitivities")
        if self.chunk_sensitivities:
            normalized_weights(self.chunk_sensitivities)
        if not 0 < self.chunk_decay <= 1:
            raise ValueError(f"QARVDConfig.chunk_decay must be in (0, 1], got {self.chunk_decay}")
        if self.s2_multiple < 1:
            raise ValueError(f"QARVDConfig.s2_multiple must be >= 1, got {self.s2_multiple}")
        if self.s2_z <= 0 or self.s2_ratio <= 0:
            raise ValueError(
                f"QARVDConfig.s2_z and s2_ratio must be > 0, got {self.s2_z}, {self.s2_ratio}"
            )


QARVDConfig.__doc__ = f"""Q-ARVD (arXiv 2605.21072): AdaRound + learned act step with S1 chunk
    weighting and S2 outlier-aware dual scale.

    Attributes:{_BASE_DOC}{_PCT_DOC}{_ADA_DOC}
        chunk_weighting: S1 weights: "given" (measured s_k in chunk_sensitivities), "exponential"
            (s_k = a r^k with r = chunk_decay) or "uniform".
        chunk_sensitivities: measured s_k (see measure_chunk_sensitivity).
        chunk_decay: r of the exponential weighting (paper's measured s fits r = 0.55).
        s2: detect outlier input columns and use dual scales.
        s2_rule: "mad_zscore" (paper default) or "iqr".
        s2_z: MAD z-score threshold.
        s2_ratio: a column must also exceed ratio x median norm.
        s2_multiple: round the outlier count up to this multiple (capped at K/2).
        s2_scope: S2 runs on layers whose name contains one of these fragments.
        outlier_branch: "int8" (own scales, same bits) or "fp" (kept full precision).
        s1_off_in_s2_layers: reference-code quirk: chunk weights reset to 1 in dual-scale layers.
"""

QuantConfig = RTNConfig | PercentileConfig | SmoothQuantConfig | AdaRoundConfig | QARVDConfig
CONFIGS = {
    c.__name__: c
    for c in (RTNConfig, PercentileConfig, SmoothQuantConfig, AdaRoundConfig, QARVDConfig)
}


@dataclass(frozen=True, kw_only=True)
class PerLayerConfig:
    r"""Different configs for different layers (torchao's ``ModuleFqnToConfig`` shape).

    Attributes:
        rules: (regex, config) pairs; a layer takes the config of the first regex that
            ``re.search``-es its qualified name, e.g. ``(("ffn", RTNConfig(w_bits=4)),
            (r"attn\d\.to_[qkv]", QARVDConfig(w_bits=8)))``. Each config's ``skip`` still applies.
        default: config of layers no rule matches (None: they stay in full precision).
        step: "prepare" or "convert" (the ``step`` of the configs inside is ignored).
    """

    rules: tuple[tuple[str, QuantConfig], ...] = ()
    default: QuantConfig | None = None
    step: Literal["prepare", "convert"] = "prepare"

    def __post_init__(self) -> None:
        _check_options(self)
        if not self.rules and self.default is None:
            raise ValueError("PerLayerConfig needs rules or a default config")
        for i, rule in enumerate(self.rules):
            if len(rule) != 2 or type(rule[1]) not in CONFIGS.values():
                raise ValueError(f"PerLayerConfig.rules[{i}]={rule!r}: use (regex, config)")
            try:
                re.compile(rule[0])
            except re.error as e:
                raise ValueError(
                    f"PerLayerConfig.rules[{i}]: bad regex {rule[0]!r} ({e})"
                ) from None
        if self.default is not None and type(self.default) not in CONFIGS.values():
            raise ValueError(f"PerLayerConfig.default={self.default!r} is not a quantize config")

    def config_for(self, name: str) -> QuantConfig | None:
        """The config of layer ``name`` (step set to this object's step), or None (left FP)."""
        cfg = next((c for pat, c in self.rules if re.search(pat, name)), self.default)
        return None if cfg is None else dataclasses.replace(cfg, step=self.step)


def config_from_dict(data: dict) -> QuantConfig:
    """{"method": "QARVDConfig" | "RTNConfig" | ..., **fields} -> config."""
    data = dict(data)
    name = data.pop("method", "QARVDConfig")
    if name not in CONFIGS:
        raise ValueError(f"method={name!r} is not supported; use one of {', '.join(CONFIGS)}")
    return from_dict(CONFIGS[name], data)
