"""Calibration drivers and evaluation for the supported autoregressive video models.

* ``moving-digits-causal`` (:mod:`diffkit.models.causal_wan`): the KV-cached chunk rollout is the
  calibration driver (``chunk_context=chunk``); evaluation compares a quantized rollout with the FP
  rollout under identical noise: per-chunk latent MSE, pixel PSNR, an FP-referenced Frechet
  distance on the evaluation network's features, and per-frame digit accuracy.
* diffusers ``SkyReelsV2Transformer3DModel`` (diffusion forcing, per-frame timesteps, block-causal
  mask via ``_set_ar_attention``; no KV cache): all frames go through one call, so each token is
  tagged with its frame block (:func:`skyreels_chunk_ids`) and calibration runs the
  diffusion-forcing calls of diffusers' asynchronous schedule, earlier blocks more denoised
  (:func:`diffusion_forcing_schedule`, :func:`calibrate_skyreels`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from diffkit.core.metrics import frechet_distance
from diffkit.quantize.chunks import chunk

SUPPORTED_MODELS = ("CausalWan", "SkyReelsV2Transformer3DModel")


def check_supported(model: nn.Module) -> str:
    name = type(model).__name__
    if name not in SUPPORTED_MODELS:
        raise ValueError(
            f"model class {name} has no calibration driver; supported: {', '.join(SUPPORTED_MODELS)}"
        )
    return name


# ----------------------------------------------------------------------------- causal_wan
def calibration_set(n: int, seed: int, config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (n, 2) (one digit, cycling through classes) and rollout noise for calibration."""
    from diffkit.models.causal_wan import rollout_noise

    g = torch.Generator().manual_seed(seed)
    first = (torch.arange(n) + seed) % config["num_classes"]
    labels = torch.stack([first, torch.full_like(first, -1)], 1)
    return labels, rollout_noise(n, config, g)


@torch.no_grad()
def calibrate_causal(model: nn.Module, n: int = 4, seed: int = 0, batch: int = 4) -> None:
    """Run ``n`` tagged calibration rollouts (the driver between prepare and convert)."""
    from diffkit.models.causal_wan import rollout

    labels, noise = calibration_set(n, seed, model.config)
    for i in range(0, n, batch):
        rollout(model, labels[i : i + batch], noise[i : i + batch], chunk_context=chunk)


@torch.no_grad()
def generate(model: nn.Module, labels: torch.Tensor, noise: torch.Tensor, batch: int = 8, **kw):
    from diffkit.models.causal_wan import rollout

    prefix = kw.pop("prefix", None)
    outs = [
        rollout(
            model,
            labels[i : i + batch],
            noise[i : i + batch],
            prefix=None if prefix is None else prefix[i : i + batch],
            **kw,
        )
        for i in range(0, len(labels), batch)
    ]
    return torch.cat(outs)


