"""Composed stack on the causal zoo model: RoPeSLR sparse attention x Q-ARVD W8A8 / W4A8.

TurboDiffusion stacks sparse attention, step distillation and W8A8 on Wan2.1; this measures the two
methods diffkit can stack on one causal video model (``moving-digits-causal``), each alone and both,
side by side in one run:

* variants: FP dense, RoPeSLR alone at two densities, Q-ARVD W8A8 alone, W4A8 alone,
  RoPeSLR + W8A8, RoPeSLR + W4A8. The unquantized parts of every variant run in the machine's fast
  dtype (:func:`diffkit.core.machine.fast_dtype`, by autocast), and again in fp32 (on a tiny model
  bf16 autocast can be the slower one); the quantized projections run the int8 kernel (oneDNN on
  CPU).
* RoPeSLR is applied first and Q-ARVD calibrates through it (the order a user deploys; the other
  order is equally supported, see docs/attention.md). Its new parameters get a short stage-1
  alignment (per-layer relative MSE to the dense attention, backbone frozen) on teacher-forcing
  inputs built from the FP model's own rollouts (``--align-steps``; 0 = untrained parameters).
* speed: end-to-end KV-cached rollout of one video (guidance as the model samples), median of
  interleaved repeats (every variant once per round, so machine load hits all alike).
* quality: against the fp32 dense rollout with identical noise (``compare_rollouts``: per-chunk
  latent MSE, pixel PSNR, FP-referenced Frechet distance, digit agreement) and per-frame digit
  accuracy of the evaluation network, overall and per frame index.

Usage: ``python benchmarks/compose.py [--quick] [--threads 2]``; writes
``benchmarks/results/compose.{json,md}`` (``--quick``: ``compose_quick.*``).
"""

# ruff: noqa: B023 -- timing lambdas are called immediately inside their loop iteration

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.attention import (
    RoPeSLRConfig,
    apply_ropeslr_,
    freeze_backbone_,
    ropeslr_parameters,
    ropeslr_state,
)
from diffkit.core.io import atomic_write_json, atomic_write_text
from diffkit.core.machine import fast_dtype, machine_info, machine_line
from diffkit.models import causal_wan as cw
from diffkit.quantize import QARVDConfig, quantize_
from diffkit.quantize.targets import (
    calibrate_causal,
    calibration_set,
    compare_rollouts,
    generate,
)

OUT = Path(__file__).parent / "results"
log = logging.getLogger("bench.compose")


def ropeslr_config(density: float, block: int) -> RoPeSLRConfig:
    """Blocks of ``block`` tokens inside a frame (4x4 tiles), the default gated merge."""
    return RoPeSLRConfig(density=density, block_size=block, tile=(1, 4, 4))


