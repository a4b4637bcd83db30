"""Fused quantized MLPs (Linear -> GELU -> Linear as two int8 GEMMs with uint8 codes between):
the fused kernel against the reference arithmetic, the fused model against the unfused one and
the simulator, unchanged state_dict keys, save/reload, and every fallback to the unfused path."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch
from _quant_tiny import quantized
from torch import nn

from diffkit.quantize import RTNConfig, kernels, load_quantized, quantize_, save_quantized
from diffkit.quantize import fusion as fusionlib
from diffkit.quantize.chunks import only_chunks
from diffkit.quantize.fusion import QuantFeedForward, QuantMLP, set_fused_

pytestmark = pytest.mark.skipif(not kernels.onednn_available(), reason="needs oneDNN int8 ops")

WAN_TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
    out_channels=4, text_dim=16, freq_dim=16, ffn_dim=64, num_layers=2, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wan")
    WanTransformer3DModel(**WAN_TINY).save_pretrained(path)
    return path


def _wan(path):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(path).eval()


def _wan_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(1, 4, 2, 8, 8, generator=g),
        torch.tensor([500]),
        torch.randn(1, 8, 16, generator=g),
    )


def _run(model, inputs, dtype=torch.float32):
    lat, t, text = inputs
    with torch.no_grad():
        return model(lat.to(dtype), t, text.to(dtype), return_dict=False)[0].float()


def _quantized_wan(path, cfg=None):
    cfg = cfg or RTNConfig(w_bits=8, a_bits=8)
    model = _wan(path)
    quantize_(model, cfg)
    _run(model, _wan_inputs(1))
    return quantize_(model, dataclasses.replace(cfg, step="convert"))


def _count_fused(monkeypatch) -> list:
    calls: list = []
    real = fusionlib._fused_forward
    monkeypatch.setattr(fusionlib, "_fused_forward", lambda *a: calls.append(1) or real(*a))
    return calls


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("approximate", ["tanh", "none"])
@pytest.mark.parametrize("qmax", [255, 127])
def test_fused_gelu_and_output_codes_match_the_reference_arithmetic(approximate, qmax):
    # reference: the GEMM in fp32, F.gelu, then the next layer's quantizer (the simulate backend);
    # oneDNN applies GELU and quantizes the fp32 accumulator inside the kernel. Both round the same
    # real numbers, so codes can differ by one step at near-ties (accumulation order), never more.
    g = torch.Generator().manual_seed(0)
    M, K, N = 96, 128, 160
    x_q = torch.randint(0, 256, (M, K), generator=g).to(torch.uint8)
    w_q = torch.randint(-127, 128, (N, K), generator=g).to(torch.int8)
    w_scale = torch.rand(N, generator=g) * 1e-3 + 1e-4
    bias = torch.randn(N, generator=g) * 0.1
    args = (x_q, 0.02, 128)
    ref_w = kernels.pack_weight(w_q, w_scale, "simulate")
    one_w = kernels.pack_weight(w_q, w_scale, "onednn")
    y_ref = kernels.linear_packed(*args, ref_w, bias, "simulate", gelu=approximate)
    y = kernels.linear_packed(*args, one_w, bias, "onednn", gelu=approximate)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=1e-5 * float(y_ref.abs().max()), rtol=1e-4)
    out_q = (float(y_ref.abs().max()) / (0.9 * qmax), qmax // 4, qmax)  # the top codes saturate
    c_ref = kernels.linear_packed(*args, ref_w, bias, "simulate", gelu=approximate, out_q=out_q)
    c = kernels.linear_packed(*args, one_w, bias, "onednn", gelu=approximate, out_q=out_q)
    assert c.dtype == torch.uint8 and c.shape == (M, N) and int(c.max()) <= qmax
    assert int(c_ref.max()) == qmax  # the clamp is exercised
    diff = (c.int() - c_ref.int()).abs()
    assert int(diff.max()) <= 1 and float((diff > 0).float().mean()) < 1e-2


def test_diffusers_feedforward_is_fused_with_unchanged_keys_and_matches_unfused(
    wan_dir, monkeypatch
):
    model = _quantized_wan(wan_dir)
    assert model.quantize_info["fused_mlps"] == 2
    assert all(isinstance(b.ffn, QuantFeedForward) for b in model.blocks)
    ffn_keys = {k for k in model.state_dict() if ".ffn." in k}
    assert ffn_keys and all(re.search(r"\.ffn\.net\.(0\.proj|2)\.[a-z_0-9]+$", k) for k in ffn_keys)
    inputs = _wan_inputs(0)
    fp = _run(_wan(wan_dir), inputs)
    calls = _count_fused(monkeypatch)
    fused = _run(model, inputs)
    assert len(calls) == 2
    set_fused_(model, False)
    unfused = _run(model, inputs)
    assert len(calls) == 2  # the switch is honoured
    quant_err = _rel(unfused, fp)
    assert quant_err > 1e-4  # W8A8 is not exact: the bound below is meaningful
    # fp32: the two paths quantize the same fp32 GELU outputs; at most a few near-tie codes move
    assert _rel(fused, unfused) < 0.05 * quant_err
    set_fused_(model, True)
    bf = _run(model.to(torch.bfloat16), inputs, torch.bfloat16)  # the fast dtype on AMX CPUs
    assert len(calls) == 4 and torch.isfinite(bf).all()
    assert _rel(bf, fp) < 3 * quant_err + 1e-2  # bf16 rounding of the unquantized parts on top


def test_fused_model_saves_and_reloads_fused_and_bit_identical(wan_dir, tmp_path):
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    model = _quantized_wan(wan_dir)
    save_quantized(model, tmp_path / "q")
    with init_empty_weights():
        skeleton = WanTransformer3DModel.from_config(_wan(wan_dir).config)
    again = load_quantized(skeleton, tmp_path / "q")
    assert all(isinstance(b.ffn, QuantFeedForward) for b in again.blocks)
    inputs = _wan_inputs(0)
    assert torch.equal(_run(again, inputs), _run(model, inputs))


def test_zoo_sequential_mlp_is_fused_and_close_to_the_simulator(monkeypatch):
    from _quant_tiny import tiny_inputs

    from diffkit.models import causal_wan as cw
    from diffkit.quantize import set_backend_

    model = quantized(RTNConfig(w_bits=8, a_bits=8))
    assert all(isinstance(b.ffn, QuantMLP) for b in model.blocks)
    assert all(re.search(r"\.ffn\.[02]\.", k) for k in model.state_dict() if ".ffn." in k)
    labels, noise = tiny_inputs(seed=3)
    calls = _count_fused(monkeypatch)
    fused = cw.rollout(model, labels, noise)
    assert len(calls) > 0
    set_backend_(model, "simulate")
    n = len(calls)
    sim = cw.rollout(model, labels, noise)
    assert len(calls) == n  # the simulator is the unfused reference
    assert _rel(fused, sim) < 1e-3


def test_fallbacks_run_the_modules_one_by_one(wan_dir, monkeypatch):
    model = _quantized_wan(wan_dir)
    inputs = _wan_inputs(0)
    calls = _count_fused(monkeypatch)
    ffn = model.blocks[0].ffn
    with only_chunks([0]):  # the S1 protocol's selection needs the per-layer path
        _run(model, inputs)
    assert not calls
    ffn.net[1].p = 0.5
    ffn.train()
    x = torch.randn(3, 5, ffn.up.in_features)
    assert not ffn.can_fuse(x)  # active dropout sits between the GEMMs
    ffn.eval()
    assert ffn.can_fuse(x)
    ffn.net[1].p = 0.0
    ffn.down.set_mode_("simulate")
    assert not ffn.can_fuse(x)


def test_layers_with_an_outlier_group_or_smoothing_are_not_fused(wan_dir):
    from diffkit.quantize import QARVDConfig, SmoothQuantConfig

    cfg = QARVDConfig(
        w_bits=4, a_bits=8, iters=2, s2_scope=("ffn.net.2",), s2_z=0.1, s2_ratio=0.5, s2_multiple=8
    )
    model = _quantized_wan(wan_dir, cfg)
    ffn = model.blocks[0].ffn
    x = torch.randn(2, ffn.up.in_features)
    assert ffn.down.groups == 2 and not ffn.down.fusable() and not ffn.can_fuse(x)
    model = _quantized_wan(wan_dir, SmoothQuantConfig(w_bits=8, a_bits=8))
    ffn = model.blocks[0].ffn
    assert not ffn.down.fusable() and not ffn.can_fuse(x)
    y = ffn(x)  # runs unfused
    assert y.shape == (2, ffn.down.out_features)


def test_fuse_is_idempotent_and_leaves_unquantized_mlps_alone():
    seq = nn.Sequential(nn.Linear(8, 16), nn.GELU(approximate="tanh"), nn.Linear(16, 8))
    model = nn.Sequential()
    model.add_module("ffn", seq)
    assert fusionlib.fuse_mlps_(model) == 0 and model.ffn is seq
    q = quantized(RTNConfig(w_bits=8, a_bits=8))
    assert fusionlib.fuse_mlps_(q) == 0  # already fused at convert


@pytest.mark.slow
def test_torch_compile_runs_around_the_fused_mlp():
    q = quantized(RTNConfig(w_bits=8, a_bits=8))
    ffn = q.blocks[0].ffn
    x = torch.randn(2, 40, ffn.up.in_features, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eager = ffn(x)
        compiled = torch.compile(ffn)(x)
    torch.testing.assert_close(compiled, eager, atol=1e-5 * float(eager.abs().max()), rtol=0)


@pytest.mark.gpu
def test_cuda_fused_mlp_matches_the_simulator(wan_dir):
    # the CUDA backend (torch._int_mm) runs GELU and the output quantizer after its GEMM in fp32:
    # the same arithmetic as the simulator, up to accumulation order
    from diffkit.quantize import set_backend_

    model = _quantized_wan(wan_dir).cuda()
    inputs = tuple(t.cuda() for t in _wan_inputs(0))
    set_backend_(model, "simulate")
    sim = _run(model, inputs)
    set_backend_(model, "cuda")
    assert model.blocks[0].ffn.can_fuse(torch.randn(2, model.blocks[0].ffn.up.in_features).cuda())
    fused = _run(model, inputs)
    assert _rel(fused, sim) < 1e-3
