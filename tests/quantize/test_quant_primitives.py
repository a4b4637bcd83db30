"""Quantization primitives: error bounds, packing, percentile search, bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from diffkit.quantize import (
    PerChannel,
    PerTensor,
    choose_qparams,
    dequantize,
    fake_quantize,
    pack_int4,
    percentile_search,
    quantize,
    unpack_int4,
)
from diffkit.quantize.primitives import qrange


@settings(max_examples=25, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 6, 8]),
    symmetric=st.booleans(),
    per_channel=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_quantize_dequantize_error_at_most_half_a_step(bits, symmetric, per_channel, seed):
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(seed)) * 3
    gran = PerChannel(0) if per_channel else PerTensor()
    qp = choose_qparams(x, bits, symmetric=symmetric, granularity=gran)
    err = (fake_quantize(x, qp) - x).abs()
    assert bool((err <= qp.scale / 2 + 1e-6).all())
    q = quantize(x, qp)
    assert q.min() >= qp.qmin and q.max() <= qp.qmax
    assert torch.equal(q, torch.round(q))


def test_qrange_levels():
    assert qrange(8, True) == (-127, 127)
    assert qrange(4, False) == (0, 15)


def test_sixteen_bit_fake_quant_is_nearly_identity():
    x = torch.randn(64, 64)
    qp = choose_qparams(x, 16, granularity=PerChannel(0))
    assert torch.allclose(fake_quantize(x, qp), x, atol=1e-3)


@pytest.mark.parametrize("n", [1, 7, 64, 65])
def test_pack_unpack_int4_round_trip(n):
    q = torch.randint(0, 16, (5, n), generator=torch.Generator().manual_seed(n))
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == (n + 1) // 2
    assert torch.equal(unpack_int4(packed, n).long(), q)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError, match="0, 15"):
        pack_int4(torch.tensor([[16, 0]]))


def test_percentile_search_beats_minmax_with_an_outlier():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g)
    x[0] = 60.0
    mm = choose_qparams(x, 4)
    ps = percentile_search(x, 4)
    mse = lambda qp: float((fake_quantize(x, qp) - x).pow(2).mean())  # noqa: E731
    assert mse(ps) < mse(mm)


def test_percentile_search_weighted_rows_follow_the_weights():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(200, 8, generator=g) * 0.1
    b = torch.randn(200, 8, generator=g) * 10
    x = torch.cat([a, b])
    w_small = torch.cat([torch.full((200,), 1e3), torch.full((200,), 1e-3)])
    qa = percentile_search(x, 4, sample_weight=w_small, percentiles=(0.5001, 0.9))
    qb = percentile_search(x, 4, sample_weight=w_small.flip(0), percentiles=(0.5001, 0.9))
    assert float(qa.scale) < float(qb.scale)


def test_dequantize_matches_formula():
    x = torch.linspace(-1, 2, 50)
    qp = choose_qparams(x, 8)
    assert torch.allclose(
        dequantize(quantize(x, qp), qp), (quantize(x, qp) - qp.zero_point) * qp.scale
    )


@pytest.mark.parametrize("bits", [1, 9, 32])
def test_unsupported_bits_raise(bits):
    with pytest.raises(ValueError, match="not supported"):
        choose_qparams(torch.randn(4), bits)
