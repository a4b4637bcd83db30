from __future__ import annotations

import pytest
import torch

from diffkit.data.moving_digits import MovingDigitsConfig, make_moving_digits


def test_shapes_determinism_and_range():
    cfg = MovingDigitsConfig(num_frames=6, size=32)
    a, b = make_moving_digits(5, cfg, seed=3), make_moving_digits(5, cfg, seed=3)
    assert a.videos.shape == (5, 6, 1, 32, 32)
    assert torch.equal(a.videos, b.videos) and torch.equal(a.labels, b.labels)
    assert a.videos.min() >= -1 and a.videos.max() <= 1
    assert not torch.equal(a.videos, make_moving_digits(5, cfg, seed=4).videos)


def test_trajectories_stay_inside_and_match_pixels():
    cfg = MovingDigitsConfig(
        num_frames=20, size=32, digit_size=16, max_digits=1, min_speed=2, max_speed=3
    )
    m = make_moving_digits(4, cfg, seed=0)
    tr = m.trajectories[:, 0]
    assert (tr >= 0).all() and (tr <= 16).all()
    assert (m.labels[:, 1] == -1).all() and (m.trajectories[:, 1] == -1).all()
    # All ink lies inside the digit's box at its trajectory position.
    for i in range(4):
        for f in range(20):
            y, x = tr[i, f].tolist()
            frame = m.videos[i, f, 0].clone()
            frame[y : y + 16, x : x + 16] = -1
            assert (frame == -1).all()
    # Digits move: positions change over time.
    assert (tr[:, 1:] != tr[:, :-1]).any()


def test_validation():
    with pytest.raises(ValueError, match="digit_size"):
        MovingDigitsConfig(size=16, digit_size=20)
    with pytest.raises(ValueError, match="max_digits"):
        MovingDigitsConfig(max_digits=3)
    with pytest.raises(ValueError, match="n must be"):
        make_moving_digits(0)
    with pytest.raises(ValueError, match="grid"):
        MovingDigitsConfig(size=32, digit_size=16, grid=3)


def test_grid_positions_are_exact_token_shifts():
    base = MovingDigitsConfig(num_frames=10, size=32, digit_size=16, max_digits=1)
    grid = MovingDigitsConfig(num_frames=10, size=32, digit_size=16, max_digits=1, grid=4)
    a, g = make_moving_digits(6, base, seed=1), make_moving_digits(6, grid, seed=1)
    tr = g.trajectories[:, 0]
    assert (tr % 4 == 0).all() and (tr >= 0).all() and (tr <= 16).all()
    step = (tr[:, 1:] - tr[:, :-1]).abs()
    assert (step == 4).all()  # speeds 1-3 px round up to one 4-px cell per frame on each axis
    assert torch.equal(a.labels, g.labels)  # the same draws, snapped: same sprites
    # Every frame is the first frame's sprite shifted by whole cells.
    for i in range(6):
        y0, x0 = tr[i, 0].tolist()
        sprite = g.videos[i, 0, 0, y0 : y0 + 16, x0 : x0 + 16]
        for f in range(10):
            y, x = tr[i, f].tolist()
            assert torch.equal(g.videos[i, f, 0, y : y + 16, x : x + 16], sprite)
