"""quantize_: every config on the causal model, bad input, chunk tagging, recipes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _quant_tiny import quantized, tiny_inputs, tiny_model  # noqa: E402

from diffkit.config import RECIPES_DIR, field_docs, load_yaml
from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    CONFIGS,
    AdaRoundConfig,
    PercentileConfig,
    QARVDConfig,
    RTNConfig,
    SmoothQuantConfig,
    chunk,
    chunk_weights_for,
    config_from_dict,
    quant_layers,
    quantize_,
)

RECIPES = sorted((RECIPES_DIR / "quantize").glob("*.yaml"))


@pytest.mark.parametrize(
    "cfg",
    [
        RTNConfig(w_bits=8, a_bits=8),
        PercentileConfig(w_bits=8, a_bits=8),
        SmoothQuantConfig(w_bits=8, a_bits=8),
        AdaRoundConfig(w_bits=8, a_bits=8, iters=10),
        QARVDConfig(w_bits=8, a_bits=8, iters=10),
    ],
    ids=lambda c: type(c).__name__,
)
def test_every_config_quantizes_the_causal_model_close_to_fp(cfg):
    labels, noise = tiny_inputs()
    fp = cw.rollout(tiny_model(), labels, noise)
    model = quantized(cfg)
    layers = quant_layers(model)
    assert layers and all(m.converted and m.fp is None for m in layers.values())
    assert not any("time_embedding" in n or n.startswith("head") for n in layers)
    out = cw.rollout(model, labels, noise)
    rel = float((out - fp).pow(2).mean() / fp.pow(2).mean())
    assert rel < 1e-2, rel


def test_w4_is_worse_than_w8():
    labels, noise = tiny_inputs()
    fp = cw.rollout(tiny_model(), labels, noise)
    err = {
        b: float(
            (cw.rollout(quantized(RTNConfig(w_bits=b, a_bits=8)), labels, noise) - fp).pow(2).mean()
        )
        for b in (8, 4)
    }
    assert err[4] > err[8]


def test_filter_matching_no_layer_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear layer of CausalWan was selected"):
        quantize_(tiny_model(), RTNConfig(), filter_fn=lambda m, n: False)


def test_convert_without_calibration_is_an_error():
    model = tiny_model()
    quantize_(model, RTNConfig())
    with pytest.raises(RuntimeError, match="calibration was never run"):
        quantize_(model, RTNConfig(step="convert"))


def test_convert_without_prepare_is_an_error():
    with pytest.raises(ValueError, match="step='prepare' first"):
        quantize_(tiny_model(), RTNConfig(step="convert"))


@pytest.mark.parametrize("field,value", [("w_bits", 9), ("a_bits", 12), ("w_bits", 1)])
def test_unsupported_bit_widths(field, value):
    with pytest.raises(ValueError, match=field):
        RTNConfig(**{field: value})


def test_unsupported_config_type():
    @dataclasses.dataclass(frozen=True)
    class Other:
        step: str = "prepare"

    with pytest.raises(ValueError, match="unsupported config Other"):
        quantize_(tiny_model(), Other())


def test_chunk_tags_and_bounded_reservoir():
    model = tiny_model()
    labels, noise = tiny_inputs(n=2)
    quantize_(model, RTNConfig(max_rows_per_chunk=64))
    cw.rollout(model, labels, noise, chunk_context=chunk)
    layer = quant_layers(model)["blocks.0.self_attn.q"]
    assert sorted(layer.rows) == [0, 1]  # 6 frames = 2 chunks
    assert all(len(r) == 64 for r in layer.rows.values())
    assert layer.seen[0] == 2 * 3 * 16 * 5  # batch x frames x tokens x 5 calls
    # an int tag marks every row of the call (the paper tags whole forward calls)
    assert sorted(quant_layers(model)["blocks.0.cross_attn.k"].rows) == [0, 1]


def test_chunk_weights_options():
    assert chunk_weights_for(AdaRoundConfig(), 4).tolist() == [1.0] * 4
    w = chunk_weights_for(QARVDConfig(chunk_decay=0.5), 3)
    assert torch.allclose(w, torch.tensor([4 / 7, 2 / 7, 1 / 7]) * 3)
    given = QARVDConfig(chunk_weighting="given", chunk_sensitivities=(0.5, 0.3, 0.2))
    assert torch.allclose(chunk_weights_for(given, 3), torch.tensor([1.5, 0.9, 0.6]))
    with pytest.raises(ValueError, match="chunk_sensitivities"):
        QARVDConfig(chunk_weighting="given")


def test_s1_quirk_flag_resets_weights_only_in_dual_scale_layers():
    a = quantized(QARVDConfig(w_bits=4, iters=5, s2_multiple=1, s2_z=0.5, s2_ratio=1.0))
    b = quantized(
        QARVDConfig(
            w_bits=4, iters=5, s2_multiple=1, s2_z=0.5, s2_ratio=1.0, s1_off_in_s2_layers=True
        )
    )
    dual = [n for n, m in quant_layers(a).items() if m.groups == 2]
    assert dual, "relaxed S2 thresholds should fire somewhere"
    single = [n for n, m in quant_layers(a).items() if m.groups == 1]
    la, lb = quant_layers(a), quant_layers(b)
    assert all(torch.equal(la[n].int_weight(0), lb[n].int_weight(0)) for n in single)
    assert any(la[n].act_qparams(1) != lb[n].act_qparams(1) for n in dual)


def test_config_docs_cover_every_field():
    for cls in CONFIGS.values():
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, (cls.__name__, missing)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load(path):
    data = load_yaml(path)
    cfg = config_from_dict(data["quantize"])
    assert cfg.step == "prepare"
    assert set(data) <= {"quantize", "calibration", "eval"}


def test_recipes_exist():
    assert any(p.name == "qarvd-w4a8.yaml" for p in RECIPES)


def test_same_seed_same_quantized_model():
    a = quantized(QARVDConfig(w_bits=4, iters=5))
    b = quantized(QARVDConfig(w_bits=4, iters=5))
    la, lb = quant_layers(a), quant_layers(b)
    assert all(torch.equal(la[n].int_weight(0), lb[n].int_weight(0)) for n in la)
    assert all(la[n].act_qparams(0) == lb[n].act_qparams(0) for n in la)
