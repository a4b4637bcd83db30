"""quantize_ with a filter_fn, per-layer-type configs (PerLayerConfig) and the per-layer summary."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _quant_tiny import tiny_inputs, tiny_model  # noqa: E402

from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    PerLayerConfig,
    QARVDConfig,
    RTNConfig,
    chunk,
    format_summary,
    quant_layers,
    quantize_,
    summary,
)


def _run(cfg, **kw):
    model = tiny_model()
    labels, noise = tiny_inputs()
    quantize_(model, cfg, **kw)
    cw.rollout(model, labels, noise, chunk_context=chunk)
    quantize_(model, dataclasses.replace(cfg, step="convert"))
    return model


def test_filter_fn_chooses_the_layers():
    model = _run(RTNConfig(), filter_fn=lambda m, name: name.endswith("ffn.0"))
    assert sorted(quant_layers(model)) == ["blocks.0.ffn.0", "blocks.1.ffn.0"]


def test_per_layer_configs_give_each_layer_type_its_own_bits():
    cfg = PerLayerConfig(
        rules=((r"ffn\.", RTNConfig(w_bits=4, a_bits=8)), ("self_attn", QARVDConfig(iters=2))),
        default=None,
    )
    model = _run(cfg)
    layers = quant_layers(model)
    assert layers and all("ffn." in n or "self_attn" in n for n in layers)  # others stay FP
    assert {layers[n].w_bits for n in layers if "ffn." in n} == {4}
    assert {layers[n].w_bits for n in layers if "self_attn" in n} == {8}
    rows = {r["name"]: r for r in summary(model)}
    assert rows["blocks.0.ffn.0"]["w_bits"] == 4 and rows["blocks.0.self_attn.q"]["a_bits"] == 8
    # bytes are what the layer holds: nibble-packed 4-bit codes, int8 8-bit codes, plus metadata
    for name in ("blocks.0.ffn.0", "blocks.0.self_attn.q"):
        state = layers[name].state_dict()
        assert rows[name]["bytes"] == sum(t.numel() * t.element_size() for t in state.values())
    ffn, q = layers["blocks.0.ffn.0"].state_dict(), layers["blocks.0.self_attn.q"].state_dict()
    assert ffn["w_packed_0"].shape == (64, 16) and "w_int_0" not in ffn
    assert q["w_int_0"].shape == (32, 32) and q["w_int_0"].dtype == torch.int8
    text = format_summary(summary(model))
    assert "blocks.0.ffn.0" in text and f"{len(layers)} layers:" in text
    assert model.quantize_info["config"]["rules"][0][1]["w_bits"] == 4


def test_per_layer_config_is_validated():
    with pytest.raises(ValueError, match="needs rules or a default"):
        PerLayerConfig()
    with pytest.raises(ValueError, match="bad regex"):
        PerLayerConfig(rules=(("(", RTNConfig()),))
    with pytest.raises(ValueError, match=r"rules\[0\]"):
        PerLayerConfig(rules=(("ffn", "w4a8"),))
    with pytest.raises(ValueError, match="PerLayerConfig.step='now'"):
        PerLayerConfig(default=RTNConfig(), step="now")


def test_per_layer_default_with_the_default_skip_matches_the_single_config():
    a = _run(PerLayerConfig(default=RTNConfig(w_bits=4)))
    b = _run(RTNConfig(w_bits=4))
    assert sorted(quant_layers(a)) == sorted(quant_layers(b))
    labels, noise = tiny_inputs()
    assert torch.equal(cw.rollout(a, labels, noise), cw.rollout(b, labels, noise))
