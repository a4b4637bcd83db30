"""Seeded videos of one or two digits bouncing inside a square canvas (Moving-MNIST style).

Digits come from the bundled scikit-learn set (:mod:`diffkit.data.digits`), so no download is needed.
Each video has ``num_frames`` frames of ``size`` x ``size`` pixels in [-1, 1] (background -1);
digits move with constant velocity and reflect off the walls; overlapping digits combine with max.
Labels use -1 for an absent second digit; trajectories give each digit's top-left corner per frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from diffkit.data.digits import Split, load_digits


@dataclass(frozen=True, kw_only=True)
class MovingDigitsConfig:
    """Generator settings.

    Attributes:
        num_frames: frames per video.
        size: canvas height and width in pixels.
        digit_size: side of each pasted digit in pixels.
        max_digits: 1 or 2; each video holds between 1 and ``max_digits`` digits.
        min_speed: minimum speed in pixels per frame (per axis, absolute).
        max_speed: maximum speed in pixels per frame (per axis, absolute).
        split: which digits split to draw sprites from ("train" or "test").
        grid: positions and per-axis speeds are multiples of ``grid`` pixels (1: any pixel). With
            ``grid`` equal to a model's patch size every frame is an exact shift of the sprite on
            the token grid, so a patch tokenizer sees the same tokens wherever the digit is.
        start: "random" (first position uniform in the canvas) or "centre" (every digit starts
            in the middle of the canvas and leaves it with its random velocity).
    """

    num_frames: int = 12
    size: int = 32
    digit_size: int = 16
    max_digits: int = 2
    min_speed: float = 1.0
    max_speed: float = 3.0
    split: Split = "train"
    grid: int = 1
    start: str = "random"

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"MovingDigitsConfig.num_frames must be >= 1, got {self.num_frames}")
        if not 8 <= self.digit_size <= self.size:
            raise ValueError(
                f"MovingDigitsConfig.digit_size must be in [8, size={self.size}], got {self.digit_size}"
            )
        if self.max_digits not in (1, 2):
            raise ValueError(f"MovingDigitsConfig.max_digits must be 1 or 2, got {self.max_digits}")
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(
                f"MovingDigitsConfig needs 0 <= min_speed <= max_speed, got min_speed={self.min_speed}, "
                f"max_speed={self.max_speed}"
            )
        if self.start not in ("random", "centre"):
            raise ValueError(
                f"MovingDigitsConfig.start must be 'random' or 'centre', got {self.start!r}"
            )
        if self.grid < 1 or (self.size - self.digit_size) % self.grid:
            raise ValueError(
                f"MovingDigitsConfig.grid must be >= 1 and divide size - digit_size = "
                f"{self.size - self.digit_size}, got {self.grid}"
            )


@dataclass(frozen=True)
class MovingDigits:
    """videos (N, F, 1, S, S) in [-1, 1]; labels (N, 2) with -1 = absent; trajectories (N, 2, F, 2) as (y, x)."""

    videos: torch.Tensor
    labels: torch.Tensor
    trajectories: torch.Tensor
    config: MovingDigitsConfig

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i):
        return {"x": self.videos[i], "y": self.labels[i]}

    def get_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.videos[idx], "y": self.labels[idx]}


def _bounce(pos: torch.Tensor, vel: torch.Tensor, limit: float, frames: int) -> torch.Tensor:
    """Positions over ``frames`` frames with reflection in [0, limit] (closed-form triangle wave)."""
    t = torch.arange(frames, dtype=torch.float32)
    raw = pos[..., None] + vel[..., None] * t  # (..., F)
    if limit <= 0:
        return torch.zeros_like(raw)
    period = 2 * limit
    m = torch.remainder(raw, period)
    return torch.where(m > limit, period - m, m)


def make_moving_digits(
    n: int, config: MovingDigitsConfig | None = None, seed: int = 0
) -> MovingDigits:
    """Generate ``n`` videos deterministically from ``seed``."""
    cfg = config or MovingDigitsConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1, got n={n}")
    g = torch.Generator().manual_seed(seed)
    sprites_all = load_digits(cfg.split, size=16)
    sprites = (sprites_all.images + 1) / 2  # [0, 1]
    if cfg.digit_size != 16:
        sprites = F.interpolate(
            sprites, size=(cfg.digit_size,) * 2, mode="bilinear", align_corners=False
        )
    F_, S, D = cfg.num_frames, cfg.size, cfg.digit_size
    limit = float(S - D)

    count = torch.randint(1, cfg.max_digits + 1, (n,), generator=g)
    pick = torch.randint(0, len(sprites_all), (n, 2), generator=g)
    pos = torch.rand(n, 2, 2, generator=g) * limit
    speed = cfg.min_speed + torch.rand(n, 2, 2, generator=g) * (cfg.max_speed - cfg.min_speed)
    sign = torch.where(torch.rand(n, 2, 2, generator=g) < 0.5, -1.0, 1.0)
    if cfg.start == "centre":
        pos = torch.full_like(pos, limit / 2)
    if cfg.grid > 1:  # snap to the grid after the same draws, so grid=1 data is unchanged
        pos = (pos / cfg.grid).round() * cfg.grid
        speed = (speed / cfg.grid).round().clamp(min=1) * cfg.grid
    traj = _bounce(pos, speed * sign, limit, F_).permute(0, 1, 3, 2)  # (n, 2, F, 2)
    traj_int = traj.round().long()

    videos = torch.zeros(n, F_, 1, S, S)
    for k in range(2):
        present = count > k
        for i in torch.nonzero(present).flatten().tolist():
            sp = sprites[pick[i, k], 0]
            for f in range(F_):
                y, x = traj_int[i, k, f].tolist()
                region = videos[i, f, 0, y : y + D, x : x + D]
                torch.maximum(region, sp, out=region)
    labels = torch.where(
        count[:, None] > torch.arange(2), sprites_all.labels[pick], torch.full((n, 2), -1)
    )
    traj_int = torch.where(
        (count[:, None] > torch.arange(2))[..., None, None], traj_int, torch.full_like(traj_int, -1)
    )
    return MovingDigits(videos=videos * 2 - 1, labels=labels, trajectories=traj_int, config=cfg)
