"""Drift loss invariants (Drifting Models arXiv 2602.04770; FPD arXiv 2605.21484)."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit.distill import DriftConfig, DriftLoss, drift_field, drift_targets, group_layout


def _naive_field(x, pos, neg, tau, self_neg=False):
    """Loop reference of Drifting Alg. 2 for one group."""
    N, P = len(x), len(pos)
    targets = torch.cat([pos, neg])
    d = torch.cdist(x, targets)
    if self_neg:
        for i in range(N):
            d[i, P + i] = 1e4
    logits = -d / tau
    a = torch.sqrt(torch.softmax(logits, 1) * torch.softmax(logits, 0))
    if self_neg:
        for i in range(N):
            a[i, P + i] = 0
    v = torch.zeros_like(x)
    for i in range(N):
        ap, an = a[i, :P], a[i, P:]
        wp, wn = ap * an.sum(), an * ap.sum()
        v[i] = (
            (wp[:, None] * pos).sum(0) - (wn[:, None] * neg).sum(0) - (wp.sum() - wn.sum()) * x[i]
        )
    return v


def test_matches_loop_reference(generator):
    x, pos, neg = (torch.randn(n, 5, generator=generator) for n in (6, 7, 8))
    v, _ = drift_field(x, pos, neg, 0.7)
    torch.testing.assert_close(v, _naive_field(x, pos, neg, 0.7), rtol=1e-4, atol=1e-6)


def test_antisymmetry(generator):
    x = torch.randn(3, 12, 4, generator=generator)
    pos, neg = torch.randn(3, 10, 4, generator=generator), torch.randn(3, 9, 4, generator=generator)
    v1, _ = drift_field(x, pos, neg, 0.5)
    v2, _ = drift_field(x, neg, pos, 0.5)
    torch.testing.assert_close(v1, -v2, rtol=1e-5, atol=1e-6)


def test_antisymmetry_after_normalisation(generator):
    x = torch.randn(16, 3, generator=generator)
    pos, neg = torch.randn(16, 3, generator=generator) + 1, torch.randn(16, 3, generator=generator)
    # swapping roles also swaps which set holds the excluded self-pairs, so use external negatives
    _, t1, _ = drift_targets(x, pos, neg=neg, neg_weight=1.0, normalize_drift=False)
    s, t2, _ = drift_targets(x, neg, neg=pos, neg_weight=1.0, normalize_drift=False)
    # with x itself among the negatives the fields are not exact mirrors; the sign of the mean
    # displacement along the pos-neg axis must flip
    axis = pos.mean(0) - neg.mean(0)
    assert ((t1 - x / s) @ axis).mean() > 0 > ((t2 - x / s) @ axis).mean()


def test_zero_when_same_distribution():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 400, 2, generator=g)
    same = torch.randn(1, 2000, 2, generator=g)
    other = torch.randn(1, 2000, 2, generator=g) + torch.tensor([1.5, 0.0])
    v_same, _ = drift_field(x, same[:, :1000], same[:, 1000:], 1.0)
    v_diff, _ = drift_field(x, other[:, :1000], same[:, 1000:], 1.0)
    rms = lambda v: v.pow(2).mean().sqrt()  # noqa: E731
    assert rms(v_same) < 0.1 * rms(v_diff)
    # the systematic component (mean drift) vanishes
    assert v_same.mean((0, 1)).norm() < 0.1 * v_diff.mean((0, 1)).norm()


def test_self_pair_excluded(generator):
    x = torch.randn(1, 5, 3, generator=generator)
    pos = torch.randn(1, 4, 3, generator=generator)
    eye = torch.eye(5, dtype=torch.bool)[None]
    v, _ = drift_field(x, pos, x, 0.3, exclude=eye)
    torch.testing.assert_close(v[0], _naive_field(x[0], pos[0], x[0], 0.3, self_neg=True))
    # without exclusion each sample's own copy dominates at small tau -> a different field
    v_incl, _ = drift_field(x, pos, x, 0.3)
    assert not torch.allclose(v, v_incl, atol=1e-4)


def test_multi_bandwidth_sum_of_unit_rms_terms(generator):
    x = torch.randn(2, 10, 6, generator=generator)
    pos = torch.randn(2, 10, 6, generator=generator) + 0.5
    taus = (0.02, 0.05, 0.2)
    scale, target, diag = drift_targets(x, pos, taus=taus)
    xn, pn = x / scale, pos / scale
    eye = torch.eye(10, dtype=torch.bool).expand(2, 10, 10)
    expect = torch.zeros_like(xn)
    for tau in taus:
        v, _ = drift_field(xn, pn, xn, tau * math.sqrt(6), exclude=eye)
        rms = v.pow(2).mean().sqrt()
        assert float(diag[f"drift_norm_tau{tau:g}"]) == pytest.approx(float(rms), rel=1e-5)
        expect += v / rms
    torch.testing.assert_close(target - xn, expect, rtol=1e-4, atol=1e-5)
    for tau in taus:  # each term has unit RMS
        v, _ = drift_field(xn, pn, xn, tau * math.sqrt(6), exclude=eye)
        assert float((v / v.pow(2).mean().sqrt()).pow(2).mean()) == pytest.approx(1.0, rel=1e-5)


def test_feature_normalisation_scale_invariant(generator):
    x = torch.randn(12, 8, generator=generator)
    pos = torch.randn(12, 8, generator=generator)
    s1, t1, _ = drift_targets(x, pos)
    s2, t2, _ = drift_targets(100 * x, 100 * pos)
    torch.testing.assert_close(t1, t2, rtol=1e-4, atol=1e-4)
    assert float(s2 / s1) == pytest.approx(100, rel=1e-4)


def test_group_layout_and_grouping(generator):
    groups = torch.tensor([2, 0, 2, 1, 0, 2])
    index, valid = group_layout(groups)
    assert index.shape == (3, 3)
    assert valid.sum(1).tolist() == [2, 1, 3]
    for gi, g in enumerate([0, 1, 2]):
        assert (groups[index[gi][valid[gi]]] == g).all()
    # grouped loss (a mean over samples) = the mean of the separately computed groups, with the
    # same gradients: no group sees another's samples. The normalisations (one feature scale and
    # one drift RMS over the batch) are switched off, since they are shared by design.
    loss = DriftLoss(DriftConfig(normalize_features=False, normalize_drift=False))
    grp = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0])  # interleaved, to test the layout too
    x = torch.randn(8, 4, generator=generator, requires_grad=True)
    pos = torch.randn(8, 4, generator=generator)
    both, _ = loss({"f": x}, {"f": pos}, grp)
    (grad_both,) = torch.autograd.grad(both, x)
    parts, grad_parts = [], torch.zeros_like(x)
    for g in (0, 1):
        sel = grp == g
        xg = x.detach()[sel].requires_grad_(True)
        lg, _ = loss({"f": xg}, {"f": pos[sel]}, grp[sel])
        parts.append(lg)
        (grad_parts[sel],) = torch.autograd.grad(lg / 2, xg)
    torch.testing.assert_close(both, (parts[0] + parts[1]) / 2, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_both, grad_parts, rtol=1e-5, atol=1e-7)
    assert grad_both.abs().sum() > 0
    # ... and differs from one ungrouped drift problem over the same samples
    one, _ = loss({"f": x}, {"f": pos}, torch.zeros(8, dtype=torch.long))
    assert abs(one.item() - both.item()) > 1e-3 * both.item()


def test_single_sample_group_is_an_error(generator):
    loss = DriftLoss()
    x, pos = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator)
    with pytest.raises(ValueError, match="fewer than 2 generated samples"):
        loss({"f": x}, {"f": pos}, torch.tensor([0, 1, 2]))


def test_missing_positives_is_an_error(generator):
    x, pos = torch.randn(4, 2, generator=generator), torch.randn(4, 2, generator=generator)
    with pytest.raises(ValueError, match="no positives"):
        DriftLoss()({"f": x}, {"f": pos}, torch.tensor([0, 0, 1, 1]),
                    pos_groups=torch.tensor([0, 0, 0, 0]))  # fmt: skip


def test_bad_config():
    with pytest.raises(ValueError, match="bandwidths"):
        DriftConfig(bandwidths=(0.0,))
    with pytest.raises(ValueError, match="uncond_weight"):
        DriftConfig(uncond_weight=-1)


@pytest.mark.parametrize(
    ("start", "taus"),
    [((0.0, 1.0), (0.02, 0.05, 0.2)), ((1.5, 0.3), (0.2, 1.0))],
    ids=["between-modes-default-taus", "on-one-mode-wide-taus"],
)
def test_toy_2d_recovers_both_modes(start, taus):
    """Drifting Fig. 3: particles collapsed at one point spread over both modes of a mixture."""
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    x = (torch.randn(64, 2, generator=g) * 0.05 + torch.tensor(start)).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    loss_fn = DriftLoss(DriftConfig(bandwidths=taus))
    zeros = torch.zeros(128, dtype=torch.long)
    for _ in range(200):
        pos = centers[torch.randint(2, (128,), generator=g)] + 0.3 * torch.randn(
            128, 2, generator=g
        )
        loss, _ = loss_fn({"p": x}, {"p": pos}, zeros[:64], pos_groups=zeros)
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = torch.cdist(x.detach(), centers)
    frac_left = float((d.argmin(1) == 0).float().mean())
    assert 0.3 < frac_left < 0.7, frac_left
    assert float(d.min(1).values.mean()) < 0.8


def test_deterministic(generator):
    x, pos = torch.randn(2, 6, 3, generator=generator), torch.randn(2, 6, 3, generator=generator)
    a = drift_targets(x, pos)[1]
    b = drift_targets(x.clone(), pos.clone())[1]
    assert torch.equal(a, b)


def test_coupled_positive_biases_the_field_unless_excluded():
    """FPD positives are refinements of the drafts themselves: y_i = x_i + small change. With
    y_i kept among x_i's positives the estimate has a net outward (spreading) push although both
    sets come from one distribution; leaving the coupled pair out, like the self-pair among the
    negatives, removes that bias."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 600, 2, generator=g)
    pos = x + 0.05 * torch.randn(1, 600, 2, generator=g)  # a coupled, same-law positive per x_i
    eye = torch.eye(600, dtype=torch.bool)[None]
    v_kept, _ = drift_field(x, pos, x, 0.3, exclude=eye)
    v_excl, _ = drift_field(x, pos, x, 0.3, exclude=eye, exclude_pos=eye)
    outward = lambda v: (v * x).sum(-1).mean()  # noqa: E731  (x is centred at 0)
    rms = lambda v: v.pow(2).mean().sqrt()  # noqa: E731
    assert outward(v_kept) > 0
    assert abs(outward(v_excl)) < 0.2 * outward(v_kept)
    assert rms(v_excl) < 0.6 * rms(v_kept)


