"""S2 detection: MAD z-score on weight-column norms, rounding to 32, cap at K/2."""

from __future__ import annotations

import pytest
import torch

from diffkit.quantize import outlier_columns, s2_report


def _weight(K=256, N=64, planted=(), gain=8.0, seed=0):
    w = torch.randn(N, K, generator=torch.Generator().manual_seed(seed)) * 0.02
    for j in planted:
        w[:, j] *= gain
    return w


def test_planted_outliers_found_exactly_when_count_is_a_multiple_of_32():
    planted = list(range(3, 3 + 7 * 32, 7))[:32]
    cols = outlier_columns(_weight(planted=planted))
    assert sorted(cols.tolist()) == sorted(planted)


def test_count_is_rounded_up_to_32_and_contains_the_planted_columns():
    planted = [5, 77, 200]
    w = _weight(planted=planted)
    cols = outlier_columns(w)
    assert len(cols) == 32
    assert set(planted) <= set(cols.tolist())
    # the rest are the next-largest norms
    norms = w.norm(dim=0)
    assert set(cols.tolist()) == set(torch.argsort(norms, descending=True)[:32].tolist())
    assert len(outlier_columns(w, multiple=1)) == 3


def test_cap_at_half_the_columns():
    w = _weight(K=64, planted=[1, 2, 3])
    assert len(outlier_columns(w)) == 32  # round to 32, cap 64 / 2
    w2 = _weight(K=48, planted=[1, 2, 3])
    assert len(outlier_columns(w2)) == 24


def test_no_outliers_in_a_flat_weight_and_zero_mad():
    assert len(outlier_columns(torch.ones(8, 64))) == 0
    w = _weight()
    w = w / w.norm(dim=0, keepdim=True)  # all columns equal norm
    assert len(outlier_columns(w)) == 0


def test_iqr_rule_and_bad_rule():
    w = _weight(planted=[10, 20])
    assert {10, 20} <= set(outlier_columns(w, rule="iqr").tolist())
    with pytest.raises(ValueError, match="mad_zscore"):
        outlier_columns(w, rule="bogus")


def test_s2_report_groups_by_type_and_depth():
    counts = {"blocks.0.self_attn.q": 32, "blocks.1.self_attn.q": 0, "blocks.1.ffn.2": 64}
    sizes = dict.fromkeys(counts, 256)
    rep = s2_report(counts, sizes)
    assert rep["by_type"]["self_attn.q"] == {"layers": 2, "fired": 1, "mean_outlier_cols": 16.0}
    assert rep["by_depth"]["1"]["fired"] == 1
