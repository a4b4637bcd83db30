"""The toy projection reward and its Bradley-Terry pairs (used by the benchmark and the tour)."""

from __future__ import annotations

import torch

from diffkit.align.toy import (
    make_preference_pairs,
    principal_patterns,
    projection_patterns,
    projection_reward,
)
from diffkit.data import load_digits


def test_patterns_are_unit_zero_mean_and_seeded():
    p = projection_patterns(10, 16, seed=0)
    assert p.shape == (10, 1, 16, 16)
    torch.testing.assert_close(p.flatten(1).norm(dim=1), torch.ones(10))
    assert p.flatten(1).mean(1).abs().max() < 1e-6
    assert torch.equal(p, projection_patterns(10, 16, seed=0))


def test_pairs_are_same_class_and_mostly_oriented_by_reward():
    d = load_digits("train")
    P = projection_patterns()
    pairs = make_preference_pairs(d.images, d.labels, P, 2000, kappa=5.0, seed=0)
    assert torch.equal(projection_reward(pairs["x_w"], pairs["labels"], P), pairs["reward_w"])
    agree = (pairs["reward_w"] > pairs["reward_l"]).float().mean()
    assert agree > 0.8
    null = make_preference_pairs(d.images, d.labels, P, 2000, random_labels=True, seed=0)
    assert 0.4 < (null["reward_w"] > null["reward_l"]).float().mean() < 0.6


def test_principal_patterns_carry_the_most_within_class_reward_variance():
    d = load_digits("train")
    pc = principal_patterns(d.images, d.labels)
    assert pc.shape == (10, *d.images.shape[1:])
    torch.testing.assert_close(pc.flatten(1).norm(dim=1), torch.ones(10))
    smooth = projection_patterns(10, d.images.shape[-1])
    for k in range(10):
        x = d.images[d.labels == k]
        labels = torch.full((len(x),), k)
        var_pc = projection_reward(x, labels, pc).var()
        # the top principal direction maximises the variance of any unit projection
        for other in (smooth, pc.roll(1, 0)):  # smooth patterns; another class's direction
            assert var_pc >= projection_reward(x, labels, other).var() * (1 - 1e-5)
