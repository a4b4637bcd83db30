from __future__ import annotations

import pytest
import torch

from diffkit.core.masking import check_mask_id, gamma, mask_tokens, random_mask, training_ratio


def test_gamma_endpoints():
    for kind in ("cosine", "linear", "square", "sqrt"):
        assert float(gamma(0.0, kind)) == pytest.approx(1.0)
        assert float(gamma(1.0, kind)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="kind"):
        gamma(0.5, "exp")


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.95, 1.0])
def test_mask_tokens_exact_count(ratio):
    tok = torch.randint(0, 10, (7, 33))
    masked, mask = mask_tokens(tok, ratio, mask_id=10, generator=torch.Generator().manual_seed(0))
    assert (mask.sum(1) == round(ratio * 33)).all()
    assert torch.equal(masked[~mask], tok[~mask]) and (masked[mask] == 10).all()


def test_per_row_ratios_and_determinism():
    n = torch.tensor([0, 3, 8])
    a = random_mask((3, 8), n, torch.Generator().manual_seed(1))
    b = random_mask((3, 8), n, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.sum(1).tolist() == [0, 3, 8]


def test_mask_id_checks():
    check_mask_id(64, 64)
    with pytest.raises(ValueError, match="collides"):
        check_mask_id(3, 64)


def test_training_ratio_positive():
    r = training_ratio(1000, generator=torch.Generator().manual_seed(0))
    assert (r > 0).all() and (r <= 1).all()
