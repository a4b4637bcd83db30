"""Part (d) of benchmarks/attention.py: a whole diffusers ``WanPipeline`` generation, RoPeSLR vs
dense, on CPU (issue 17 item 6).

The transformer is the zoo's trained ``moving-digits-wan`` (a real ``WanTransformer3DModel``,
1 channel, class-conditional through a one-hot "text" token passed as ``prompt_embeds``); RoPeSLR
is the zoo member ``moving-digits-wan-ropeslr`` (stage-1 aligned parameters, mass merge with the
estimated lse). The pipeline's latents are the zoo model's pixel space, so the VAE is a tiny
random ``AutoencoderKLWan`` (z_dim 1); its decode means nothing visually and its cost stands for
no real VAE, so it is timed apart (``vae_decode_s``, once per size) and the pipeline time is the
call with ``output_type="latent"``: conditioning, scheduler, CFG and every transformer call. The
scheduler is flow-matching Euler with shift 2, the zoo's sampler. Each setting generates from the
same seed; the final latents are compared with the dense pipeline's (relative L2), next to the
distance between two dense generations from different seeds (the scale of "a different video").

Timings: one untimed call first (reported as ``first_call_s``: it includes flex's compile), then
the median of ``reps`` calls, settings interleaved call by call.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import torch

#: (latent frames, latent height, latent width) -> 8 x 16 x 16 = 2,048 tokens (the zoo's videos)
#: and 8 x 32 x 32 = 8,192 tokens (the same model on 64 x 64 frames; RoPE and the APE extrapolate).
GRIDS = {2048: (8, 32, 32), 8192: (8, 64, 64)}


def _pipeline(transformer):
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=1,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0],
        latents_std=[1.0],
    ).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=2.0)  # the zoo's FlowMatching(shift=2)
    pipe = WanPipeline(
        tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _ropeslr_transformer(**changes):
    """moving-digits-wan + the zoo member's RoPeSLR parameters, with config ``changes``."""
    from diffkit import models
    from diffkit.attention import apply_ropeslr_, read_ropeslr_record
    from diffkit.attention.persist import SIDECAR_WEIGHTS
    from diffkit.core.io import load_tensors

    path = models.entry("moving-digits-wan-ropeslr").path
    config, layers = read_ropeslr_record(path)
    model = models.load("moving-digits-wan")
    apply_ropeslr_(model, dataclasses.replace(config, **changes), layers)
    model.load_state_dict(load_tensors(path / SIDECAR_WEIGHTS), strict=False)
    return model.eval()


def part_d(lengths=(2048,), steps: int = 10, reps: int = 3, label: int = 3) -> dict:
    """Whole-pipeline time and final-latent distance, RoPeSLR vs dense, per token count."""
    from diffkit import models
    from diffkit.models import moving_digits_wan as mdw

    settings = {
        "dense": lambda: models.load("moving-digits-wan"),
        "ropeslr_reference": lambda: _ropeslr_transformer(backend="reference"),
        "ropeslr_flex": lambda: _ropeslr_transformer(backend="flex"),
        "spike_only_reference": lambda: _ropeslr_transformer(backend="reference", background=False),
    }
    pipes = {name: _pipeline(make()) for name, make in settings.items()}
    embeds = {
        "prompt_embeds": mdw.condition(torch.tensor([label])),
        "negative_prompt_embeds": mdw.condition(torch.tensor([mdw.NULL_CLASS])),
    }
    out = {"steps": steps, "reps": reps, "guidance_scale": 2.0, "rows": []}
    for length in lengths:
        f, h, w = GRIDS[length]
        call = dict(
            height=8 * h,
            width=8 * w,
            num_frames=4 * (f - 1) + 1,
            num_inference_steps=steps,
            guidance_scale=2.0,
            **embeds,
        )

        def run(pipe, seed=0, output_type="latent", call=call):
            g = torch.Generator().manual_seed(seed)
            t0 = time.perf_counter()
            frames = pipe(**call, generator=g, output_type=output_type).frames
            return time.perf_counter() - t0, frames

        first, latents, times = {}, {}, {n: [] for n in pipes}
        for name, pipe in pipes.items():
            first[name], latents[name] = run(pipe)
        for _ in range(reps):
            for name, pipe in pipes.items():
                times[name].append(run(pipe)[0])
        ref = latents["dense"]
        other_seed = run(pipes["dense"], seed=1)[1]
        with_decode = run(pipes["dense"], output_type="pt")[0]
        row = {
            "tokens": length,
            "grid": [f, h, w],
            "seed_to_seed_rel_l2": float((other_seed - ref).norm() / ref.norm()),
            "vae_decode_s": with_decode - statistics.median(times["dense"]),
        }
        for name in pipes:
            med = statistics.median(times[name])
            row[name] = {
                "pipeline_s": med,
                "first_call_s": first[name],
                "speedup_vs_dense": statistics.median(times["dense"]) / med,
                "final_latent_rel_l2": float((latents[name] - ref).norm() / ref.norm()),
            }
        out["rows"].append(row)
        print(row, flush=True)
    return out


def markdown(res: dict) -> list[str]:
    """Rows of attention.md for part (d)."""
    md = [
        "",
        f"(d) whole `WanPipeline` generation on CPU ({res['steps']} Euler steps, CFG "
        f"{res['guidance_scale']}, {res['env']['threads']} thread(s), loadavg "
        f"{res['env']['loadavg_start'][0]:.1f} at start, `output_type='latent'`; the tiny random VAE's decode is timed "
        f"apart), RoPeSLR vs dense; median of {res['reps']} calls interleaved; first call "
        "separate (it includes flex's compile). Measured while the machine was shared: ratios "
        "only.",
        "",
        "| tokens | setting | pipeline s | speedup | first call s | final-latent rel. L2 vs dense |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in res["rows"]:
        for name in ("dense", "ropeslr_reference", "ropeslr_flex", "spike_only_reference"):
            r = row[name]
            md.append(
                f"| {row['tokens']} | {name} | {r['pipeline_s']:.2f} | "
                f"{r['speedup_vs_dense']:.2f}x | {r['first_call_s']:.1f} | "
                f"{r['final_latent_rel_l2']:.3f} |"
            )
        md.append(
            f"| {row['tokens']} | dense, another seed | | | | {row['seed_to_seed_rel_l2']:.3f} |"
        )
        md.append(f"| {row['tokens']} | (tiny VAE decode) | {row['vae_decode_s']:.2f} | | | |")
    return md
