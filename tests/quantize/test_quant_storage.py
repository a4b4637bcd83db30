"""Quantized models load like models: every quantization parameter is a buffer, so a save ->
fresh load (without building the fp32 weights) gives identical outputs, through our folder format
and through diffusers' own save_pretrained."""

from __future__ import annotations

import pytest
import torch
from _quant_tiny import TINY, quantized, tiny_inputs  # noqa: E402
from _reload import realign_
from accelerate import init_empty_weights

from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    QARVDConfig,
    QuantLinear,
    RTNConfig,
    SmoothQuantConfig,
    load_quantized,
    quant_layers,
    quantize_,
    save_quantized,
)

CONFIGS = {
    "w8a8": RTNConfig(w_bits=8, a_bits=8),
    "w4a8-dual": QARVDConfig(w_bits=4, a_bits=8, iters=3, s2_multiple=1, s2_z=0.5, s2_ratio=1.0),
    "w4a8-fp-outliers": QARVDConfig(
        w_bits=4, iters=3, s2_multiple=1, s2_z=0.5, s2_ratio=1.0, outlier_branch="fp"
    ),
    "w6a6-smooth": SmoothQuantConfig(w_bits=6, a_bits=6),
}


def test_state_dict_holds_every_quantization_parameter():
    model = quantized(CONFIGS["w4a8-dual"])
    state = model.state_dict()
    for name, layer in quant_layers(model).items():
        assert f"{name}.qmeta" in state and f"{name}.w_scale_{layer.groups - 1}" in state
        for g in range(layer.groups):
            assert f"{name}.act_{g}" in state  # activation (scale, zero, qmax): a buffer
        rebuilt = QuantLinear.from_state(name, layer.state_dict(), mode=layer.mode)
        x = torch.randn(7, layer.in_features)
        assert torch.equal(rebuilt(x), layer(x))


@pytest.mark.parametrize("key", list(CONFIGS))
def test_save_then_load_into_an_empty_skeleton_is_identical(key, tmp_path):
    model = quantized(CONFIGS[key])
    labels, noise = tiny_inputs()
    ref = cw.rollout(model, labels, noise)
    save_quantized(model, tmp_path / "q", source="test")
    with init_empty_weights():  # parameters on the meta device: no fp32 weights allocated
        skeleton = cw.build(TINY)
    assert all(p.is_meta for p in skeleton.parameters())
    fresh = load_quantized(skeleton.eval(), tmp_path / "q", backend=model.quantize_info["backend"])
    assert not any(t.is_meta for t in [*fresh.parameters(), *fresh.buffers()])
    out = cw.rollout(fresh, labels, noise)
    assert torch.isfinite(out).all() and torch.equal(out, ref)
    assert fresh.quantize_info["config_type"] == type(CONFIGS[key]).__name__


SKY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
    out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)  # fmt: skip


def test_diffusers_save_pretrained_of_a_quantized_model_loads_back(tmp_path):
    from diffusers import SkyReelsV2Transformer3DModel as Sky

    torch.manual_seed(0)
    Sky(**SKY).save_pretrained(tmp_path / "base")
    model = realign_(Sky.from_pretrained(tmp_path / "base").eval())  # as aligned as the reload
    g = torch.Generator().manual_seed(0)
    lat, text = torch.randn(1, 4, 3, 8, 8, generator=g), torch.randn(1, 6, 16, generator=g)
    t = torch.tensor([500])

    def fwd(m):
        with torch.no_grad():
            return m(lat, t, text, return_dict=False)[0]

    quantize_(model, RTNConfig(w_bits=4, a_bits=8))
    fwd(model)
    quantize_(model, RTNConfig(w_bits=4, a_bits=8, step="convert"), keep_fp=True)
    ref = fwd(model)
    assert "blocks.0.attn1.to_q.fp.weight" in model.state_dict()  # the kept FP copy is saved too
    model.save_pretrained(tmp_path / "quantized")  # plain diffusers call
    with init_empty_weights():
        skeleton = Sky.from_config(Sky.load_config(tmp_path / "base"))
    fresh = load_quantized(
        skeleton.eval(), tmp_path / "quantized", backend=model.quantize_info["backend"]
    )
    out = fwd(fresh)
    assert torch.isfinite(out).all() and torch.equal(out, ref)