# ----------------------------------------------------------------------------- building variants
def align_(model, fp, *, steps: int, lr: float, videos: int, batch: int, seed: int) -> dict:
    """Stage-1 alignment of the RoPeSLR parameters (backbone frozen) on teacher-forcing inputs:
    clean = the FP model's rollouts (their own labels), noisy = a warped noise level per chunk.
    Returns the mean per-layer relative MSE over the first and the last 10 % of steps."""
    if steps == 0:
        return {"steps": 0}
    labels, noise = calibration_set(videos, seed, fp.config)
    clean = generate(fp, labels, noise)  # (N, F, C, H, W)
    freeze_backbone_(model)
    opt = torch.optim.Adam(ropeslr_parameters(model), lr=lr)
    st = ropeslr_state(model)
    g = torch.Generator().manual_seed(seed)
    sig = cw.sampler_sigmas(model.config).float()
    ch, n_frames = model.config["chunk_frames"], clean.shape[1]
    losses = []
    for _ in range(steps):
        i = torch.randint(len(clean), (batch,), generator=g)
        x0, lab = clean[i], labels[i].clone()
        lab[torch.rand(batch, generator=g) < 0.1] = -1  # the null label guidance also runs
        s = sig[torch.randint(len(sig), (batch, n_frames // ch), generator=g)]
        s = s.repeat_interleave(ch, 1)  # (B, F): one level per chunk
        eps = torch.randn(x0.shape, generator=g)
        noisy = (1 - s)[..., None, None, None] * x0 + s[..., None, None, None] * eps
        seq, idx, mask = cw.teacher_forcing_inputs(model, x0, noisy)
        t = torch.cat([torch.zeros_like(s), 1000 * s], 1)
        st.mode, st.losses = "align", []
        try:
            model(seq, t, lab, frame_index=idx, mask=mask)
        finally:
            st.mode = "sparse"
        loss = torch.stack(st.losses).mean()
        st.losses = []
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in model.parameters():
        p.requires_grad_(False)
    tail = max(1, steps // 10)
    return {
        "steps": steps,
        "lr": lr,
        "layer_rel_mse_first": statistics.mean(losses[:tail]),
        "layer_rel_mse_last": statistics.mean(losses[-tail:]),
    }


def quantized(model, cfg, calib_n: int):
    """Q-ARVD prepare -> tagged calibration rollouts -> convert, on a copy (fp32 calibration)."""
    m = copy.deepcopy(model)
    quantize_(m, cfg)
    calibrate_causal(m, n=calib_n, seed=0)
    quantize_(m, dataclasses.replace(cfg, step="convert"))
    return m


def build_variants(fp, args) -> tuple[dict, dict]:
    """name -> model (FP dense first: the baseline); and the alignment records."""
    q_cfg = {
        bits: QARVDConfig(w_bits=w, a_bits=8, iters=args.qarvd_iters, batch_rows=256)
        for bits, w in (("W8A8", 8), ("W4A8", 4))
    }
    variants, sparse, aligned = {"FP dense": fp}, {}, {}
    for rho in args.densities:
        m = copy.deepcopy(fp)
        apply_ropeslr_(m, ropeslr_config(rho, args.block))
        t0 = time.perf_counter()
        rec = align_(
            m, fp, steps=args.align_steps, lr=args.align_lr, videos=args.align_videos,
            batch=args.align_batch, seed=1,
        )  # fmt: skip
        rec["seconds"] = time.perf_counter() - t0
        aligned[f"{rho:g}"] = rec
        log.info("aligned RoPeSLR %g: %s", rho, rec)
        sparse[rho] = variants[f"RoPeSLR {rho:g}"] = m
    for bits, cfg in q_cfg.items():
        log.info("Q-ARVD %s", bits)
        variants[f"Q-ARVD {bits}"] = quantized(fp, cfg, args.calib)
    rho = args.densities[0]
    for bits, cfg in q_cfg.items():
        log.info("RoPeSLR %g + Q-ARVD %s", rho, bits)
        variants[f"RoPeSLR {rho:g} + Q-ARVD {bits}"] = quantized(sparse[rho], cfg, args.calib)
    return variants, aligned


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _run(model, dtype, labels, noise):
    """A KV-cached rollout with the unquantized parts in ``dtype`` (autocast; fp32: none)."""
    on = dtype != torch.float32
    with torch.autocast("cpu", dtype=dtype, enabled=on):
        return generate(model, labels, noise).float()


# ----------------------------------------------------------------------------- measuring
def timings(variants: dict, dtypes: list[torch.dtype], repeats: int) -> dict:
    """Median seconds of one rollout per variant and dtype, interleaved over ``repeats`` rounds
    (every variant and dtype once per round)."""
    labels, noise = calibration_set(1, 7, variants["FP dense"].config)
    runs = [(name, dt) for name in variants for dt in dtypes]
    for name, dt in runs:  # warm-up (buffers, oneDNN primitives)
        _run(variants[name], dt, labels, noise)
    times: dict = {run: [] for run in runs}
    for _ in range(repeats):
        for name, dt in runs:
            t0 = time.perf_counter()
            _run(variants[name], dt, labels, noise)
            times[(name, dt)].append(time.perf_counter() - t0)
    out: dict = {name: {} for name in variants}
    for (name, dt), v in times.items():
        out[name][_name(dt)] = {"median_s": statistics.median(v), "all_s": v}
    return out


def quality(variants: dict, dtype: torch.dtype, classifier, n: int) -> dict:
    """Each variant (unquantized parts in ``dtype``) against the fp32 dense rollout with identical
    noise, plus the evaluation network's digit accuracy (overall and per frame index)."""
    fp = variants["FP dense"]
    labels, noise = calibration_set(n, 100, fp.config)
    ref = generate(fp, labels, noise)
    out = {}
    for name, m in variants.items():
        lat = _run(m, dtype, labels, noise)
        r = compare_rollouts(ref, lat, labels, fp.config, classifier)
        out[name] = r
        log.info("%s: video MSE %.3g, digit acc %.3f", name, r["video_mse"], r["digit_acc"])
    return out


# ----------------------------------------------------------------------------- report
def markdown(res: dict) -> str:
    dts = res["dtypes"]
    fast = res["dtype"]
    head = " | ".join(f"rollout s ({d}) | x vs FP dense {d}" for d in dts)
    lines = [
        "# Composed stack: RoPeSLR x Q-ARVD on `moving-digits-causal`",
        "",
        f"Machine: {machine_line(res['machine'])}; load {res['loadavg']}.",
        f"Fast dtype: {fast} (`diffkit.core.machine.fast_dtype`; autocast for every unquantized "
        f"part, fp32 timed too); {res['threads']} threads; KV-cached rollout of 1 video "
        f"(guidance as the model samples), median of {res['repeats']} interleaved repeats; "
        f"quality on {res['videos']} videos in {fast}, against the fp32 dense rollout with "
        "identical noise.",
        f"RoPeSLR: blocks of {res['block']} tokens (4x4 tiles inside a frame), gated merge, "
        f"applied before Q-ARVD (calibrated through it); stage-1 alignment: {_align_text(res)}.",
        f"Q-ARVD: AdaRound {res['qarvd_iters']} iterations per layer, {res['calib']} calibration "
        "rollouts, S1 + S2; int8 kernel (oneDNN).",
        "",
        f"| variant | {head} | video MSE | last-chunk MSE | PSNR dB | Frechet (FP-ref) "
        "| digit acc | agree with FP |",
        "|---|" + "---:|" * (2 * len(dts) + 6),
    ]
    base = res["timing"]["FP dense"]
    nan = float("nan")
    for name, t in res["timing"].items():
        q = res["quality"].get(name, {})
        psnr = statistics.mean(q["chunk_psnr"]) if q.get("chunk_psnr") else nan
        speed = " | ".join(
            f"{t[d]['median_s']:.3f} | {base[d]['median_s'] / t[d]['median_s']:.2f}x" for d in dts
        )
        lines.append(
            f"| {name} | {speed} | {q.get('video_mse', nan):.3g} | "
            f"{q.get('final_chunk_mse', nan):.3g} | {psnr:.1f} | "
            f"{q.get('frechet_fp_ref', nan):.3g} | {q.get('digit_acc', nan):.3f} | "
            f"{q.get('agree_with_fp', nan):.3f} |"
        )
    lines += ["", f"Per-frame digit accuracy ({fast}; frame 0, 1, ...):", ""]
    for name, q in res["quality"].items():
        lines.append(f"- {name}: " + ", ".join(f"{a:.2f}" for a in q["digit_acc_per_frame"]))
    return "\n".join(lines) + "\n"


def _align_text(res: dict) -> str:
    parts = []
    for rho, a in res["align"].items():
        if not a.get("steps"):
            parts.append(f"density {rho}: none (initial parameters)")
        else:
            parts.append(
                f"density {rho}: {a['steps']} steps, per-layer relative MSE "
                f"{a['layer_rel_mse_first']:.3f} -> {a['layer_rel_mse_last']:.3f}"
            )
    return "; ".join(parts)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long smoke configuration")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.3])
    ap.add_argument("--block", type=int, default=16, help="RoPeSLR block (tokens, inside a frame)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--videos", type=int, default=20)
    ap.add_argument("--qarvd-iters", type=int, default=60)
    ap.add_argument("--calib", type=int, default=4)
    ap.add_argument("--align-steps", type=int, default=200)
    ap.add_argument("--align-lr", type=float, default=3e-3)
    ap.add_argument("--align-videos", type=int, default=16)
    ap.add_argument("--align-batch", type=int, default=4)
    ap.add_argument("--out", default=None, help="results stem (default compose / compose_quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.videos, args.qarvd_iters, args.calib = 2, 2, 2, 1
        args.align_steps, args.align_videos, args.align_batch = 2, 2, 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load0 = [round(v, 2) for v in os.getloadavg()]
    fp = models.load("moving-digits-causal").eval()
    classifier = models.load("digit-classifier").eval()
    variants, aligned = build_variants(fp, args)
    fast = fast_dtype("cpu")
    dtypes = [fast] if fast == torch.float32 else [fast, torch.float32]
    res = {
        "machine": machine_info(),
        "model": "moving-digits-causal",
        "model_config": fp.config,
        "dtype": _name(fast),
        "dtypes": [_name(d) for d in dtypes],
        "threads": args.threads,
        "repeats": args.repeats,
        "videos": args.videos,
        "block": args.block,
        "densities": args.densities,
        "qarvd_iters": args.qarvd_iters,
        "calib": args.calib,
        "align": aligned,
        "ropeslr_config": dataclasses.asdict(ropeslr_config(args.densities[0], args.block)),
        "quick": args.quick,
    }
    res["timing"] = timings(variants, dtypes, args.repeats)
    res["quality"] = quality(variants, fast, classifier, args.videos)
    res["loadavg"] = [load0, [round(v, 2) for v in os.getloadavg()]]
    stem = args.out or ("compose_quick" if args.quick else "compose")
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / f"{stem}.json", res)
    md = markdown(res)
    atomic_write_text(OUT / f"{stem}.md", md)
    print(md)


if __name__ == "__main__":
    main()
