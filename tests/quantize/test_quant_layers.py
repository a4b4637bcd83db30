"""QuantLinear: dual scale, simulator == int8 kernel, packing, save/reload, fallback."""

from __future__ import annotations

import logging

import pytest
import torch
from _quant_tiny import TINY, quantized, tiny_inputs, tiny_model  # noqa: E402
from torch import nn

from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    QARVDConfig,
    QuantLinear,
    RTNConfig,
    chunk,
    kernels,
    load_quantized,
    packed_bytes,
    quant_layers,
    quantize_,
    save_quantized,
    set_backend_,
)
from diffkit.quantize.primitives import PerChannel, choose_qparams, quantize


def _layer_with_outliers(K=128, N=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(K, N)
    with torch.no_grad():
        lin.weight.normal_(0, 0.05, generator=g)
        lin.weight[:, :5] *= 12
    return lin


def _convert_single(lin, cfg, x):
    model = nn.Sequential()
    model.add_module("blocks", nn.Sequential(lin))
    quantize_(model, cfg)
    with chunk(0):
        model(x)
    quantize_(model, type(cfg)(**{**cfg.__dict__, "step": "convert"}))
    return model.blocks[0]


def test_dual_scale_layer_equals_sum_of_its_two_quantized_branches():
    lin = _layer_with_outliers()
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    q = _convert_single(lin, QARVDConfig(w_bits=4, a_bits=8, iters=5, backend="simulate"), x)
    assert q.groups == 2 and q.n_outlier == 32
    xp = x[:, q.perm.long()]  # outlier columns first
    branch = []
    for g in range(2):
        xq = q.quantize_input(xp[:, q._group_cols(g)], g)
        s, z, _ = q.act_qparams(g)
        xd = (xq.float() - z) * s
        wd = q.int_weight(g).float() * getattr(q, f"w_scale_{g}")[:, None]
        branch.append(xd @ wd.T)
    assert torch.allclose(q(x), branch[0] + branch[1] + q.bias, atol=1e-5)
    assert set(range(5)) <= set(q.perm[:32].tolist())


@pytest.mark.parametrize("w_bits,a_bits", [(8, 8), (4, 8), (4, 6)])
def test_simulator_equals_int8_kernel(w_bits, a_bits):
    if not kernels.onednn_available():
        pytest.skip("oneDNN int8 ops missing from this torch")
    lin = _layer_with_outliers(K=256, N=96)
    x = torch.randn(200, 256, generator=torch.Generator().manual_seed(2))
    q = _convert_single(
        lin, QARVDConfig(w_bits=w_bits, a_bits=a_bits, iters=5, backend="onednn"), x
    )
    assert q.mode == "onednn"
    y_kernel = q(x)
    q.set_mode_("simulate")
    y_sim = q(x)
    rel = float((y_kernel - y_sim).abs().max() / y_sim.abs().max())
    assert rel < 1e-5, rel


def test_onednn_op_signature_exists_in_this_torch():
    # Fails loudly if the int8 kernel disappears (spec (f): pin the torch version).
    assert kernels.onednn_available(), "torch.ops.onednn.qlinear_pointwise is missing"


def test_missing_kernel_falls_back_to_simulation_with_one_message(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "onednn_available", lambda: False)
    monkeypatch.setattr(kernels, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="diffkit.quantize.kernels"):
        assert kernels.resolve_backend("auto") == "simulate"
        assert kernels.resolve_backend("onednn") == "simulate"
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 1 and "falling back to the simulated path" in msgs[0]


@pytest.mark.parametrize("w_bits,limit", [(8, 0.27), (4, 0.20)])
def test_packed_bytes_targets(w_bits, limit):
    # the default moving-digits-causal architecture (K = 64 and 256), metadata included
    torch.manual_seed(0)
    model = cw.build(cw.DEFAULT_CONFIG).eval()
    labels = torch.tensor([[1, -1]])
    noise = cw.rollout_noise(1, cw.DEFAULT_CONFIG, torch.Generator().manual_seed(0))
    quantize_(model, RTNConfig(w_bits=w_bits, a_bits=8))
    cw.rollout(model, labels, noise, chunk_context=chunk)
    quantize_(model, RTNConfig(w_bits=w_bits, a_bits=8, step="convert"))
    rep = packed_bytes(model)
    assert rep["ratio"] <= limit, rep


def test_converted_model_saves_reloads_and_gives_identical_outputs(tmp_path):
    model = quantized(QARVDConfig(w_bits=4, a_bits=8, iters=5))
    labels, noise = tiny_inputs()
    ref = cw.rollout(model, labels, noise)
    rep = save_quantized(model, tmp_path / "q", source="test")
    assert rep["file_bytes"] > 0
    fresh = cw.build(TINY)  # random weights: everything must come from the files
    load_quantized(fresh, tmp_path / "q", backend=model.quantize_info["backend"])
    assert torch.equal(cw.rollout(fresh.eval(), labels, noise), ref)
    assert all(m.w_bits == 4 for m in quant_layers(fresh).values())


def test_int4_weights_are_nibble_packed_at_rest():
    model = quantized(RTNConfig(w_bits=4, a_bits=8))
    layer = next(iter(quant_layers(model).values()))
    st = layer.state_dict()
    assert st["w_packed_0"].dtype == torch.uint8
    assert st["w_packed_0"].shape[1] == (layer.in_features + 1) // 2
    assert "w_int_0" not in st  # W4 stays packed in memory too, not only at rest


def test_dequantized_weight_close_to_fp_at_8_bit():
    model = tiny_model()
    ref = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)
    }
    labels, noise = tiny_inputs()
    quantize_(model, RTNConfig(w_bits=8, a_bits=8))
    cw.rollout(model, labels, noise, chunk_context=chunk)
    quantize_(model, RTNConfig(w_bits=8, a_bits=8, step="convert"))
    for name, layer in quant_layers(model).items():
        w = ref[name]
        qp = choose_qparams(w, 8, symmetric=True, granularity=PerChannel(0))
        assert torch.allclose(layer.dequantized_weight(), (quantize(w, qp) * qp.scale), atol=1e-6)


