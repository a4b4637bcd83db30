"""No silent failures: every option is checked at construction, unsupported bit widths are
rejected, and bad calibration data or a wrong architecture get one-line errors."""

from __future__ import annotations

import pytest
import torch
from _quant_tiny import TINY, quantized  # noqa: E402
from torch import nn

from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    CONFIGS,
    QARVDConfig,
    RTNConfig,
    load_quantized,
    quant_layers,
    quantize_,
    save_quantized,
    set_backend_,
)
from diffkit.quantize.configs import _literal_fields


@pytest.mark.parametrize("field", ["w_bits", "a_bits"])
@pytest.mark.parametrize("bits", [16, 9, 1])
def test_bit_widths_beyond_int8_codes_are_rejected(field, bits):
    with pytest.raises(ValueError, match=rf"RTNConfig\.{field}={bits}: the integer path"):
        RTNConfig(**{field: bits})


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (RTNConfig, "backend", "gpu"),
        (QARVDConfig, "outlier_branch", "bf16"),
        (QARVDConfig, "chunk_weighting", "measured"),
        (QARVDConfig, "s2_rule", "topk"),
        (RTNConfig, "act_reduce_range", "maybe"),
        (RTNConfig, "step", "calibrate"),
    ],
)
def test_the_reported_silent_options_fail_at_construction(cls, field, value):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}='{value}' is not one of"):
        cls(**{field: value})


def test_every_closed_option_of_every_config_is_checked():
    checked = 0
    for cls in CONFIGS.values():
        fields = _literal_fields(cls)
        assert fields, cls  # the closed options are typed as Literal, so they are found
        for field, allowed in fields.items():
            for value in allowed:  # every documented value is accepted ...
                kw = {"chunk_sensitivities": (1.0,)} if value == "given" else {}
                cls(**{field: value}, **kw)
            with pytest.raises(ValueError, match=rf"{cls.__name__}\.{field}="):
                cls(**{field: "no-such-option"})  # ... and anything else is not
            checked += 1
    assert checked >= 5 * 3 + 3  # step/backend/act_reduce_range x 5, + QARVD's three


def test_set_backend_rejects_unknown_names():
    model = quantized(RTNConfig())
    with pytest.raises(ValueError, match="backend='gpu' is not one of"):
        set_backend_(model, "gpu")


def test_empty_calibration_batch_gets_a_one_line_error():
    model = nn.Sequential(nn.Linear(8, 4))
    quantize_(model, RTNConfig())
    with pytest.raises(ValueError) as err:
        model(torch.zeros(0, 8))
    msg = str(err.value)
    assert "'0'" in msg and "has no rows" in msg and "\n" not in msg


def test_loading_into_another_architecture_gets_a_one_line_error(tmp_path):
    model = quantized(RTNConfig(w_bits=4))
    save_quantized(model, tmp_path / "q")
    other = cw.build({**TINY, "dim": 48, "heads": 2})
    with pytest.raises(ValueError) as err:
        load_quantized(other, tmp_path / "q")
    msg = str(err.value)
    assert "is a Linear (48, 48), the saved one a Linear (32, 32)" in msg and "\n" not in msg
    with pytest.raises(
        ValueError, match="saved from a CausalWan; it cannot load into a Sequential"
    ):
        load_quantized(nn.Sequential(nn.Linear(32, 32)), tmp_path / "q")
    deeper = cw.build({**TINY, "layers": 1})
    with pytest.raises(ValueError, match="CausalWan has no layer 'blocks.1"):
        load_quantized(deeper, tmp_path / "q")


def test_to_bfloat16_keeps_codes_and_scales():
    model = quantized(QARVDConfig(w_bits=4, iters=3, s2_multiple=1, s2_z=0.5, s2_ratio=1.0))
    before = {
        n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in quant_layers(model).items()
    }
    model.to(torch.bfloat16)
    for n, m in quant_layers(model).items():
        for k, v in m.state_dict().items():
            assert v.dtype == before[n][k].dtype and torch.equal(v, before[n][k]), (n, k)
    # the quantized layer's output follows the input dtype; on inputs exactly representable in
    # bf16 it is the fp32 result rounded once to bf16 (relative 2^-8)
    layer = quant_layers(model)["blocks.0.ffn.0"]
    x = torch.randn(40, layer.in_features).bfloat16()
    y16 = layer(x)
    y32 = layer(x.float())
    assert y16.dtype == torch.bfloat16
    torch.testing.assert_close(y16.float(), y32, rtol=2**-7, atol=2**-7 * float(y32.abs().max()))
