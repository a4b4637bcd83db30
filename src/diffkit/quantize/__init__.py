"""Q-ARVD post-training quantization for autoregressive video diffusion (arXiv 2605.21072).

``quantize_(model, QARVDConfig(...))`` prepares, calibration rollouts run under ``chunk(k)``, and
``quantize_(model, QARVDConfig(..., step="convert"))`` installs real integer weights (int8 GEMM on
CPU via oneDNN, ``torch._int_mm`` on CUDA, or the fake-quant simulator). See docs/quantize.md.

The package imports lazily: ``import diffkit.quantize.cli`` (and ``diffkit --help``) loads no torch;
the names below are imported from their modules on first use.
"""

from __future__ import annotations

from diffkit.lazy import lazy_exports

_EXPORTS = {
    "api": (
        "format_summary",
        "summary",
        "chunk_weights_for",
        "quant_layers",
        "quantize_",
        "set_backend_",
    ),
    "configs": (
        "CONFIGS",
        "DEFAULT_SKIP",
        "AdaRoundConfig",
        "PercentileConfig",
        "PerLayerConfig",
        "QARVDConfig",
        "RTNConfig",
        "SmoothQuantConfig",
        "config_from_dict",
    ),
    "chunks": (
        "chunk",
        "exponential_weights",
        "fit_exponential",
        "measure_chunk_sensitivity",
        "only_chunks",
    ),
    "kv_cache": (
        "KVCacheConfig",
        "QuantizedKVCache",
        "dequantize_kv",
        "fake_quantize_kv",
        "kv_cache_config",
        "quantize_kv",
        "quantize_kv_cache_",
        "remove_kv_cache_quantization_",
    ),
    "layers": ("QuantLinear",),
    "outliers": (
        "outlier_columns",
        "s2_report",
    ),
    "primitives": (
        "PerChannel",
        "PerTensor",
        "QParams",
        "choose_qparams",
        "dequantize",
        "fake_quantize",
        "pack_int4",
        "percentile_search",
        "quantize",
        "unpack_int4",
    ),
    "storage": (
        "load_quantized",
        "packed_bytes",
        "save_quantized",
    ),
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _WHERE)
