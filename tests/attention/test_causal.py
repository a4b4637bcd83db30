"""RoPeSLR on the causal DiT (CausalWan): block-causal, KV cache == recomputation, removal, and
composition with Q-ARVD in both orders."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from diffkit.attention import RoPeSLRConfig, apply_ropeslr_, remove_ropeslr_, ropeslr_state
from diffkit.attention.causal import RoPeSLRCausalSelfAttention, frame_block_size
from diffkit.models import causal_wan as cw
from diffkit.quantize import QARVDConfig, QuantLinear, RTNConfig, quantize_
from diffkit.quantize.targets import calibrate_causal

# 3 chunks of 3 frames, 16 tokens a frame (144 tokens), 2 heads x 16; 2 denoising passes a chunk.
TINY = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 2, "num_frames": 9}
# blocks of 4 tokens (a frame = 4 blocks of 2x2; 36 key blocks), density 0.3: the selection matters
SPARSE = RoPeSLRConfig(density=0.3, block_size=4, tile=(1, 2, 2))  # 2x2 tiles: permuted
LABELS = torch.tensor([[3, -1]])


def _model():
    torch.manual_seed(0)
    return cw.build(TINY).eval()


def _noise(seed=0, batch=1):
    return cw.rollout_noise(batch, TINY, torch.Generator().manual_seed(seed), steps=2)


def _both(m, noise=None, labels=LABELS, **kw):
    noise = _noise() if noise is None else noise
    return cw.rollout(m, labels, noise, **kw), cw.rollout(m, labels, noise, use_cache=False, **kw)


def _assert_cache_matches_quantized(cached, full, reference):
    """Cache == recomputation for a model with static int8 activations. The two paths differ by
    the base model's own fp32 reassociation (~5e-7, the dense model's too; RoPeSLR adds none);
    where that lands an activation on a rounding boundary, one code flips and the rollout moves by
    one quantization step from there on (seen: RoPeSLR first, W8A8, chunk 2: max 1.4e-3, squared
    error 2e-5 of RoPeSLR's own effect). A causality or selection error is of the order of that
    effect, so the bound is 1e-3 of it."""
    err = (cached - full).pow(2).mean()
    effect = (cached - reference).pow(2).mean()
    assert float(effect) > 1e-6  # RoPeSLR changes the quantized dense model's rollout
    assert float(err) <= 1e-3 * float(effect), (float(err), float(effect))


def _quantize(m, cfg):
    quantize_(m, cfg)
    calibrate_causal(m, n=1, seed=0)
    quantize_(m, dataclasses.replace(cfg, step="convert"))
    return m


def test_cached_rollout_equals_recomputation_at_low_density():
    """Sparse selection + low-rank background at density 0.3 (different budgets per chunk, mass
    merge with the exact lse, top-p, 3D neighbours, guidance's batch of 2B): cache == recompute,
    and the result is not the dense model's."""
    m = _model()
    dense = cw.rollout(m, LABELS, _noise())
    configs = [
        SPARSE,
        RoPeSLRConfig(density=0.2, block_size=8, merge="mass", feature_map="elu1"),
        RoPeSLRConfig(density=0.3, block_size=4, selection="topp", top_p=0.6, local_radius=1),
    ]
    for cfg in configs:
        replaced = apply_ropeslr_(m, cfg)
        cached, full = _both(m)
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)
        assert float((cached - dense).abs().max()) > 1e-3  # RoPeSLR really ran
        remove_ropeslr_(m, replaced)
    replaced = apply_ropeslr_(m, SPARSE)
    cached, full = _both(m, _noise(1, 2), torch.tensor([[3, -1], [7, 2]]), cfg_scale=2.0)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_attention_of_a_chunk_is_the_same_with_cached_keys_as_in_the_full_sequence():
    """The pure function on identical q/k/v: the last chunk's rows of the block-causal call over
    all 9 frames equal the call with frames 0-5 as cached keys (non-square, Lq = 48, Lk = 144),
    background, APE and the cached keys' inverse RoPE included; fp64, so to 1e-12."""
    from diffkit.attention.background import RoPeSLRParams
    from diffkit.attention.causal import causal_layout, causal_ropeslr_attention
    from diffkit.core.rope import apply_rope, rope_freqs_3d

    cfg = dataclasses.replace(SPARSE, backend="reference")
    torch.manual_seed(0)
    params = RoPeSLRParams(cfg, 2, 16).double()
    q_pre, k_pre, v = torch.randn(3, 2, 2, 144, 16, dtype=torch.float64).unbind(0)
    cos, sin = rope_freqs_3d(16, (9, 4, 4))
    q, k = apply_rope(q_pre, cos, sin), apply_rope(k_pre, cos, sin)
    frames = torch.arange(9)
    mask = cw.build(TINY).block_mask(frames, frames)
    full_layout = causal_layout(frames, frames, (4, 4), cfg, mask, 16, q.device)
    last = causal_layout(frames[6:], frames, (4, 4), cfg, None, 16, q.device)
    kw = {"config": cfg, "params": params}
    full = causal_ropeslr_attention(q, k, v, layout=full_layout, q_pre=q_pre, **kw)
    rows = slice(96, 144)
    cached = causal_ropeslr_attention(
        q[:, :, rows], k, v, layout=last, q_pre=q_pre[:, :, rows], **kw
    )
    torch.testing.assert_close(cached, full[:, :, rows], atol=1e-12, rtol=0)


def test_density_one_equals_the_dense_model():
    m = _model()
    dense = cw.rollout(m, LABELS, _noise())
    apply_ropeslr_(m, RoPeSLRConfig(density=1.0, block_size=4))
    cached, full = _both(m)
    torch.testing.assert_close(cached, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, dense, atol=1e-5, rtol=1e-5)


def test_blocks_stay_inside_a_frame_and_params_are_saved():
    assert frame_block_size(64, 128) == 64 and frame_block_size(64, 48) == 32
    assert frame_block_size(60, 128) == 60 and frame_block_size(60, 16) == 15
    m = _model()
    keys = set(m.state_dict())
    apply_ropeslr_(m, SPARSE)
    new = set(m.state_dict())
    assert keys <= new  # the dense model's names are unchanged (q/k/v/o shared, same paths)
    assert all(".self_attn.processor.params." in k for k in new - keys)


def test_remove_restores_the_dense_model_bit_exactly():
    m = _model()
    attn = [b.self_attn for b in m.blocks]
    dense = cw.rollout(m, LABELS, _noise())
    replaced = apply_ropeslr_(m, SPARSE)
    assert all(isinstance(b.self_attn, RoPeSLRCausalSelfAttention) for b in m.blocks)
    state = ropeslr_state(m)
    state.mode = "dense"  # the original attention, op for op
    assert torch.equal(cw.rollout(m, LABELS, _noise()), dense)
    state.mode = "sparse"
    assert not torch.equal(cw.rollout(m, LABELS, _noise()), dense)
    remove_ropeslr_(m, replaced)
    assert [b.self_attn for b in m.blocks] == attn
    assert not any(".processor." in k for k in m.state_dict())
    assert torch.equal(cw.rollout(m, LABELS, _noise()), dense)
    assert len(m._forward_pre_hooks) == 0


def test_a_deep_copy_keeps_its_own_hook_and_removal():
    """The frame hook is a bound method of the state, so a deepcopy hooks the copy's state."""
    m = _model()
    dense = cw.rollout(m, LABELS, _noise())
    replaced = apply_ropeslr_(m, SPARSE)
    ref = cw.rollout(m, LABELS, _noise())
    c = copy.deepcopy(m)
    assert ropeslr_state(c) is not ropeslr_state(m)
    torch.testing.assert_close(cw.rollout(c, LABELS, _noise()), ref, atol=0, rtol=0)
    remove_ropeslr_(c, replaced)
    assert torch.equal(cw.rollout(c, LABELS, _noise()), dense)


def test_teacher_forcing_mask_matches_the_cached_inference_step():
    """The teacher-forcing mask (constant per frame) is supported: the noisy chunk's output in the
    [clean; noisy] sequence equals the KV-cached inference call, as for the dense model."""
    m = _model()
    apply_ropeslr_(m, SPARSE)
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(1, 9, 16, 8, 8, generator=g)
    noisy = torch.randn(1, 9, 16, 8, 8, generator=g)
    seq, idx, mask = cw.teacher_forcing_inputs(m, clean, noisy)
    t = torch.cat([torch.zeros(1, 9), torch.full((1, 9), 600.0)], 1)
    with torch.no_grad():
        out = m(seq, t, LABELS, frame_index=idx, mask=mask)[:, 9:]
        cache = cw.KVCache.empty(len(m.blocks))
        m(clean[:, :3], torch.zeros(1, 3), LABELS, cache=cache, write_cache=True)
        step = m(noisy[:, 3:6], torch.full((1, 3), 600.0), LABELS, cache=cache)
    torch.testing.assert_close(out[:, 3:6], step, atol=1e-5, rtol=1e-5)


def test_unsupported_masks_and_options_raise_clearly():
    m = _model()
    with pytest.raises(ValueError, match="dense_first_steps"):
        apply_ropeslr_(m, RoPeSLRConfig(block_size=4, dense_first_steps=1))
    apply_ropeslr_(m, SPARSE)
    x, t = torch.randn(1, 3, 16, 8, 8), torch.zeros(1, 3)
    token_causal = torch.ones(48, 48, dtype=torch.bool).tril()[None, None]  # not per frame
    with pytest.raises(ValueError, match="constant over each frame"):
        m(x, t, LABELS, mask=token_causal)
    with pytest.raises(ValueError, match="boolean"):
        m(x, t, LABELS, mask=torch.zeros(1, 1, 48, 48))
    ropeslr_state(m).mode = "dense"  # the documented way to run such a mask
    with torch.no_grad():
        m(x, t, LABELS, mask=token_causal)
    with pytest.raises(ValueError, match="already applied"):
        apply_ropeslr_(m, SPARSE)


@pytest.mark.parametrize("order", ["ropeslr-first", "quantize-first"])
def test_composed_with_w8a8_cache_matches_and_removal_gives_the_quantized_dense_model(order):
    m = _model()
    if order == "quantize-first":
        _quantize(m, RTNConfig(w_bits=8, a_bits=8))
        quantized_dense = cw.rollout(m, LABELS, _noise())
        replaced = apply_ropeslr_(m, SPARSE)
    else:
        replaced = apply_ropeslr_(m, SPARSE)
        _quantize(m, RTNConfig(w_bits=8, a_bits=8))  # calibrated through RoPeSLR
        params = [p for n, p in m.named_parameters() if ".processor.params." in n]
        assert params and not any(".processor." in n for n in quant_layer_names(m))
        ropeslr_state(m).mode = "dense"
        quantized_dense = cw.rollout(m, LABELS, _noise())
        ropeslr_state(m).mode = "sparse"
    for blk in m.blocks:  # Q-ARVD quantized the projections RoPeSLR shares
        assert all(isinstance(getattr(blk.self_attn, n), QuantLinear) for n in "qkvo")
    cached, full = _both(m)
    _assert_cache_matches_quantized(cached, full, quantized_dense)
    remove_ropeslr_(m, replaced)
    assert all(type(b.self_attn) is cw.SelfAttention for b in m.blocks)
    assert all(isinstance(b.self_attn.q, QuantLinear) for b in m.blocks)
    assert torch.equal(cw.rollout(m, LABELS, _noise()), quantized_dense)


def test_composed_with_qarvd_w4a8_ropeslr_first():
    """Q-ARVD proper (AdaRound, S1 chunk weights, S2 dual scales; 2 iterations) calibrated
    through RoPeSLR; removing RoPeSLR leaves exactly the model's dense path."""
    m = _model()
    replaced = apply_ropeslr_(m, SPARSE)
    _quantize(m, QARVDConfig(w_bits=4, a_bits=8, iters=2, batch_rows=64))
    assert m.quantize_info["config_type"] == "QARVDConfig"
    state = ropeslr_state(m)
    state.mode = "dense"
    quantized_dense = cw.rollout(m, LABELS, _noise())
    state.mode = "sparse"
    cached, full = _both(m)
    _assert_cache_matches_quantized(cached, full, quantized_dense)
    remove_ropeslr_(m, replaced)
    assert torch.equal(cw.rollout(m, LABELS, _noise()), quantized_dense)


def quant_layer_names(model):
    return [n for n, mod in model.named_modules() if isinstance(mod, QuantLinear)]