@pytest.mark.gpu
def test_cuda_int_mm_path_matches_simulator():
    lin = _layer_with_outliers(K=256, N=96)
    x = torch.randn(64, 256)
    q = _convert_single(lin, RTNConfig(w_bits=8, a_bits=8, backend="simulate"), x).cuda()
    y_sim = q(x.cuda())
    q.set_mode_("cuda")
    y = q(x.cuda())
    assert float((y - y_sim).abs().max() / y_sim.abs().max()) < 1e-5


def test_set_backend_switches_every_layer():
    model = quantized(RTNConfig(w_bits=8, a_bits=8))
    set_backend_(model, "simulate")
    assert {m.mode for m in quant_layers(model).values()} == {"simulate"}
    assert isinstance(next(iter(quant_layers(model).values())), QuantLinear)


def test_full_precision_outlier_branch(tmp_path):
    lin = _layer_with_outliers()
    w = lin.weight.detach().clone()
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    cfg = QARVDConfig(w_bits=4, a_bits=8, iters=5, outlier_branch="fp", backend="simulate")
    q = _convert_single(lin, cfg, x)
    assert q.groups == 2 and q.act_qparams(0) is None
    perm = q.perm.long()
    torch.testing.assert_close(q.w_fp_0, w[:, perm[:32]])  # outlier columns kept exactly
    xq = q.quantize_input(x[:, perm[32:]], 1)
    s, z, _ = q.act_qparams(1)
    xd = (xq.float() - z) * s
    expected = (
        x[:, perm[:32]] @ w[:, perm[:32]].T
        + xd @ (q.int_weight(1).float() * q.w_scale_1[:, None]).T
    )
    torch.testing.assert_close(q(x), expected + q.bias, atol=1e-5, rtol=1e-5)
    again = QuantLinear.from_state(q.name, q.state_dict())
    assert torch.equal(again(x), q(x))


@pytest.mark.slow
def test_torch_compile_runs_around_the_int8_kernel():
    lin = _layer_with_outliers(K=128, N=64)
    x = torch.randn(32, 128, generator=torch.Generator().manual_seed(4))
    q = _convert_single(lin, QARVDConfig(w_bits=4, a_bits=8, iters=3), x)
    model = nn.Sequential(nn.Linear(128, 128), q, nn.GELU()).eval()
    with torch.no_grad():
        eager = model(x)
        compiled = torch.compile(model)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_activation_quantizer_agrees_with_the_eager_one():
    # one fused pass from torch.compile; it rounds x * (1/s), the eager paths x / s or torch's
    # quantize_per_tensor, so codes may differ by one step at (near-)ties, never more; bf16 inputs
    # lie on a coarse grid and meet ties more often (0.2 % of codes here)
    x = torch.randn(300, 96, generator=torch.Generator().manual_seed(5)) * 3
    for dtype in (torch.float32, torch.bfloat16):
        xd = x.to(dtype)
        for qmax in (255, 127, 63):
            eager = kernels.quantize_act(xd, 0.037, 61, qmax)
            fused = kernels.quantize_act(xd, 0.037, 61, qmax, compiled=True)
            assert fused.dtype == torch.uint8 and int(fused.max()) <= qmax
            assert int((fused.int() - eager.int()).abs().max()) <= 1
            assert float((fused != eager).float().mean()) < 1e-2
    lin = _layer_with_outliers(K=128, N=64)
    xs = torch.randn(32, 128, generator=torch.Generator().manual_seed(6))
    q = _convert_single(lin, QARVDConfig(w_bits=4, a_bits=8, iters=3, compile_act_quant=True), xs)
    assert q.compile_act_quant
    y = q(xs)
    q.set_mode_(q.mode, compile_act_quant=False)
    torch.testing.assert_close(y, q(xs), atol=2e-2 * float(y.abs().max()), rtol=0)


@pytest.mark.parametrize("qmax", [255, 127, 63])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_activation_quantizer_equals_the_reference_formula(qmax, dtype):
    # torch's quantize_per_tensor (+ a clamp below 8 bits) against clamp(round(x / s) + z, 0, qmax):
    # the same real numbers rounded, so at most one step apart at near-ties, and saturating alike
    x = (torch.randn(400, 64, generator=torch.Generator().manual_seed(7)) * 4).to(dtype)
    s, z = 0.037, 61
    got = kernels.quantize_act(x, s, z, qmax)
    ref = torch.clamp(torch.round(x.double() / s) + z, 0, qmax)
    assert got.dtype == torch.uint8 and int(got.max()) == qmax and int(got.min()) == 0
    diff = (got.double() - ref).abs()
    assert float(diff.max()) <= 1 and float((diff > 0).double().mean()) < 1e-2
