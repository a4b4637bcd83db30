"""Saving and loading converted models: packed integer layers + the rest of the model in fp32.

``quant.safetensors`` holds, per quantized layer, 4-bit codes nibble-packed (with uint8 zero
points) or int8 codes, fp16 weight scales (exact by construction), the activation (scale, zero
point, qmax), the S2 column permutation and the bias; ``rest.safetensors`` holds every other
tensor of the model; ``quant.json`` the layer metadata, config, S2 report and the byte report.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from diffkit.core.io import atomic_dir, atomic_write_json, load_tensors, save_tensors
from diffkit.quantize.api import _set_module, quant_layers, set_backend_
from diffkit.quantize.layers import QuantLinear


def packed_bytes(model: nn.Module) -> dict:
    """Bytes at rest of the quantized layers (codes, scales, zero points, permutations, bias)
    against the same layers in fp32 (weight + bias)."""
    q = fp = 0
    for m in quant_layers(model).values():
        q += sum(t.numel() * t.element_size() for t in m.packed_state().values())
        fp += 4 * (m.in_features * m.out_features + (m.out_features if m.bias is not None else 0))
    return {"quantized_bytes": q, "fp32_bytes": fp, "ratio": q / fp if fp else float("nan")}


def save_quantized(model: nn.Module, directory: str | Path, *, source: str = "") -> dict:
    """Write ``quant.safetensors`` (packed layers), ``rest.safetensors`` (everything else, fp32)
    and ``quant.json`` atomically; returns the byte report."""
    layers = quant_layers(model)
    if not layers or not all(m.converted for m in layers.values()):
        raise ValueError("save_quantized needs a converted model (quantize_ with step='convert')")
    packed = {f"{n}.{k}": v for n, m in layers.items() for k, v in m.packed_state().items()}
    prefixes = tuple(n + "." for n in layers)
    rest = {k: v for k, v in model.state_dict().items() if not k.startswith(prefixes)}
    info = getattr(model, "quantize_info", {})
    report = packed_bytes(model)
    with atomic_dir(directory) as tmp:
        save_tensors(tmp / "quant.safetensors", packed)
        save_tensors(tmp / "rest.safetensors", rest)
        report["file_bytes"] = (tmp / "quant.safetensors").stat().st_size
        atomic_write_json(
            tmp / "quant.json",
            {"source": source, "layers": {n: m.meta() for n, m in layers.items()},
             "bytes": report, **info},
        )  # fmt: skip
    return report


def load_quantized(model: nn.Module, directory: str | Path, backend: str = "auto") -> nn.Module:
    """Install a saved quantization into ``model`` (same architecture, FP or random weights)."""
    directory = Path(directory)
    meta = json.loads((directory / "quant.json").read_text())
    packed = load_tensors(directory / "quant.safetensors")
    for name, lm in meta["layers"].items():
        own = {k[len(name) + 1 :]: v for k, v in packed.items() if k.startswith(name + ".")}
        _set_module(model, name, QuantLinear.from_packed(name, lm, own))
    rest = load_tensors(directory / "rest.safetensors")
    missing, unexpected = model.load_state_dict(rest, strict=False)
    prefixes = tuple(n + "." for n in meta["layers"])
    bad = [k for k in missing if not k.startswith(prefixes)]
    if bad or unexpected:
        raise ValueError(
            f"saved state does not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}"
        )
    model.quantize_info = {k: v for k, v in meta.items() if k not in ("layers",)}
    return set_backend_(model, backend)