@torch.no_grad()
def video_features(
    pixels: torch.Tensor, classifier: nn.Module, digit_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame evaluation-network features and predicted digits of (N, F, 1, S, S) videos.

    Each frame's ``digit_size`` window with the most ink is resized to the network's 16x16 input
    (:func:`diffkit.models.moving_digits_wan.classifier_crops`).
    """
    from diffkit.models.moving_digits_wan import classifier_crops

    frames = pixels.flatten(0, 1).clamp(-1, 1)
    return classifier.embed(classifier_crops(frames, digit_size))


@torch.no_grad()
def compare_rollouts(
    fp: torch.Tensor,
    q: torch.Tensor,
    labels: torch.Tensor,
    config: dict,
    classifier: nn.Module | None = None,
) -> dict:
    """Metrics of quantized latents ``q`` against FP latents ``fp`` (same noise), (N, F, C, H, W).

    Digit crops use the model's ``config["digit_size"]`` (the sprite size of its data; 16 when
    absent).
    """
    from diffkit.models.causal_wan import decode_latents

    ch = config["chunk_frames"]
    n_chunks = fp.shape[1] // ch
    err = (q.double() - fp.double()).pow(2)
    px_fp, px_q = decode_latents(fp, config), decode_latents(q, config)
    mse_px = (px_q - px_fp).double().pow(2)
    out = {
        "chunk_mse": [float(err[:, k * ch : (k + 1) * ch].mean()) for k in range(n_chunks)],
        "chunk_psnr": [
            10 * math.log10(4.0 / max(float(mse_px[:, k * ch : (k + 1) * ch].mean()), 1e-20))
            for k in range(n_chunks)
        ],
        "video_mse": float(err.mean()),
        "final_chunk_mse": float(err[:, -ch:].mean()),
    }
    if classifier is not None:
        size = config.get("digit_size", 16)
        f_fp, p_fp = video_features(px_fp, classifier, size)
        f_q, p_q = video_features(px_q, classifier, size)
        target = labels[:, 0].repeat_interleave(fp.shape[1])
        out["frechet_fp_ref"] = frechet_distance(f_fp, f_q) if len(f_fp) > 2 else float("nan")
        out["digit_acc"] = float((p_q == target).float().mean())
        hit = (p_q == target).float().view(len(labels), -1)
        out["digit_acc_per_frame"] = hit.mean(0).tolist()  # by frame index
        out["digit_acc_fp"] = float((p_fp == target).float().mean())
        out["agree_with_fp"] = float((p_q == p_fp).float().mean())
    return out


# ----------------------------------------------------------------------------- SkyReels-V2
def skyreels_chunk_ids(model: nn.Module, latent_shape: tuple[int, ...]) -> torch.Tensor:
    """Frame-block id of every token of a (B, C, F, H, W) latent after patching."""
    check_supported(model)
    p_t, p_h, p_w = model.config.patch_size
    _, _, Fr, H, W = latent_shape
    block = max(1, int(model.config.num_frame_per_block))
    frames = Fr // p_t
    return (torch.arange(frames) // block).repeat_interleave((H // p_h) * (W // p_w))


def diffusion_forcing_schedule(
    num_blocks: int, steps: Sequence[int] = (1000, 750, 500, 250), ar_step: int = 2
) -> torch.Tensor:
    """(iterations, num_blocks) timesteps of SkyReels-V2's asynchronous diffusion forcing.

    The schedule of diffusers' ``SkyReelsV2DiffusionForcingPipeline.generate_timestep_matrix``
    (SkyReels-V2, arXiv 2504.13074, sec. 3.4) with one frame block per column: every block walks
    the template ``999, *steps, 0``; block b advances one step per iteration once block b-1 is
    done, else it stays ``ar_step`` steps behind block b-1. So in every row **earlier blocks are
    more denoised** (lower t) and the first block reaches t = 0 first.
    """
    if num_blocks < 1 or ar_step < 0 or not steps:
        raise ValueError(f"num_blocks={num_blocks}, ar_step={ar_step}, steps={list(steps)}")
    template = [999, *(int(v) for v in steps), 0]
    done = len(steps)  # template index of the last denoising step
    prev = [0] * num_blocks  # template index reached by each block
    rows = []
    while not all(v >= done for v in prev):
        row: list[int] = []
        for b in range(num_blocks):
            lead_done = b == 0 or prev[b - 1] >= done
            row.append(min(max(prev[b] + 1 if lead_done else row[b - 1] - ar_step, 0), done + 1))
        rows.append([template[v] for v in row])
        prev = row
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def calibrate_skyreels(
    model: nn.Module,
    latents: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    *,
    steps: Sequence[int] = (1000, 750, 500, 250),
    ar_step: int = 2,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Diffusion-forcing calibration calls, one per row of :func:`diffusion_forcing_schedule`
    (earlier frame blocks more denoised, as in diffusers' SkyReels-V2 pipeline), each token tagged
    with its frame block. Flow-matching inputs x_t = (1 - t/1000) x_0 + (t/1000) noise. Returns the
    (calls, frames) timesteps used.
    """
    check_supported(model)
    B, _, Fr = latents.shape[:3]
    block = max(1, int(model.config.num_frame_per_block))
    ids = skyreels_chunk_ids(model, tuple(latents.shape))
    blocks = torch.arange(Fr) // block
    schedule = diffusion_forcing_schedule(int(blocks.max()) + 1, steps, ar_step)
    used = []
    for t_block in schedule:
        t = t_block[blocks].expand(B, Fr)
        sigma = (t.float() / 1000.0)[:, None, :, None, None]
        noise = torch.randn(latents.shape, generator=generator)
        x = (1 - sigma) * latents + sigma * noise
        with chunk(ids):
            model(x, t, encoder_hidden_states, enable_diffusion_forcing=True)
        used.append(t[0])
    return torch.stack(used)


def _median_time(fn, repeats: int) -> float:
    import statistics
    import time

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.no_grad()
def evaluate_causal(
    fp_model: nn.Module,
    q_model: nn.Module,
    *,
    n: int = 8,
    seed: int = 100,
    classifier: nn.Module | None = None,
    time_repeats: int = 3,
) -> dict:
    """FP vs quantized rollouts with identical noise: errors, bytes and rollout times."""
    from diffkit.quantize.api import set_backend_
    from diffkit.quantize.storage import packed_bytes

    labels, noise = calibration_set(n, seed, fp_model.config)
    fp = generate(fp_model, labels, noise)
    q = generate(q_model, labels, noise)
    out = compare_rollouts(fp, q, labels, fp_model.config, classifier)
    out["bytes"] = packed_bytes(q_model)
    backend = q_model.quantize_info.get("backend", "simulate")
    one_l, one_n = labels[:1], noise[:1]
    timing = {}
    for _ in range(1):  # interleave FP / kernel / simulate so machine load hits all alike
        timing["fp32"] = _median_time(lambda: generate(fp_model, one_l, one_n), time_repeats)
        timing[backend] = _median_time(lambda: generate(q_model, one_l, one_n), time_repeats)
        if backend != "simulate":
            set_backend_(q_model, "simulate")
            timing["simulate"] = _median_time(lambda: generate(q_model, one_l, one_n), time_repeats)
            set_backend_(q_model, backend)
    out["rollout_seconds"] = timing
    return out
