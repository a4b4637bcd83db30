"""Tour section: Q-ARVD quantization of the causal video zoo model (FP vs W4A8 strips, per-chunk
error, bytes at rest, int8 GEMM and rollout speed)."""

from __future__ import annotations

import copy
import dataclasses
import statistics
import time

import torch

TITLE = "Quantize: Q-ARVD W4A8 on the causal video model"
ORDER = 60


def _quantized(fp, cfg, calib_n):
    from diffkit.quantize import quantize_
    from diffkit.quantize.targets import calibrate_causal

    m = copy.deepcopy(fp)
    quantize_(m, cfg)
    calibrate_causal(m, n=calib_n, seed=0)
    quantize_(m, dataclasses.replace(cfg, step="convert"))
    return m


def _median(fn, reps=3):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def build(section, ctx) -> None:
    import torch.nn.functional as F

    from diffkit import models
    from diffkit.models.causal_wan import decode_latents
    from diffkit.quantize import QARVDConfig, RTNConfig, kernels, packed_bytes, set_backend_
    from diffkit.quantize.targets import calibration_set, compare_rollouts, generate
    from diffkit.report import plot_lines, video_strip

    fp = models.load("moving-digits-causal")
    clf = models.load("digit-classifier")
    iters = 15 if ctx.fast else 60
    ctx.status("quantize: calibrating and converting")
    variants = {
        "RTN W4A8": _quantized(fp, RTNConfig(w_bits=4, a_bits=8), 2),
        "Q-ARVD W4A8": _quantized(
            fp, QARVDConfig(w_bits=4, a_bits=8, iters=iters, batch_rows=256), 2
        ),
    }
    labels, noise = calibration_set(4, 100 + ctx.seed, fp.config)
    ref = generate(fp, labels, noise)
    outs = {name: generate(m, labels, noise) for name, m in variants.items()}
    c = fp.config
    n_chunks, steps = c["num_frames"] // c["chunk_frames"], noise.shape[2]
    section.text(
        "Q-ARVD (arXiv 2605.21072) post-training quantization of `moving-digits-causal`, a tiny "
        f"Self-Forcing-style causal video DiT ({n_chunks} chunks of {c['chunk_frames']} frames, "
        f"{steps} denoising passes + a t = 0 KV-cache refresh per chunk, classifier-free guidance "
        f"{c.get('cfg_scale', 1.0):g}). Calibration rollouts tag every layer input with its "
        f"chunk; Q-ARVD here runs AdaRound for {iters} iterations per layer (the paper uses 2000), "
        "with S1 exponential chunk weights and S2 dual scales. Both quantized models run the real "
        f"int8 GEMM (backend `{variants['RTN W4A8'].quantize_info['backend']}`), weights nibble-packed."
    )
    strip = torch.cat([decode_latents(ref[:2], fp.config)]
                      + [decode_latents(o[:2], fp.config) for o in outs.values()])  # fmt: skip
    section.image(
        video_strip(strip, scale=2),
        "rows 1-2: FP rollout; 3-4: RTN W4A8; 5-6: Q-ARVD W4A8 (identical noise)",
    )
    metrics = {n: compare_rollouts(ref, o, labels, fp.config, clf) for n, o in outs.items()}
    acc = next(iter(metrics.values()))["digit_acc_fp"]
    if acc < 0.5:
        section.text(
            f"**Read the strips above as noise.** The shipped `moving-digits-causal` does not yet "
            f"generate its digits (the evaluation network reads its FP rollouts' labels at "
            f"{acc:.2f}; chance is 0.10). The errors below measure distance to the FP model's own "
            "rollout, not sample quality (open work)."
        )
    n_chunks = len(next(iter(metrics.values()))["chunk_mse"])
    section.figure(
        plot_lines(
            {n: (list(range(n_chunks)), m["chunk_mse"]) for n, m in metrics.items()},
            xlabel="chunk",
            ylabel="latent MSE vs FP",
            title="per-chunk error through the KV cache",
            logy=True,
            integer_x=True,
        ),
        "per-chunk latent MSE against the FP rollout with identical noise",
    )
    rows = []
    for name, m in metrics.items():
        b = packed_bytes(variants[name])
        rows.append(
            {
                "method": name,
                "video MSE": m["video_mse"],
                "last-chunk MSE": m["final_chunk_mse"],
                "Frechet (FP-ref)": m["frechet_fp_ref"],
                "digit accuracy": m["digit_acc"],
                "digit agreement with FP": m["agree_with_fp"],
                "bytes vs fp32": b["ratio"],
            }
        )
    section.table(rows, "quantized vs FP (4 videos; bytes = packed codes + scales + zero points)")
    section.text(
        f"The FP rollouts' per-frame digit accuracy (evaluation network) is {acc:.3f} on these 4 "
        "videos; `benchmarks/quantize.py` measures every method over 5 calibration seeds."
    )

    ctx.status("quantize: speed")
    q = variants["RTN W4A8"]
    backend = q.quantize_info["backend"]
    one_l, one_n = labels[:1], noise[:1]
    t_fp = _median(lambda: generate(fp, one_l, one_n))
    t_q = _median(lambda: generate(q, one_l, one_n))
    set_backend_(q, "simulate")
    t_sim = _median(lambda: generate(q, one_l, one_n))
    speed = [{"path": "fp32 rollout", "seconds": t_fp},
             {"path": f"int8 rollout ({backend})", "seconds": t_q},
             {"path": "fake-quant simulator rollout", "seconds": t_sim}]  # fmt: skip
    if kernels.onednn_available():
        M, K, N = (512, 1536, 1536) if ctx.fast else (1024, 1536, 1536)
        g = torch.Generator().manual_seed(0)
        x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g) * 0.02
        ws = w.abs().amax(1) / 127
        packed = kernels.prepack(torch.round(w / ws[:, None]).to(torch.int8), "onednn")
        xq = torch.randint(0, 128, (M, K), dtype=torch.uint8, generator=g)
        fp_t = _median(lambda: F.linear(x, w))
        i8_t = _median(lambda: kernels.int8_linear(xq, 0.01, 64, packed, ws, None, "onednn"))
        speed += [{"path": f"fp32 GEMM {M}x{K}x{N}", "seconds": fp_t},
                  {"path": f"int8 GEMM {M}x{K}x{N} (oneDNN)", "seconds": i8_t}]  # fmt: skip
    section.table(speed, "speed on this CPU (median of 3; machine shared, ratios indicative)")
    chunk_tokens = fp.tokens_per_frame * c["chunk_frames"]
    section.text(
        f"At the tiny model's sizes ({chunk_tokens} tokens per chunk, K = {c['dim']}-{c['ffn_dim']}) "
        f"per-call overheads dominate: the int8 rollout took {t_q / t_fp:.2f}x the fp32 time here. "
        "The int8 GEMM pays off at Wan-like shapes (see `benchmarks/results/quantize.md`)."
    )