def test_driftloss_pos_source_excludes_own_refinement(generator):
    x = torch.randn(8, 3, generator=generator)
    pos = x + 0.01 * torch.randn(8, 3, generator=generator)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cfg = DriftConfig(normalize_drift=False)
    loss_kept, _ = DriftLoss(cfg)({"f": x}, {"f": pos}, groups)
    loss_excl, _ = DriftLoss(cfg)({"f": x}, {"f": pos}, groups, pos_source=torch.arange(8))
    # reference: drop the pair by hand in each group
    xn = x.view(2, 4, 3)
    pn = pos.view(2, 4, 3)
    eye = torch.eye(4, dtype=torch.bool).expand(2, 4, 4)
    scale, target, _ = drift_targets(xn, pn, exclude_pos=eye, normalize_drift=False)
    ref = (xn / scale - target).pow(2).mean()
    assert float(loss_excl) == pytest.approx(float(ref), rel=1e-5)
    assert float(loss_excl) != pytest.approx(float(loss_kept), rel=1e-3)


def test_unconditional_negatives_exclude_own_source(generator):
    """CFG-style extra negatives: the one derived from x_i itself is left out for x_i."""
    x = torch.randn(6, 3, generator=generator)
    unc = x + 0.01 * torch.randn(6, 3, generator=generator)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    cfg = DriftConfig(uncond_weight=0.4, normalize_drift=False)
    kept, _ = DriftLoss(cfg)({"f": x}, {"f": x + 1}, groups, uncond={"f": unc})
    excl, _ = DriftLoss(cfg)({"f": x}, {"f": x + 1}, groups, uncond={"f": unc},
                             uncond_source=torch.arange(6))  # fmt: skip
    xg, pg = x.view(2, 3, 3), (x + 1).view(2, 3, 3)
    ug = unc[None].expand(2, -1, -1)
    ex = torch.zeros(2, 3, 6, dtype=torch.bool)
    for g in range(2):
        for n in range(3):
            ex[g, n, 3 * g + n] = True
    scale, target, _ = drift_targets(xg, pg, neg=ug, neg_weight=0.4, exclude_neg=ex,
                                     normalize_drift=False)  # fmt: skip
    assert float(excl) == pytest.approx(float((xg / scale - target).pow(2).mean()), rel=1e-5)
    assert float(excl) != pytest.approx(float(kept), rel=1e-3)
