"""Saving and loading converted models without first building the fp32 model.

A converted :class:`~diffkit.quantize.layers.QuantLinear` keeps every quantization parameter in a
buffer (its layout is in that module's docstring), so ``model.state_dict()`` describes the
quantized model completely. :func:`save_quantized` writes it as ``quant.safetensors`` (the
quantized layers: int8 or nibble-packed int4 codes, scales, zero points, S2 permutations, biases),
``rest.safetensors`` (every other tensor, in its own dtype) and ``quant.json`` (config, S2 report,
byte report, model class).

:func:`load_quantized` installs such a folder, or a diffusers ``save_pretrained`` folder of a
quantized model, into a model skeleton of the same architecture. Build the skeleton with
``accelerate.init_empty_weights()`` (parameters on the meta device) so that the fp32 weights are
never allocated: peak memory is then the packed bytes plus the unquantized tensors::

    with init_empty_weights():
        model = SkyReelsV2Transformer3DModel.from_config(SkyReelsV2Transformer3DModel.load_config(base))
    load_quantized(model, "out/skyreels-w4a8")
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from diffkit.core.io import atomic_dir, atomic_write_json, save_tensors
from diffkit.quantize.api import _set_module, quant_layers, set_backend_
from diffkit.quantize.layers import QuantLinear

FORMAT = 2


def packed_bytes(model: nn.Module) -> dict:
    """Bytes of the quantized layers (codes, scales, zero points, permutations, bias) against the
    same layers in fp32 (weight + bias)."""
    rows = [m.summary() for m in quant_layers(model).values()]
    q, fp = sum(r["bytes"] for r in rows), sum(r["fp32_bytes"] for r in rows)
    return {"quantized_bytes": q, "fp32_bytes": fp, "ratio": q / fp if fp else float("nan")}


def save_quantized(model: nn.Module, directory: str | Path, *, source: str = "") -> dict:
    """Write ``quant.safetensors``, ``rest.safetensors`` and ``quant.json`` atomically; returns
    the byte report."""
    layers = quant_layers(model)
    if not layers or not all(m.converted for m in layers.values()):
        raise ValueError("save_quantized needs a converted model (quantize_ with step='convert')")
    prefixes = tuple(n + "." for n in layers)
    state = model.state_dict()
    packed = {
        f"{n}.{k}": v for n, m in layers.items() for k, v in m.quant_state().items()
    }  # the layers' own buffers (a kept FP copy for only_chunks is not saved)
    rest = {k: v for k, v in state.items() if not k.startswith(prefixes)}
    info = getattr(model, "quantize_info", {})
    report = packed_bytes(model)
    with atomic_dir(directory) as tmp:
        save_tensors(tmp / "quant.safetensors", packed)
        save_tensors(tmp / "rest.safetensors", rest)
        report["file_bytes"] = (tmp / "quant.safetensors").stat().st_size
        atomic_write_json(
            tmp / "quant.json",
            {"format": FORMAT, "source": source, "model_class": type(model).__name__,
             "layers": {n: m.summary() for n, m in layers.items()}, "bytes": report,
             **{k: v for k, v in info.items() if k != "layers"}},
        )  # fmt: skip
    return report


def _read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {directory}")
    out: dict[str, torch.Tensor] = {}
    for f in files:
        with safe_open(str(f), framework="pt", device="cpu") as h:
            for k in h.keys():  # noqa: SIM118 (safe_open has no __iter__)
                out[k] = h.get_tensor(k)
    return out


def load_quantized(
    model: nn.Module,
    directory: str | Path,
    backend: str = "auto",
    *,
    compile_act_quant: bool = False,
) -> nn.Module:
    """Install a saved quantized model into ``model`` (same architecture; its weights may be on
    the meta device, random, or FP) and return it. ``directory`` is a :func:`save_quantized`
    folder or a diffusers ``save_pretrained`` folder of a quantized model."""
    directory = Path(directory)
    meta_path = directory / "quant.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta and meta.get("format") != FORMAT:
        raise ValueError(
            f"{directory} holds quantized format {meta.get('format', 1)}; this diffkit reads "
            f"format {FORMAT}: quantize the model again"
        )
    saved_cls = meta.get("model_class")
    if saved_cls and saved_cls != type(model).__name__:
        raise ValueError(
            f"{directory} was saved from a {saved_cls}; it cannot load into a {type(model).__name__}"
        )
    tensors = _read_tensors(directory)
    names = sorted(k[: -len(".qmeta")] for k in tensors if k.endswith(".qmeta"))
    if not names:
        raise ValueError(f"{directory} holds no quantized layers (no '*.qmeta' tensors)")
    what = saved_cls or "another architecture"
    for name in names:
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"{directory} was saved from {what}: {type(model).__name__} has no layer {name!r}"
            ) from None
        _, _, k, n, _ = tensors[f"{name}.qmeta"].tolist()
        shape = (getattr(old, "in_features", None), getattr(old, "out_features", None))
        if not isinstance(old, (nn.Linear, QuantLinear)) or shape != (k, n):
            raise ValueError(
                f"{directory} was saved from {what}: layer {name!r} is a {type(old).__name__} "
                f"{shape}, the saved one a Linear {(k, n)}"
            )
        prefix = name + "."
        own = {
            key[len(prefix) :]: tensors.pop(key) for key in list(tensors) if key.startswith(prefix)
        }
        own = {k: v for k, v in own.items() if "." not in k}  # drop a kept FP copy (fp.weight)
        _set_module(model, name, QuantLinear.from_state(name, own))
    missing, unexpected = model.load_state_dict(tensors, strict=False, assign=True)
    prefixes = tuple(n + "." for n in names)
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing or unexpected:
        raise ValueError(
            f"{directory} does not match {type(model).__name__}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:
        raise ValueError(f"{directory} left {len(on_meta)} tensor(s) unset, e.g. {on_meta[0]!r}")
    model.quantize_info = {k: v for k, v in meta.items() if k not in ("layers", "format")}
    model.quantize_info.setdefault("backend", backend)
    return set_backend_(model, backend, compile_act_quant=compile_act_quant)
