"""``moving-digits-wan``: a tiny diffusers ``WanTransformer3DModel`` for bouncing-digit videos.

A real diffusers Wan2.1 transformer (3D RoPE, RMSNorm across heads, cross-attention to a "text"
sequence) with a tiny config, trained by rectified flow directly on pixels: videos of one bouncing
digit (24 px sprites on a 32x32 canvas), 16 frames, patch (1, 4, 4) -> a 16x8x8 token grid = 1,024
tokens per video (16 blocks of 64 for block-sparse attention). The "text" condition is
:data:`TEXT_TOKENS` tokens, each the one-hot of the digit class (index 10 = no class, for
classifier-free guidance) beside the one-hot of the token's index, so cross-attention can look up
several class features instead of adding one class bias.

Used by :mod:`diffkit.attention` (RoPeSLR) as its toy video DiT; the recipe is
:mod:`diffkit.zoo.moving_digits_wan`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from diffkit.core.samplers import euler_sample
from diffkit.core.schedules import FlowMatching

#: Class tokens of the "text" condition (text_dim = 11 classes incl. null + TEXT_TOKENS).
TEXT_TOKENS = 8
NUM_CLASSES = 11  # ten digits + the null class

DEFAULT_CONFIG: dict = {
    "patch_size": [1, 4, 4],
    "num_attention_heads": 4,
    "attention_head_dim": 32,
    "in_channels": 1,
    "out_channels": 1,
    "text_dim": NUM_CLASSES + TEXT_TOKENS,
    "freq_dim": 64,
    "ffn_dim": 512,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 64,
}

#: Video settings of the shipped model (frames, size) and the moving-digits generator.
VIDEO = {
    "num_frames": 16,
    "size": 32,
    "digit_size": 24,
    "max_digits": 1,
    "min_speed": 1.0,
    "max_speed": 3.0,
    "start": "centre",
}
NULL_CLASS = 10
#: Sampling defaults of the shipped model (the recipe evaluates with these).
SHIFT = 3.0
CFG_SCALE = 3.0


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


def condition(labels: torch.Tensor, text_dim: int = DEFAULT_CONFIG["text_dim"]) -> torch.Tensor:
    """ "Text" tokens for digit classes; ``NULL_CLASS`` = unconditional.

    ``text_dim`` = 11 + K gives (B, K, text_dim): token k is [one-hot(class, 11), one-hot(k, K)].
    ``text_dim`` = 16 (the first zoo model's layout) gives one one-hot token (B, 1, 16).
    """
    labels = labels.long().clamp(min=0)
    one_hot = torch.nn.functional.one_hot
    if text_dim == 16:
        return one_hot(labels, 16).float()[:, None, :]
    k = text_dim - NUM_CLASSES
    if k < 1:
        raise ValueError(f"text_dim must be 16 or > {NUM_CLASSES}, got {text_dim}")
    cls = one_hot(labels, NUM_CLASSES).float()[:, None, :].expand(-1, k, -1)
    idx = torch.eye(k)[None].expand(len(labels), -1, -1)
    return torch.cat([cls, idx], -1)


def to_model(videos: torch.Tensor) -> torch.Tensor:
    """(B, F, C, H, W) videos -> (B, C, F, H, W) model input."""
    return videos.permute(0, 2, 1, 3, 4)


def from_model(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) model tensors -> (B, F, C, H, W) videos."""
    return x.permute(0, 2, 1, 3, 4)


def autocast(dtype: torch.dtype | None):
    """CPU/CUDA autocast to ``dtype`` (None or float32: a no-op context)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=dtype)


def velocity_fn(
    model,
    labels: torch.Tensor,
    schedule: FlowMatching,
    cfg_scale: float = 1.0,
    dtype: torch.dtype | None = None,
):
    """``fn(x, sigma) -> velocity`` for :func:`diffkit.core.samplers.euler_sample`.

    Classifier-free guidance (Ho & Salimans 2022) ``u + s (c - u)`` with the conditional and the
    null-class branch evaluated in one batch of 2B.
    """
    text_dim = model.config.text_dim
    cond = condition(labels, text_dim)
    if cfg_scale != 1.0:
        cond = torch.cat([cond, condition(torch.full_like(labels, NULL_CLASS), text_dim)])

    def fn(x, t):
        xin, tin = (x, t) if cfg_scale == 1.0 else (torch.cat([x, x]), torch.cat([t, t]))
        with autocast(dtype):
            out = model(xin, schedule.model_t(tin), cond, return_dict=False)[0].float()
        if cfg_scale == 1.0:
            return out
        c, u = out.chunk(2)
        return u + cfg_scale * (c - u)

    return fn


@torch.no_grad()
def sample(
    model,
    labels: torch.Tensor,
    *,
    steps: int = 20,
    cfg_scale: float = CFG_SCALE,
    generator: torch.Generator | None = None,
    schedule: FlowMatching | None = None,
    num_frames: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Generate videos (B, F, 1, S, S) in [-1, 1] for digit ``labels`` by Euler flow sampling.

    ``num_frames`` defaults to the shipped model's 8; ``dtype`` (e.g. ``torch.bfloat16``) runs the
    transformer under autocast, the sampler state stays fp32.
    """
    schedule = schedule or FlowMatching(shift=SHIFT)
    frames = num_frames or VIDEO["num_frames"]
    shape = (len(labels), 1, frames, VIDEO["size"], VIDEO["size"])
    fn = velocity_fn(model, labels, schedule, cfg_scale, dtype)
    x = euler_sample(fn, schedule, shape, steps, generator)
    return from_model(x).clamp(-1, 1)


def digit_positions(frames: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Top-left (y, x) of the brightest ``size`` x ``size`` window of each frame (N, 1, S, S) -> (N, 2)."""
    size = size or VIDEO["digit_size"]
    mass = torch.nn.functional.avg_pool2d(frames + 1, size, stride=1)  # (N, 1, S-size+1, ...)
    ww = mass.shape[-1]
    best = mass.flatten(1).argmax(1)
    return torch.stack([best // ww, best % ww], 1)


def crop_digits(frames: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Crop the brightest ``size`` x ``size`` window of each frame (N, 1, S, S) -> (N, 1, size, size).

    On real moving-digit frames the window is the pasted digit; ``size`` defaults to the shipped
    model's digit size.
    """
    size = size or VIDEO["digit_size"]
    n = frames.shape[0]
    pos = digit_positions(frames, size)
    ys, xs = pos[:, 0], pos[:, 1]
    rows = (ys[:, None] + torch.arange(size))[:, None, :, None].expand(n, 1, size, frames.shape[-1])
    out = torch.gather(frames, 2, rows)
    cols = (xs[:, None] + torch.arange(size))[:, None, None, :].expand(n, 1, size, size)
    return torch.gather(out, 3, cols)


def classifier_crops(frames: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Digit crops of frames (N, 1, S, S) resized to the evaluation network's 16x16 input.

    ``size``: the digit's side in pixels (default: the shipped model's).
    """
    crops = crop_digits(frames, size)
    if crops.shape[-1] == 16:
        return crops
    return torch.nn.functional.interpolate(crops, size=16, mode="bilinear", align_corners=False)


def displacement(videos: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Mean frame-to-frame displacement (pixels) of the digit window, one value per video (B,)."""
    b, f = videos.shape[:2]
    pos = digit_positions(videos.flatten(0, 1), size).view(b, f, 2).float()
    return (pos[:, 1:] - pos[:, :-1]).norm(dim=-1).mean(1)


@torch.no_grad()
def evaluate(
    videos: torch.Tensor,
    labels: torch.Tensor,
    real: torch.Tensor,
    classifier,
    *,
    floor_real: torch.Tensor | None = None,
    digit_size: int | None = None,
) -> dict:
    """Per-frame digit accuracy, class consistency, motion and FID/KID of digit crops.

    Crops (:func:`classifier_crops`) are scored by the 16x16 evaluation network.

    ``videos`` (B, F, 1, S, S) generated for ``labels`` (B,); ``real`` (N, F, 1, S, S) held-out
    real videos (the FID reference). ``floor_real`` (M, F, 1, S, S), other real videos (e.g. of
    the training split), gives the real-vs-real FID floor against the same reference. The
    classifier is the evaluation network; it never trains anything. ``digit_size``: the side of
    the videos' digits in pixels (default: this model's; the causal model's are 16).

    * ``frame_accuracy``: frames classified as the video's label.
    * ``class_consistency``: per video, the share of frames classified as the video's most common
      class, averaged; ``videos_consistent_95``: share of videos where that share is >= 0.95.
    * ``displacement``: mean over videos of the digit window's mean frame-to-frame step (pixels);
      ``real_displacement_p05/p95``: the range of the same per-video value on ``real``.
    """
    from diffkit.core.metrics import frechet_distance, kernel_inception_distance

    b, f = videos.shape[:2]
    fake = classifier_crops(videos.flatten(0, 1), digit_size)
    ref = classifier_crops(real.flatten(0, 1), digit_size)
    f_fake, pred = classifier.embed(fake)
    f_real, _ = classifier.embed(ref)
    pred = pred.view(b, f)
    acc = (pred == labels[:, None]).float().mean()
    share = (pred == pred.mode(dim=1).values[:, None]).float().mean(1)
    n = min(len(f_fake), len(f_real))
    kid, _ = kernel_inception_distance(f_real, f_fake, num_subsets=10, subset_size=min(100, n))
    disp, real_disp = displacement(videos, digit_size), displacement(real, digit_size)
    out = {
        "frame_accuracy": float(acc),
        "class_consistency": float(share.mean()),
        "videos_consistent_95": float((share >= 0.95).float().mean()),
        "displacement": float(disp.mean()),
        "real_displacement": float(real_disp.mean()),
        "real_displacement_p05": float(real_disp.quantile(0.05)),
        "real_displacement_p95": float(real_disp.quantile(0.95)),
        "fid": frechet_distance(f_real, f_fake),
        "kid": float(kid),
        "videos": int(b),
        "frames": int(b * f),
    }
    if floor_real is not None:
        f_floor, _ = classifier.embed(classifier_crops(floor_real.flatten(0, 1), digit_size))
        out["fid_real_floor"] = frechet_distance(f_real, f_floor)
        out["fid_over_floor"] = out["fid"] / max(out["fid_real_floor"], 1e-12)
    return out
