"""``moving-digits-wan``: a tiny diffusers ``WanTransformer3DModel`` for bouncing-digit videos.

A real diffusers Wan2.1 transformer (3D RoPE, RMSNorm across heads, cross-attention to a "text"
sequence) with a tiny config, trained by rectified flow directly on pixels: videos of one bouncing
digit, 8 frames of 32x32, patch (1, 2, 2) -> a 8x16x16 token grid = 2,048 tokens per video, enough
for block-sparse attention to matter (32 blocks of 64). The "text" condition is a one-hot of the
digit class in a 16-dim vector (index 10 = no class, for classifier-free guidance).

Used by :mod:`diffkit.attention` (RoPeSLR) as its toy video DiT; the recipe is
:mod:`diffkit.zoo.moving_digits_wan`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from diffkit.core.samplers import euler_sample, guided
from diffkit.core.schedules import FlowMatching

DEFAULT_CONFIG: dict = {
    "patch_size": [1, 2, 2],
    "num_attention_heads": 2,
    "attention_head_dim": 32,
    "in_channels": 1,
    "out_channels": 1,
    "text_dim": 16,
    "freq_dim": 64,
    "ffn_dim": 256,
    "num_layers": 3,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}

#: Video settings of the shipped model (frames, size) and the moving-digits generator.
VIDEO = {"num_frames": 8, "size": 32, "digit_size": 16, "max_digits": 1}
NULL_CLASS = 10


def build(config: dict):
    """A randomly initialised ``WanTransformer3DModel`` with ``config``."""
    from diffusers import WanTransformer3DModel

    cfg = dict(config)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return WanTransformer3DModel(**cfg)


def load_dir(path: str | Path):
    """Load a ``save_pretrained`` folder (the shipped weights or a retrained copy)."""
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(str(path))


def condition(labels: torch.Tensor, text_dim: int = 16) -> torch.Tensor:
    """One-hot "text" tokens (B, 1, text_dim) for digit classes; ``NULL_CLASS`` = unconditional."""
    labels = labels.long().clamp(min=0)
    return torch.nn.functional.one_hot(labels, text_dim).float()[:, None, :]


def to_model(videos: torch.Tensor) -> torch.Tensor:
    """(B, F, C, H, W) videos -> (B, C, F, H, W) model input."""
    return videos.permute(0, 2, 1, 3, 4)


def from_model(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) model tensors -> (B, F, C, H, W) videos."""
    return x.permute(0, 2, 1, 3, 4)


def velocity_fn(model, labels: torch.Tensor, schedule: FlowMatching, cfg_scale: float = 1.0):
    """``fn(x, sigma) -> velocity`` for :func:`diffkit.core.samplers.euler_sample`."""
    text_dim = model.config.text_dim
    cond = condition(labels, text_dim)
    null = condition(torch.full_like(labels, NULL_CLASS), text_dim)

    def make(c):
        def fn(x, t):
            return model(x, schedule.model_t(t), c, return_dict=False)[0]

        return fn

    return guided(make(cond), make(null), cfg_scale)


@torch.no_grad()
def sample(
    model,
    labels: torch.Tensor,
    *,
    steps: int = 20,
    cfg_scale: float = 2.0,
    generator: torch.Generator | None = None,
    schedule: FlowMatching | None = None,
) -> torch.Tensor:
    """Generate videos (B, F, 1, S, S) in [-1, 1] for digit ``labels`` by Euler flow sampling."""
    schedule = schedule or FlowMatching(shift=2.0)
    shape = (len(labels), 1, VIDEO["num_frames"], VIDEO["size"], VIDEO["size"])
    x = euler_sample(
        velocity_fn(model, labels, schedule, cfg_scale), schedule, shape, steps, generator
    )
    return from_model(x).clamp(-1, 1)


def crop_digits(frames: torch.Tensor, size: int = 16) -> torch.Tensor:
    """Crop the brightest ``size`` x ``size`` window of each frame (N, 1, S, S) -> (N, 1, size, size).

    Used to score generated frames with the 16x16 evaluation network: on real moving-digit frames
    the window is the pasted digit.
    """
    mass = torch.nn.functional.avg_pool2d(frames + 1, size, stride=1)  # (N, 1, S-size+1, ...)
    n, _, hh, ww = mass.shape
    best = mass.flatten(1).argmax(1)
    ys, xs = best // ww, best % ww
    rows = (ys[:, None] + torch.arange(size))[:, None, :, None].expand(n, 1, size, frames.shape[-1])
    out = torch.gather(frames, 2, rows)
    cols = (xs[:, None] + torch.arange(size))[:, None, None, :].expand(n, 1, size, size)
    return torch.gather(out, 3, cols)


@torch.no_grad()
def evaluate(videos: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, classifier) -> dict:
    """Per-frame digit accuracy and FID/KID of digit crops (evaluation network features).

    ``videos`` (B, F, 1, S, S) generated for ``labels`` (B,); ``real`` (N, F, 1, S, S) held-out
    real videos. The classifier is the evaluation network; it never trains anything.
    """
    from diffkit.core.metrics import frechet_distance, kernel_inception_distance

    b, f = videos.shape[:2]
    fake = crop_digits(videos.flatten(0, 1))
    ref = crop_digits(real.flatten(0, 1))
    f_fake, pred = classifier.embed(fake)
    f_real, _ = classifier.embed(ref)
    acc = (pred.view(b, f) == labels[:, None]).float().mean()
    n = min(len(f_fake), len(f_real))
    kid, _ = kernel_inception_distance(f_real, f_fake, num_subsets=10, subset_size=min(100, n))
    return {
        "frame_accuracy": float(acc),
        "fid": frechet_distance(f_real, f_fake),
        "kid": float(kid),
        "frames": int(b * f),
    }
