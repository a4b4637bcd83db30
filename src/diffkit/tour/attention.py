"""Tour section: RoPeSLR sparse + low-rank attention on the tiny Wan video model."""

from __future__ import annotations

import torch

TITLE = "RoPeSLR: sparse + low-rank attention for video DiTs"
ORDER = 50


def build(section, ctx) -> None:
    from diffkit import models
    from diffkit.attention.cli import profile_model
    from diffkit.attention.pretrained import make_inputs
    from diffkit.data import make_moving_digits
    from diffkit.models import moving_digits_wan as mdw
    from diffkit.report import video_strip
    from diffkit.zoo.moving_digits_wan import video_config

    section.text(
        "RoPeSLR (arXiv 2605.20659) replaces each video self-attention by an exact block-sparse "
        "softmax over the top-k key blocks of the post-RoPE queries/keys (the *spike* path, which "
        "keeps 3D RoPE's relative positions exactly) plus a head-wise low-rank *background* over "
        "the complement blocks, built from pre-RoPE q/k and a learnable 3D absolute position "
        "embedding whose inner product is a translation-invariant kernel. Here it runs on "
        "`moving-digits-wan`, a diffusers `WanTransformer3DModel` with 1,024 tokens per video "
        "(16 frames, 16x8x8 grid, 16 blocks of 64), at density 0.1 (2 key blocks per query block)."
    )
    ctx.status("attention: loading zoo models")
    dense = models.load("moving-digits-wan")
    sparse = models.load("moving-digits-wan-ropeslr")
    n = 1 if ctx.fast else 2
    steps = 6 if ctx.fast else 12
    labels = torch.arange(n) + 3
    vids = {}
    for name, m in (("dense", dense), ("RoPeSLR", sparse)):
        ctx.status(f"attention: sampling ({name})")
        g = torch.Generator().manual_seed(ctx.seed)
        vids[name] = mdw.sample(m, labels, steps=steps, generator=g)
    section.image(
        video_strip(torch.cat([vids["dense"], vids["RoPeSLR"]]), scale=2),
        f"same noise, same labels {labels.tolist()}: top {n} row(s) dense attention, bottom "
        f"RoPeSLR at density 0.1 ({steps} Euler steps)",
    )
    diff = float((vids["dense"] - vids["RoPeSLR"]).pow(2).mean().sqrt())
    ctx.status("attention: per-layer error and timing")
    held = make_moving_digits(2, video_config("test"), seed=ctx.seed + 5)
    prof = profile_model(
        sparse, held, make_inputs(), batch=1 if ctx.fast else 2, reps=1 if ctx.fast else 2
    )
    rows = [
        {"layer": i, "relative MSE vs dense attention": e}
        for i, e in enumerate(prof["layer_rel_mse"])
    ]
    section.table(
        rows, "held-out noised videos: per-layer relative MSE of RoPeSLR vs dense attention"
    )
    zm = models.metrics("moving-digits-wan-ropeslr")
    summary = [
        {"quantity": "RMS pixel difference of the sampled videos, dense vs RoPeSLR", "value": diff},
        {"quantity": "model forward (s), dense SDPA", "value": prof["forward_seconds_dense"]},
        {
            "quantity": "model forward (s), RoPeSLR reference backend",
            "value": prof["forward_seconds_ropeslr"],
        },
        {
            "quantity": "self-attention share of model FLOPs",
            "value": prof["self_attention_flop_share"],
        },
        {
            "quantity": "Amdahl bound on end-to-end speedup at 10x attention",
            "value": prof["amdahl_bound_at_10x_attention"],
        },
    ]
    if zm:
        q = zm.get("sample_quality", {}).get("ropeslr", {})
        dq = zm.get("dense_sample_quality", {})
        summary += [
            {
                "quantity": "digit accuracy per frame, dense (zoo metrics)",
                "value": dq.get("frame_accuracy"),
            },
            {
                "quantity": "digit accuracy per frame, RoPeSLR (zoo metrics)",
                "value": q.get("frame_accuracy"),
            },
            {"quantity": "crop FID, dense (zoo metrics)", "value": dq.get("fid")},
            {"quantity": "crop FID, RoPeSLR (zoo metrics)", "value": q.get("fid")},
        ]
    acc = (zm or {}).get("dense_sample_quality", {}).get("frame_accuracy")
    if acc is not None and acc < 0.5:
        section.text(
            f"**Read the samples above as noise.** The shipped `moving-digits-wan` does not yet "
            f"generate digits (per-frame digit accuracy {acc:.2f}; chance is 0.10). The figures "
            "here say how far RoPeSLR moves the model's output from dense attention, not whether "
            "sample quality survives; that needs a generating video model (open work)."
        )
    elif acc is not None:
        rq = (zm or {}).get("sample_quality", {}).get("ropeslr", {}).get("frame_accuracy")
        shortfall = (
            f"short of its 0.90 per-frame accuracy target ({acc:.3f})"
            if acc < 0.9
            else f"at per-frame digit accuracy {acc:.3f} over 200 videos (target 0.90)"
        )
        versus = f" ({rq:.3f} vs {acc:.3f})" if rq is not None else ""
        section.text(
            f"The shipped `moving-digits-wan` generates moving digits, {shortfall}; a digit's "
            "shape can still drift between frames. The zoo metrics compare dense and RoPeSLR on "
            "few videos (the RoPeSLR member's recipe samples 2 per class), where RoPeSLR at "
            f"density 0.1 scores well below dense{versus}: at 1,024 tokens 2 of 16 key blocks "
            "lose the class. The benchmark's 200-video quality comparison "
            "(`benchmarks/attention.py`, part c) has not been rerun on this model yet."
        )
    section.table(
        summary,
        "quality and cost measured in this run; the rows marked *zoo metrics* are read from the "
        "model's `metrics.json`, written when the zoo recipe trained it",
    )
    section.text(
        "The reference backend used here for training and the tour is pure PyTorch; the fast "
        "inference paths are the gather backend on CPU (selected key/value blocks gathered, then "
        "PyTorch's fused flash kernel), compiled FlexAttention and a fused Triton kernel on CUDA "
        "(see the benchmark). Speedups only approach 1/density at long sequences; at the zoo's "
        "1,024 tokens the block bookkeeping dominates. Long-sequence speed against SDPA and the error-vs-density "
        "sweep are not measured in this run: `python benchmarks/attention.py` measures them and "
        "writes `benchmarks/results/attention.md`, which names the machine of each figure."
    )
