"""Q-ARVD post-training quantization for autoregressive video diffusion (arXiv 2605.21072).

``quantize_(model, QARVDConfig(...))`` prepares, calibration rollouts run under ``chunk(k)``, and
``quantize_(model, QARVDConfig(..., step="convert"))`` installs real integer weights (int8 GEMM on
CPU via oneDNN, ``torch._int_mm`` on CUDA, or the fake-quant simulator). See docs/quantize.md.
"""

from diffkit.quantize.api import (
    CONFIGS,
    DEFAULT_SKIP,
    AdaRoundConfig,
    PercentileConfig,
    QARVDConfig,
    RTNConfig,
    SmoothQuantConfig,
    chunk_weights_for,
    config_from_dict,
    quant_layers,
    quantize_,
    set_backend_,
)
from diffkit.quantize.chunks import (
    chunk,
    exponential_weights,
    fit_exponential,
    measure_chunk_sensitivity,
    only_chunks,
)
from diffkit.quantize.layers import QuantLinear
from diffkit.quantize.outliers import outlier_columns, s2_report
from diffkit.quantize.primitives import (
    PerChannel,
    PerTensor,
    QParams,
    choose_qparams,
    dequantize,
    fake_quantize,
    pack_int4,
    percentile_search,
    quantize,
    unpack_int4,
)
from diffkit.quantize.storage import load_quantized, packed_bytes, save_quantized

__all__ = [
    "CONFIGS",
    "DEFAULT_SKIP",
    "AdaRoundConfig",
    "PerChannel",
    "PerTensor",
    "PercentileConfig",
    "QARVDConfig",
    "QParams",
    "QuantLinear",
    "RTNConfig",
    "SmoothQuantConfig",
    "choose_qparams",
    "chunk",
    "chunk_weights_for",
    "config_from_dict",
    "dequantize",
    "exponential_weights",
    "fake_quantize",
    "fit_exponential",
    "load_quantized",
    "measure_chunk_sensitivity",
    "only_chunks",
    "outlier_columns",
    "pack_int4",
    "packed_bytes",
    "percentile_search",
    "quant_layers",
    "quantize",
    "quantize_",
    "s2_report",
    "save_quantized",
    "set_backend_",
    "unpack_int4",
]
