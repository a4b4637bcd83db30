"""Quantized KV cache (diffkit.quantize.kv_cache): quantizer bounds, bytes, rollout equivalence."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _quant_tiny import TINY, quantized, tiny_inputs, tiny_model

from diffkit.core.rope import apply_rope
from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    KVCacheConfig,
    QuantizedKVCache,
    RTNConfig,
    dequantize_kv,
    fake_quantize_kv,
    kv_cache_config,
    quantize_kv,
    quantize_kv_cache_,
    remove_kv_cache_quantization_,
)

EPS = torch.finfo(torch.float32).eps
CONFIGS = [
    KVCacheConfig(bits=8),
    KVCacheConfig(bits=4, granularity="channel", value_granularity="token", symmetric=False),
]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"bits": 2},
        {"bits": 16},
        {"bits": True},
        {"bits": "8"},
        {"granularity": "head"},
        {"value_granularity": "tensor"},
        {"symmetric": "yes"},
    ],
)
def test_bad_options_are_rejected_naming_field_and_value(kwargs):
    field, value = next(iter(kwargs.items()))
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        KVCacheConfig(**kwargs)


def test_entry_point_rejects_models_without_a_pluggable_cache_and_wrong_configs():
    with pytest.raises(ValueError, match="Linear has no pluggable KV cache"):
        quantize_kv_cache_(torch.nn.Linear(2, 2), KVCacheConfig())
    with pytest.raises(ValueError, match="must be a KVCacheConfig"):
        quantize_kv_cache_(tiny_model(), RTNConfig(w_bits=8, a_bits=8))


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["token", "channel"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_is_at_most_half_a_step_per_element(bits, granularity, symmetric):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 24, 16, generator=g)
    x[0, 1, 5, 3] = 40.0  # an outlier widens its group's step only
    q = quantize_kv(x, bits, granularity, symmetric)
    assert q.codes.dtype == torch.uint8
    assert q.codes.shape[-1] == (16 if bits == 8 else 8)  # int4: two codes per byte
    err = (dequantize_kv(q) - x).abs()
    # Exact arithmetic gives |x_hat - x| <= step / 2; fp32 adds a few ulps of |x| and of the offset.
    off = 0 if q.offset is None else q.offset.abs()
    assert bool((err <= q.scale / 2 * (1 + 8 * EPS) + 8 * EPS * (x.abs() + off)).all())
    # ... and the bound is not vacuous: the largest error is a sizeable part of a half step.
    assert float((err / (q.scale / 2)).max()) > 0.5


def test_int4_with_odd_head_dim_pads_one_nibble_and_round_trips_within_half_a_step():
    x = torch.randn(1, 2, 6, 15, generator=torch.Generator().manual_seed(2))
    q = quantize_kv(x, 4, "token", symmetric=False)
    assert q.codes.shape == (1, 2, 6, 8)
    assert bool(((dequantize_kv(q) - x).abs() <= q.scale / 2 * (1 + 1e-4)).all())


@pytest.mark.parametrize("bits", [8, 4])
def test_symmetric_per_token_is_lossless_on_grid_values(bits):
    qmax = 2 ** (bits - 1) - 1
    g = torch.Generator().manual_seed(1)
    levels = torch.randint(-qmax, qmax + 1, (1, 2, 10, 16), generator=g).float()
    levels[..., 0] = qmax  # each token's max |x| is qmax steps, so its step is exactly 2^-3
    x = levels * 0.125
    assert torch.equal(fake_quantize_kv(x, bits, "token"), x)


def test_cache_bytes_are_codes_plus_scales_with_int4_packed_two_per_byte():
    B, h, S, d = 1, 2, 48, 16
    k, v = torch.randn(B, h, S, d), torch.randn(B, h, S, d)
    fp = cw.KVCache.empty(1)
    fp.append(0, k, v)
    assert fp.nbytes() == 2 * B * h * S * d * 4
    expect = {
        KVCacheConfig(bits=8): 2 * (B * h * S * d + B * h * S * 4),
        KVCacheConfig(bits=4): 2 * (B * h * S * d // 2 + B * h * S * 4),
        KVCacheConfig(bits=4, granularity="channel"): 2 * (B * h * S * d // 2 + B * h * d * 4),
        KVCacheConfig(bits=4, granularity="channel", value_granularity="token", symmetric=False): (
            B * h * S * d // 2 + 2 * B * h * d * 4 + B * h * S * d // 2 + 2 * B * h * S * 4
        ),
    }
    for cfg, n in expect.items():
        cache = QuantizedKVCache(1, cfg)
        cache.append(0, k, v)
        assert cache.nbytes() == n, cfg
    # per-channel int4: 8 code bytes + 16 * 4 / 48 scale bytes per 64 fp32 bytes -> 6.9x smaller
    assert fp.nbytes() / expect[KVCacheConfig(bits=4, granularity="channel")] > 6.5


@pytest.mark.parametrize("lengths", [(48, 48, 48), (48, 16, 32)], ids=["equal", "unequal"])
@pytest.mark.parametrize("cfg", CONFIGS + [KVCacheConfig(bits=4, granularity="channel")])
def test_cache_returns_each_appended_chunk_fake_quantized_on_its_own(cfg, lengths):
    g = torch.Generator().manual_seed(5)
    cache = QuantizedKVCache(2, cfg)
    ks, vs = [], []
    for n in lengths:
        k, v = torch.randn(2, 3, n, 16, generator=g), torch.randn(2, 3, n, 16, generator=g)
        cache.append(1, k, v)
        ks.append(fake_quantize_kv(k, cfg.bits, cfg.granularity, cfg.symmetric))
        vs.append(fake_quantize_kv(v, cfg.bits, cfg.value_groups, cfg.symmetric))
    k_hat, v_hat = cache.get(1)
    assert torch.equal(k_hat, torch.cat(ks, 2)) and torch.equal(v_hat, torch.cat(vs, 2))
    assert cache.get(0) == (None, None)


def _reference_attention(chunk_tokens: int, cfg: KVCacheConfig):
    """SelfAttention.forward for a no-cache recomputation that sees earlier chunks' K/V quantized.

    Keys/values are kept twice, FP and fake-quantized per chunk segment (what the cache writes at
    each chunk's refresh pass); a query sees the FP copy of its own chunk and the quantized copy of
    every earlier chunk: exactly what chunk-by-chunk inference with a quantized cache computes.
    """

    def forward(self, x, rope, mask, past=None):
        assert past is None
        B, S, D = x.shape

        def split(z):
            return z.view(B, S, self.heads, D // self.heads).transpose(1, 2)

        q = apply_rope(split(self.norm_q(self.q(x))), *rope)
        k = apply_rope(split(self.norm_k(self.k(x))), *rope)
        v = split(self.v(x))

        def fq(t, gran):
            segs = t.split(chunk_tokens, dim=2)
            return torch.cat([fake_quantize_kv(s, cfg.bits, gran, cfg.symmetric) for s in segs], 2)

        kk = torch.cat([k, fq(k, cfg.granularity)], 2)
        vv = torch.cat([v, fq(v, cfg.value_groups)], 2)
        cid = torch.arange(S) // chunk_tokens
        allowed = torch.cat([cid[None, :] == cid[:, None], cid[None, :] < cid[:, None]], 1)
        out = F.scaled_dot_product_attention(q, kk, vv, attn_mask=allowed[None, None])
        return self.o(out.transpose(1, 2).reshape(B, S, D)), (k, v)

    return forward


def _check_against_recomputation(model, cfg, monkeypatch):
    labels, noise = tiny_inputs(2, seed=3)
    fp = cw.rollout(model, labels, noise)
    quantize_kv_cache_(model, cfg)
    assert isinstance(model.new_cache(), QuantizedKVCache) and kv_cache_config(model) is cfg
    cached = cw.rollout(model, labels, noise)
    chunk_tokens = model.tokens_per_frame * model.config["chunk_frames"]
    with monkeypatch.context() as mp:
        mp.setattr(cw.SelfAttention, "forward", _reference_attention(chunk_tokens, cfg))
        full = cw.rollout(model, labels, noise, use_cache=False)
    # The paths differ only by fp32 reassociation (~5e-7 measured; the FP cache test allows 1e-5);
    # should that noise flip one code, one key/value element moves by one step, a tiny part of the
    # quantization effect, which is >= 3e-4 here (int8) and asserted to stand above the tolerance.
    torch.testing.assert_close(cached, full, atol=2e-5, rtol=0)
    assert float((cached - fp).abs().max()) > 1e-4
    return fp, cached


@pytest.mark.parametrize("cfg", CONFIGS, ids=["int8-token", "int4-kchannel-vtoken-asym"])
def test_quantized_cache_rollout_equals_recomputation_with_the_same_quantized_kv(cfg, monkeypatch):
    _check_against_recomputation(tiny_model(), cfg, monkeypatch)


def test_composes_with_weight_quantization_and_is_removable(monkeypatch):
    cfg = KVCacheConfig(bits=4, granularity="channel", value_granularity="token")
    model = quantized(RTNConfig(w_bits=8, a_bits=8))  # int8 weights and activations
    w8_only, both = _check_against_recomputation(model, cfg, monkeypatch)
    x = torch.randn(1, 3, 16, 8, 8)
    cache = model.new_cache()
    model(x, torch.zeros(1, 3), torch.tensor([[1, -1]]), cache=cache, write_cache=True)
    full = cw.KVCache.empty(len(model.blocks))
    model(x, torch.zeros(1, 3), torch.tensor([[1, -1]]), cache=full, write_cache=True)
    L, h, S, d = len(model.blocks), model.config["heads"], 3 * model.tokens_per_frame, 16
    assert full.nbytes() == L * 2 * h * S * d * 4
    # int4 codes for both; fp32 scales per (head, channel) for keys, per (head, token) for values
    assert cache.nbytes() == L * (2 * h * S * d // 2 + h * d * 4 + h * S * 4)
    remove_kv_cache_quantization_(model)
    assert kv_cache_config(model) is None
    labels, noise = tiny_inputs(2, seed=3)
    assert torch.equal(cw.rollout(model, labels, noise), w8_only)


def test_rollout_error_grows_as_bits_fall():
    model = tiny_model()
    labels, noise = tiny_inputs(2, seed=4)
    fp = cw.rollout(model, labels, noise)
    err = {}
    for bits in (8, 4):
        quantize_kv_cache_(model, KVCacheConfig(bits=bits))
        err[bits] = float((cw.rollout(model, labels, noise) - fp).pow(2).mean())
    remove_kv_cache_quantization_(model)
    assert 0 < err[8] < err[4]
    assert TINY["num_frames"] // TINY["chunk_frames"] == 2  # the second chunk reads the cache
