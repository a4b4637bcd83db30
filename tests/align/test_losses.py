"""Closed forms of the DPO losses (spec section f, tests 3-6)."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit.align import linear_dpo_loss, linear_dpo_weight, margin, sigmoid_dpo_loss
from diffkit.align.losses import LOSSES


def _errs(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g, dtype=torch.float64) for _ in range(4)]


def test_policy_equals_reference_closed_forms():
    ew, el, _, _ = _errs()
    m = margin(ew, el, ew.clone(), el.clone())
    assert torch.equal(m, torch.zeros_like(m))
    loss, _ = sigmoid_dpo_loss(ew, el, ew.clone(), el.clone(), beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2))
    _, w = linear_dpo_loss(ew, el, ew.clone(), el.clone(), beta=500.0, eta=1e-3)
    assert torch.allclose(w, torch.full_like(w, 0.5))


@pytest.mark.parametrize("beta", [10.0, 500.0])
def test_sigmoid_gradient_matches_closed_form(beta):
    ew, el, rw, rl = _errs(1)
    ew.requires_grad_(True)
    el.requires_grad_(True)
    rw.requires_grad_(True)
    loss, _ = sigmoid_dpo_loss(ew, el, rw, rl, beta=beta)
    loss.backward()
    m = (ew - el - (rw - rl)).detach()
    expected = 0.5 * beta * torch.sigmoid(0.5 * beta * m) / len(m)
    torch.testing.assert_close(ew.grad, expected)
    torch.testing.assert_close(el.grad, -expected)
    assert rw.grad is None  # no gradient reaches the reference


@pytest.mark.parametrize("eta", [0.0, 1e-3, 0.05])
def test_linear_gradient_is_the_weight_and_weight_has_no_graph(eta):
    ew, el, rw, rl = _errs(2)
    ew.requires_grad_(True)
    el.requires_grad_(True)
    rw.requires_grad_(True)
    beta = 20.0
    loss, w = linear_dpo_loss(ew, el, rw, rl, beta=beta, eta=eta)
    assert not w.requires_grad and w.grad_fn is None
    loss.backward()
    m = (ew - el - (rw - rl)).detach()
    expected = (0.5 + 0.2 * beta * m).clamp(eta, 1 - eta) / len(m)
    torch.testing.assert_close(ew.grad, expected)
    torch.testing.assert_close(el.grad, -expected)
    assert rw.grad is None


@pytest.mark.parametrize("eta", [0.0, 1e-3, 0.2])
def test_clip_bounds(eta):
    m = torch.linspace(-10, 10, 1001, dtype=torch.float64)
    w = linear_dpo_weight(m, beta=5.0, eta=eta)
    assert w.min().item() == pytest.approx(eta)
    assert w.max().item() == pytest.approx(1 - eta)
    # linear zone: |m| <= (0.5 - eta) / (0.2 beta)
    inside = m.abs() < (0.5 - eta) / (0.2 * 5.0) - 1e-9
    torch.testing.assert_close(w[inside], 0.5 + 0.2 * 5.0 * m[inside])


@pytest.mark.parametrize("fn", [linear_dpo_loss, sigmoid_dpo_loss])
def test_identical_winner_and_loser_give_zero_gradient(fn):
    e = torch.rand(5, dtype=torch.float64)
    ew = e.clone().requires_grad_(True)
    el = e.clone().requires_grad_(True)
    # the error of one shared image, computed through a shared parameter
    p = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    loss, _ = fn(ew * p, el * p, e, e, beta=100.0)
    loss.backward()
    assert p.grad.abs().item() < 1e-12


@pytest.mark.parametrize("bad", [dict(beta=0.0), dict(beta=-1.0), dict(eta=0.5), dict(eta=-0.1)])
def test_bad_hyperparameters(bad):
    kw = dict(beta=1.0, eta=0.0) | bad
    with pytest.raises(ValueError, match="beta|eta"):
        linear_dpo_loss(*_errs(), **kw)


def test_shape_mismatch_error():
    ew, el, rw, rl = _errs()
    with pytest.raises(ValueError, match="same shape"):
        linear_dpo_loss(ew, el[:3], rw, rl, beta=1.0)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_pair_weights_scale_each_pair(name):
    """loss(pair_weight) = mean_i(pair_weight_i * loss_i): a weight-0 pair gets no gradient, and
    the gradient of every other pair is its unweighted gradient times its weight."""
    ew, el, rw, rl = _errs(3)
    pw = torch.tensor([0.0, 1.0, 2.0, 0.5, 1.0, 0.0], dtype=torch.float64)

    def grad(weight):
        x = ew.clone().requires_grad_(True)
        loss, _ = LOSSES[name](x, el, rw, rl, beta=50.0, eta=1e-3, pair_weight=weight)
        loss.backward()
        return loss, x.grad

    plain_loss, plain = grad(None)
    ones_loss, ones = grad(torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(ones_loss, plain_loss)
    _, weighted = grad(pw)
    torch.testing.assert_close(weighted, plain * pw)
    assert weighted[0] == 0 and weighted[-1] == 0
    with pytest.raises(ValueError, match="pair_weight"):
        LOSSES[name](ew, el, rw, rl, beta=50.0, pair_weight=torch.ones(3))
