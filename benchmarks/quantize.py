"""Benchmark of diffkit.quantize (Q-ARVD) on the tiny causal zoo model and at Wan-like GEMM shapes.

Stages (results are rewritten to benchmarks/results/quantize.json after each one):
1. int8 GEMM (oneDNN ``qlinear_pointwise``) vs fp32 ``F.linear`` at M in {1024, 4680}, K = 1536,
   N in {1536, 8960}; interleaved repeats, medians, ratios.
2. S1 chunk sensitivities s_k on ``moving-digits-causal`` by the paper's protocol (quantize only
   chunk k, FP prefix reused), per seed; exponential fit.
3. Methods x bit widths: RTN, percentile, SmoothQuant, AdaRound (uniform), +S1 (measured s_k),
   +S2, +S1+S2, +S1+S2 with the reference-code quirk; per-chunk latent MSE / PSNR vs the FP rollout
   with identical noise, FP-referenced Frechet distance on the evaluation network's features,
   per-frame digit accuracy, packed bytes.
4. End-to-end rollout time: fp32 vs int8 kernel vs simulator.
5. ``kv``: int8 / int4 KV cache (:mod:`diffkit.quantize.kv_cache`, FP weights) vs the FP cache on a
   long rollout (10 chunks, 30 latent frames; the model extrapolates past its 12 training frames):
   cache bytes (and at a Wan2.1-1.3B block's shape), per-chunk MSE to the FP-cache rollout, and
   rollout time, interleaved.
6. ``wan``: a Wan-1.3B-shaped 2-block diffusers ``WanTransformer3DModel`` (hidden 1536, 12 heads,
   ffn 8960, text 512 x 4096), 2,048 tokens: fp32, the baseline dtype chosen at run time (bf16
   where the CPU has AMX / AVX512-BF16, else fp32), W8A8 and W4A8 (RTN; their unquantized parts
   in the baseline dtype), timed interleaved; output error vs fp32. Then the quantized models are
   saved and each is loaded in its own process from an ``init_empty_weights`` skeleton: peak RSS
   against packed bytes + unquantized tensors + the framework baseline (a process that builds
   only the skeleton).

Usage: ``python benchmarks/quantize.py [--quick] [--stages wan]``. CPU, one thread; the machine
load is recorded.
"""

# ruff: noqa: B023 -- timing lambdas are called immediately inside their loop iteration

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit import models
from diffkit.core.io import atomic_write_json, atomic_write_text
from diffkit.core.machine import machine_info, machine_line
from diffkit.models import causal_wan as cw
from diffkit.quantize import (
    AdaRoundConfig,
    KVCacheConfig,
    PercentileConfig,
    QARVDConfig,
    QuantizedKVCache,
    RTNConfig,
    SmoothQuantConfig,
    kernels,
    measure_chunk_sensitivity,
    only_chunks,
    packed_bytes,
    quantize_,
    quantize_kv_cache_,
    remove_kv_cache_quantization_,
    save_quantized,
    set_backend_,
)
from diffkit.quantize.targets import calibrate_causal, calibration_set, compare_rollouts, generate

OUT = Path(__file__).parent / "results"
log = logging.getLogger("bench.quantize")


def _time(fn, reps):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def gemm_bench(shapes, reps):
    rows = []
    g = torch.Generator().manual_seed(0)
    for M, K, N in shapes:
        x = torch.randn(M, K, generator=g)
        w = torch.randn(N, K, generator=g) * 0.02
        b = torch.zeros(N)
        ws = (w.abs().amax(1) / 127).float()
        wq = torch.round(w / ws[:, None]).clamp(-127, 127).to(torch.int8)
        packed = kernels.prepack(wq, "onednn")
        xs = float((x.max() - x.min()) / 255)
        xz = int(round(-float(x.min()) / xs))

        def quant_in():
            return torch.clamp(torch.round(x / xs) + xz, 0, 255).to(torch.uint8)

        xq = quant_in()
        fp_t, k_t, kq_t = [], [], []
        for _ in range(reps):  # interleave so load changes hit every path alike
            fp_t += _time(lambda: F.linear(x, w, b), 1)
            k_t += _time(lambda: kernels.int8_linear(xq, xs, xz, packed, ws, b, "onednn"), 1)
            kq_t += _time(
                lambda: kernels.int8_linear(quant_in(), xs, xz, packed, ws, b, "onednn"), 1
            )
        y_fp = F.linear(x, w, b)
        y_k = kernels.int8_linear(xq, xs, xz, packed, ws, b, "onednn")
        rows.append(
            {
                "M": M, "K": K, "N": N,
                "fp32_ms": 1e3 * statistics.median(fp_t),
                "int8_kernel_ms": 1e3 * statistics.median(k_t),
                "int8_with_act_quant_ms": 1e3 * statistics.median(kq_t),
                "speedup_kernel": statistics.median(fp_t) / statistics.median(k_t),
                "speedup_with_act_quant": statistics.median(fp_t) / statistics.median(kq_t),
                "rel_err_vs_fp32": float((y_k - y_fp).norm() / y_fp.norm()),
                "reps": reps,
            }
        )  # fmt: skip
        log.info("gemm %s", rows[-1])
    return rows


# ----------------------------------------------------------------------------- Wan-shaped model
WAN_2BLOCK = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=2,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def baseline_dtype() -> torch.dtype:
    """bf16 where the CPU multiplies bf16 natively (AMX / AVX512-BF16) and torch's kernels may use
    it (not under ``ATEN_CPU_CAPABILITY=avx2``, the AVX2 emulation), else fp32."""
    native = cpu_flags() & {"amx_bf16", "avx512_bf16"}
    emulated = torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT")
    return torch.bfloat16 if native and not emulated else torch.float32


AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_ENABLE_INSTRUCTIONS": "AVX2",
}


def _wan_inputs(tokens: int, seed: int, text_tokens: int = 512):
    g = torch.Generator().manual_seed(seed)
    side = int(round((tokens / 2) ** 0.5)) * 2  # 2 frames of (side/2)^2 patches
    lat = torch.randn(1, 16, 2, side, side, generator=g)
    text = torch.randn(1, text_tokens, 4096, generator=g)
    return lat, text, torch.tensor([500])


def _wan_forward(model, inputs, dtype):
    lat, text, t = inputs
    with torch.no_grad():
        return model(lat.to(dtype), t, text.to(dtype), return_dict=False)[0]


def wan_bench(tokens: int, reps: int, workdir: Path, rss: bool = True) -> dict:
    """fp32, the baseline dtype, and W8A8 / W4A8 (RTN) in the baseline dtype, timed interleaved.
    The quantized models run in their fast configuration (fused MLPs, compiled activation
    quantizer) and, as ablations, with the eager quantizer and (W8A8) without MLP fusion."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    fp = WanTransformer3DModel(**WAN_2BLOCK).eval()
    base = fp.config
    inputs, calib = _wan_inputs(tokens, 0), _wan_inputs(tokens, 1)
    dtype = baseline_dtype()
    ref = _wan_forward(fp, inputs, torch.float32)
    variants = {"fp32": (fp, torch.float32, None)}
    if dtype != torch.float32:
        variants[f"{str(dtype)[6:]} (baseline)"] = (copy.deepcopy(fp).to(dtype), dtype, None)
    saved = {}
    for name, cfg in {"W8A8": RTNConfig(w_bits=8, a_bits=8), "W4A8": RTNConfig(w_bits=4)}.items():
        q = copy.deepcopy(fp)
        quantize_(q, cfg)
        _wan_forward(q, calib, torch.float32)  # calibration on other noise / text
        quantize_(q, dataclasses.replace(cfg, step="convert"))
        d = workdir / name
        save_quantized(q, d, source="WanTransformer3DModel 2-block, random init")
        saved[name] = {"dir": str(d), **packed_bytes(q)}
        q = q.to(dtype)
        variants[name] = (q, dtype, (True, True))  # (compiled act. quant, fused MLPs)
        variants[f"{name}, eager act. quant"] = (q, dtype, (False, True))
        if name == "W8A8":
            variants[f"{name}, MLPs not fused"] = (q, dtype, (True, False))

    def run(m, dt, opts):
        if opts is not None:
            set_backend_(m, "auto", compile_act_quant=opts[0], fuse_mlps=opts[1])
        return _wan_forward(m, inputs, dt)

    for m, dt, opts in variants.values():  # warm-up: prepack, compile the act. quantizer
        run(m, dt, opts)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):  # interleaved: load changes hit every model alike
        for k, (m, dt, opts) in variants.items():
            if opts is not None:
                set_backend_(m, "auto", compile_act_quant=opts[0], fuse_mlps=opts[1])
            times[k] += _time(lambda: _wan_forward(m, inputs, dt), 1)
    med = {k: statistics.median(v) for k, v in times.items()}
    base_key = f"{str(dtype)[6:]} (baseline)" if dtype != torch.float32 else "fp32"
    rows = {}
    for k, (m, dt, opts) in variants.items():
        out = run(m, dt, opts).float()
        rows[k] = {
            "seconds": med[k], "all_seconds": times[k],
            "speedup_vs_fp32": med["fp32"] / med[k], "speedup_vs_baseline": med[base_key] / med[k],
            "rel_err_vs_fp32": float((out - ref).norm() / ref.norm()),
        }  # fmt: skip
    act_bits = next(m for m, _, o in variants.values() if o).quantize_info["act_bits_effective"]
    del variants
    return {
        "shape": {**WAN_2BLOCK, "tokens": tokens, "text_tokens": 512},
        "baseline_dtype": str(dtype),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "emulation_env": {k: os.environ[k] for k in AVX2_ENV if k in os.environ},
        "act_bits_effective": act_bits,
        "cpu_flags": sorted(
            cpu_flags()
            & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}
        ),  # fmt: skip
        "reps": reps,
        "models": rows,
        "load_rss": load_rss(base, saved, workdir) if rss else {},
    }


def wan_avx2_emulated(tokens: int, reps: int, workdir: Path) -> dict:
    """:func:`wan_bench` in a child process whose torch, oneDNN and MKL are held to AVX2."""
    import subprocess

    out = workdir / "wan-avx2.json"
    cmd = [sys.executable, __file__, "--wan-child", str(out), str(tokens), str(reps)]
    subprocess.run(cmd, check=True, env={**os.environ, **AVX2_ENV, "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def _status_bytes(key: str) -> int:
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(x.split()[1]) * 1024 for x in lines if x.startswith(key + ":"))


def _rss_child(mode: str, directory: str, out: str) -> None:
    """Run in a fresh process: build the skeleton, note its RSS (the framework baseline), reset
    the high-water mark (/proc/self/clear_refs), load, and record the peak RSS of the load."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from diffkit.quantize import load_quantized

    with init_empty_weights():
        m = WanTransformer3DModel.from_config(json.loads(Path(directory, "base.json").read_text()))
    baseline = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    load_quantized(m, directory, backend="simulate")
    for t in [*m.parameters(), *m.buffers()]:  # touch every byte (lazily mapped pages count too)
        t.view(-1)[:: max(1, 4096 // t.element_size())].sum() if t.numel() else None
    peak = _status_bytes("VmHWM")
    Path(out).write_text(json.dumps({"baseline": baseline, "peak": peak}))


def load_rss(base_config, saved: dict, workdir: Path) -> dict:
    import subprocess

    res = {}
    for name, info in saved.items():
        Path(info["dir"], "base.json").write_text(json.dumps(dict(base_config)))
        out = workdir / f"rss-{name}.json"
        subprocess.run(
            [sys.executable, __file__, "--rss-child", "load", info["dir"], str(out)], check=True
        )
        got = json.loads(out.read_text())
        rest = Path(info["dir"], "rest.safetensors").stat().st_size
        budget = info["quantized_bytes"] + rest + got["baseline"]
        res[name] = {
            "peak_rss_bytes": got["peak"], "framework_baseline_bytes": got["baseline"],
            "packed_bytes": info["quantized_bytes"], "unquantized_bytes": rest,
            "budget_bytes": budget, "ratio_to_budget": got["peak"] / budget,
        }  # fmt: skip
    return res


def quantized_copy(fp_model, cfg, calib_n, seed, keep_fp=False):
    m = copy.deepcopy(fp_model)
    quantize_(m, dataclasses.replace(cfg, step="prepare", seed=seed))
    calibrate_causal(m, n=calib_n, seed=seed)
    t0 = time.perf_counter()
    quantize_(m, dataclasses.replace(cfg, step="convert", seed=seed), keep_fp=keep_fp)
    return m, time.perf_counter() - t0


def sensitivity(fp_model, bits, n_videos, calib_n, seed):
    cfg = PercentileConfig(w_bits=bits[0], a_bits=bits[1])
    q, _ = quantized_copy(fp_model, cfg, calib_n, seed, keep_fp=True)
    labels, noise = calibration_set(n_videos, 1000 + seed, fp_model.config)

    def run(only, start_chunk=0, prefix=None):
        with only_chunks(only):
            return generate(q, labels, noise, start_chunk=start_chunk, prefix=prefix,
                            chunk_context=_chunk_ctx)  # fmt: skip

    n_chunks = fp_model.config["num_frames"] // fp_model.config["chunk_frames"]
    return measure_chunk_sensitivity(run, n_chunks)


def _chunk_ctx(k):
    from diffkit.quantize import chunk

    return chunk(k)


def methods(w_bits, a_bits, iters, s_measured):
    common = dict(w_bits=w_bits, a_bits=a_bits)
    ada = dict(common, iters=iters, batch_rows=256)
    given = dict(chunk_weighting="given", chunk_sensitivities=tuple(s_measured))
    return {
        "RTN": RTNConfig(**common),
        "Percentile": PercentileConfig(**common),
        "SmoothQuant": SmoothQuantConfig(**common),
        "AdaRound (uniform)": AdaRoundConfig(**ada),
        "+S1": QARVDConfig(**ada, **given, s2=False),
        "+S2": QARVDConfig(**ada, chunk_weighting="uniform", s2=True),
        "+S1+S2 (Q-ARVD)": QARVDConfig(**ada, **given, s2=True),
        "+S1+S2 quirk": QARVDConfig(**ada, **given, s2=True, s1_off_in_s2_layers=True),
    }


KV_CONFIGS = {
    "int8 per-token": KVCacheConfig(bits=8),
    "int8 K per-channel, V per-token": KVCacheConfig(bits=8, granularity="channel",
                                                      value_granularity="token"),
    "int4 per-token": KVCacheConfig(bits=4),
    "int4 per-channel": KVCacheConfig(bits=4, granularity="channel"),
    "int4 K per-channel, V per-token": KVCacheConfig(bits=4, granularity="channel",
                                                      value_granularity="token"),
    "int4 K per-channel, V per-token, asym.": KVCacheConfig(
        bits=4, granularity="channel", value_granularity="token", symmetric=False),
}  # fmt: skip

COMBO_KV = "int4 K per-channel, V per-token"


def _fill_cache(cache, model, latents, labels):
    """Write a rollout's clean chunks into ``cache`` as rollout's t = 0 refresh passes do."""
    ch = model.config["chunk_frames"]
    for k in range(latents.shape[1] // ch):
        x = latents[:, k * ch : (k + 1) * ch]
        model(x, torch.zeros(x.shape[0], ch), labels, cache=cache, write_cache=True)
    return cache


@torch.no_grad()
def wan_attention_time(chunk, reps, past_chunks=2):
    """Read + attend at a Wan2.1-1.3B block's shape: one latent frame of queries (1,560 tokens,
    12 heads x 128) over ``past_chunks`` cached 3-frame chunks, FP cache vs quantized (interleaved)."""
    q = chunk[:, :, :1560]
    names = ["fp32", "int8 per-token", "int4 per-channel", "int4 K per-channel, V per-token"]
    stores = {}
    for name in names:
        store = cw.KVCache.empty(1) if name == "fp32" else QuantizedKVCache(1, KV_CONFIGS[name])
        for _ in range(past_chunks):
            store.append(0, chunk, chunk)
        stores[name] = store
    t = {name: [] for name in names}
    for _ in range(reps):
        for name in names:
            t[name] += _time(lambda: F.scaled_dot_product_attention(q, *stores[name].get(0)), 1)
    med = {k: statistics.median(v) for k, v in t.items()}
    low = {k: min(v) for k, v in t.items()}
    return {"query_tokens": q.shape[2], "cached_tokens": past_chunks * chunk.shape[2],
            "reps": reps, "seconds": med, "time_ratio": {k: v / med["fp32"] for k, v in med.items()},
            "time_ratio_min": {k: v / low["fp32"] for k, v in low.items()}}  # fmt: skip


@torch.no_grad()
def kv_bench(fp_model, n_videos, seeds, n_chunks, reps):
    """Quantized KV cache vs the FP cache: bytes, per-chunk error, rollout time (interleaved)."""
    cfg = {**fp_model.config, "num_frames": n_chunks * fp_model.config["chunk_frames"]}
    model = copy.deepcopy(fp_model)
    err = {name: [] for name in KV_CONFIGS}
    combo = {"W8A8 RTN weights, fp32 cache": [], "W8A8 RTN weights + " + COMBO_KV: []}
    w8, _ = quantized_copy(fp_model, RTNConfig(w_bits=8, a_bits=8), 4, 0)
    fp_power = []
    for seed in seeds:
        labels, noise = calibration_set(n_videos, 300 + seed, cfg)
        remove_kv_cache_quantization_(model)
        fp = generate(model, labels, noise)
        fp_power.append(float(fp.double().pow(2).mean()))
        for name, kc in KV_CONFIGS.items():
            quantize_kv_cache_(model, kc)
            q = generate(model, labels, noise)
            d = (q.double() - fp.double()).pow(2)
            ch = cfg["chunk_frames"]
            err[name].append([float(d[:, k * ch : (k + 1) * ch].mean()) for k in range(n_chunks)])
            log.info("kv %s seed %d: rollout mse %.3e", name, seed, float(d.mean()))
        for name, kc in zip(combo, (None, KV_CONFIGS[COMBO_KV]), strict=True):
            if kc is None:
                remove_kv_cache_quantization_(w8)
            else:
                quantize_kv_cache_(w8, kc)
            d = (generate(w8, labels, noise).double() - fp.double()).pow(2)
            ch = cfg["chunk_frames"]
            combo[name].append([float(d[:, k * ch : (k + 1) * ch].mean()) for k in range(n_chunks)])
    # bytes of the cache after the whole long video (batch 1), and of one 3-frame chunk of a
    # Wan2.1-1.3B-shaped block (12 heads x 128 dims, 1,560 tokens per latent frame); chunks are
    # quantized independently, so the ratio holds for any number of chunks
    labels1, noise1 = calibration_set(1, 0, cfg)
    remove_kv_cache_quantization_(model)
    fp1 = generate(model, labels1, noise1)
    nbytes = {"fp32": _fill_cache(model.new_cache(), model, fp1, labels1).nbytes()}
    g = torch.Generator().manual_seed(0)
    wan_bytes = {}
    wan_chunk = torch.randn(1, 12, 3 * 1560, 128, generator=g)
    for name, kc in {"fp32": None, **KV_CONFIGS}.items():
        if kc is not None:
            nbytes[name] = _fill_cache(QuantizedKVCache(len(model.blocks), kc), model, fp1,
                                       labels1).nbytes()  # fmt: skip
        store = cw.KVCache.empty(1) if kc is None else QuantizedKVCache(1, kc)
        store.append(0, wan_chunk, wan_chunk)
        wan_bytes[name] = store.nbytes()
    wan_attn = wan_attention_time(wan_chunk, reps)
    del wan_chunk
    # rollout time, interleaved FP cache / each quantized cache, batch 1 and n_videos
    times, mins = {}, {}
    for batch in (1, n_videos):
        labels, noise = calibration_set(batch, 7, cfg)
        t = {name: [] for name in ("fp32", *KV_CONFIGS)}
        for _ in range(reps):
            for name in t:
                if name == "fp32":
                    remove_kv_cache_quantization_(model)
                else:
                    quantize_kv_cache_(model, KV_CONFIGS[name])
                t[name] += _time(lambda: generate(model, labels, noise), 1)
        times[str(batch)] = {k: statistics.median(v) for k, v in t.items()}
        mins[str(batch)] = {k: min(v) for k, v in t.items()}
    fp_pow = statistics.mean(fp_power)
    with_weights = {
        name: [statistics.mean(e[k] for e in v) / fp_pow for k in range(n_chunks)]
        for name, v in combo.items()
    }
    rows = {}
    for name in KV_CONFIGS:
        per_chunk = [statistics.mean(e[k] for e in err[name]) for k in range(n_chunks)]
        rows[name] = {
            "config": dataclasses.asdict(KV_CONFIGS[name]),
            "chunk_mse": per_chunk,
            "chunk_rel_mse": [v / fp_pow for v in per_chunk],
            "video_mse_per_seed": [statistics.mean(e) for e in err[name]],
            "bytes": nbytes[name],
            "compression": nbytes["fp32"] / nbytes[name],
            "wan_shape_compression": wan_bytes["fp32"] / wan_bytes[name],
            "time_ratio": {b: times[b][name] / times[b]["fp32"] for b in times},
            "time_ratio_min": {b: mins[b][name] / mins[b]["fp32"] for b in mins},
        }
    return {
        "chunks": n_chunks,
        "frames": cfg["num_frames"],
        "videos_per_seed": n_videos,
        "seeds": len(seeds),
        "fp_latent_power": fp_pow,
        "bytes_fp32": nbytes["fp32"],
        "wan_shape_bytes_fp32": wan_bytes["fp32"],
        "seconds": times,
        "seconds_min": mins,
        "timing_reps": reps,
        "rows": rows,
        "wan_attention": wan_attn,
        "with_weight_quantization": with_weights,
        "machine": machine_info(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }


def write(results, plot=True):
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "quantize.json", results)
    atomic_write_text(OUT / "quantize.md", markdown(results))
    if plot:
        try:
            make_plot(results)
        except Exception as e:  # plotting must not lose the numbers
            log.warning("plot failed: %s", e)


def _agg(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


# two-sided 97.5 % quantiles of Student's t with n - 1 degrees of freedom
_T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}


def ci95(vals) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval over seeds (0 for one seed)."""
    vals = [v for v in vals if v is not None]
    mean = statistics.mean(vals)
    if len(vals) < 2:
        return mean, 0.0
    t = _T975.get(len(vals), 1.96)
    return mean, t * statistics.stdev(vals) / len(vals) ** 0.5


_ORDER = ["RTN", "Percentile", "SmoothQuant", "AdaRound (uniform)", "+S1", "+S2",
          "+S1+S2 (Q-ARVD)", "+S1+S2 quirk"]  # fmt: skip


def markdown(r):
    lines = [f"# diffkit.quantize benchmark ({r['device']}, load {r['loadavg']})", "",
             f"Machine: {machine_line(r['machine']) if 'machine' in r else 'CPU kind not recorded'}.",
             ""]  # fmt: skip
    if r.get("carried_over"):
        lines += ["Sections kept from earlier runs (not re-run here): "
                  + "; ".join(r["carried_over"]) + ".", ""]  # fmt: skip
    if r.get("gemm"):
        lines += ["## int8 GEMM (oneDNN) vs fp32 F.linear, 1 thread", "",
                  "| M | K | N | fp32 ms | int8 ms | speed-up | with act. quant | rel. err |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for g in r["gemm"]:
            lines.append(
                f"| {g['M']} | {g['K']} | {g['N']} | {g['fp32_ms']:.1f} | {g['int8_kernel_ms']:.1f} "
                f"| {g['speedup_kernel']:.2f}x | {g['speedup_with_act_quant']:.2f}x | {g['rel_err_vs_fp32']:.1e} |"
            )
        lines.append("")
    if r.get("sensitivity"):
        s = r["sensitivity"]
        lines += [f"## S1 chunk sensitivities s_k ({s['bits']}, {len(s['per_seed'])} seeds)", "",
                  "| chunk | " + " | ".join(str(k) for k in range(len(s["mean"]))) + " |",
                  "|---|" + "---|" * len(s["mean"]),
                  "| s_k mean | " + " | ".join(f"{v:.3f}" for v in s["mean"]) + " |",
                  "| s_k std | " + " | ".join(f"{v:.3f}" for v in s["std"]) + " |", "",
                  f"Exponential fit of the mean: a = {s['fit'][0]:.3f}, r = {s['fit'][1]:.3f}.", ""]  # fmt: skip
    for bits, rows in r.get("methods", {}).items():
        lines += [f"## {bits}: quantized vs FP rollout (identical noise), mean ± 95 % CI over seeds",
                  "",
                  "| method | video MSE | chunk-0 MSE | last-chunk MSE | last / chunk-0 | PSNR dB "
                  "| Frechet (FP-ref) | digit acc | acc - FP | bytes ratio | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, m in sorted(rows.items(), key=lambda kv: _ORDER.index(kv[0])):
            vm, vh = ci95(m["video_mse"])
            c0, c0h = ci95(m["chunk0_mse"])
            cl, clh = ci95(m["last_chunk_mse"])
            ratio = ci95([b / a for a, b in zip(m["chunk0_mse"], m["last_chunk_mse"])])
            fr, frh = ci95(m["frechet"])
            acc, acch = ci95(m["digit_acc"])
            gap = ci95([a - f for a, f in zip(m["digit_acc"], m["digit_acc_fp"])])
            lines.append(
                f"| {name} | {vm:.3e} ± {vh:.1e} | {c0:.3e} ± {c0h:.1e} | {cl:.3e} ± {clh:.1e} | "
                f"{ratio[0]:.2f} ± {ratio[1]:.2f} | {ci95(m['psnr'])[0]:.2f} | {fr:.3f} ± {frh:.3f} | "
                f"{acc:.3f} ± {acch:.3f} | {gap[0]:+.3f} ± {gap[1]:.3f} | {m['bytes_ratio']:.3f} | "
                f"{len(m['video_mse'])} |"
            )
        fp_acc = ci95(next(iter(rows.values()))["digit_acc_fp"])
        lines += ["", f"FP model's per-frame digit accuracy on the same rollouts: "
                  f"{fp_acc[0]:.3f} ± {fp_acc[1]:.3f}.", ""]  # fmt: skip
    if r.get("determinism"):
        d = r["determinism"]
        lines += [f"Determinism: {d['method']} converted twice with seed {d['seed']}: video MSE "
                  f"{d['video_mse'][0]:.6e} and {d['video_mse'][1]:.6e} "
                  f"({'identical' if d['identical'] else 'DIFFERENT'}).", ""]  # fmt: skip
    if r.get("rollout_time"):
        lines += ["## End-to-end rollout (W8A8 RTN, the zoo model, 1 thread)", "",
                  "| batch | fp32 s | int8 kernel s | simulator s |", "|---|---|---|---|"]  # fmt: skip
        for t in r["rollout_time"]:
            lines.append(
                f"| {t['batch']} | {t['fp32']:.3f} | {t['kernel']:.3f} | {t['simulate']:.3f} |"
            )
        lines.append("")
    if r.get("kv_cache") and "rows" in r["kv_cache"] and isinstance(r["kv_cache"]["rows"], dict):
        kv = r["kv_cache"]
        b1, bn = sorted(kv["seconds"], key=int)[0], sorted(kv["seconds"], key=int)[-1]
        lines += [f"## Quantized KV cache (FP weights) vs the FP cache, {kv['chunks']}-chunk rollout "
                  f"({kv['frames']} latent frames; {kv['videos_per_seed']} videos x {kv['seeds']} seeds)", "",
                  "Errors are distances to the FP-cache rollout with identical noise, relative "
                  "to the FP latents' mean square "
                  f"({kv['fp_latent_power']:.3f}). Times measured while the machine was shared "
                  f"(load {kv['loadavg']}), interleaved; fp32 cache: {kv['seconds'][b1]['fp32']:.2f} s "
                  f"at batch {b1}, {kv['seconds'][bn]['fp32']:.2f} s at batch {bn}.", "",
                  f"| KV cache | bytes (video, batch 1) | compression | Wan2.1-1.3B-shaped compression "
                  f"| rel. MSE chunk 1 | chunk {kv['chunks'] // 2} | last chunk | time vs fp32 cache, batch {b1} / {bn}: median (min) of {kv.get('timing_reps')} |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| fp32 | {kv['bytes_fp32']} | 1.00x | 1.00x | 0 | 0 | 0 | 1.00 / 1.00 |"]  # fmt: skip
        for name, m in kv["rows"].items():
            e = m["chunk_rel_mse"]
            lines.append(
                f"| {name} | {m['bytes']} | {m['compression']:.2f}x | "
                f"{m['wan_shape_compression']:.2f}x | {e[1]:.2e} | {e[len(e) // 2]:.2e} | "
                f"{e[-1]:.2e} | {m['time_ratio'][b1]:.2f} ({m['time_ratio_min'][b1]:.2f}) / "
                f"{m['time_ratio'][bn]:.2f} ({m['time_ratio_min'][bn]:.2f}) |"
            )
        ww = kv.get("with_weight_quantization")
        if ww:
            lines += ["", "Composed with weight quantization (W8A8 RTN, 4 calibration rollouts), "
                      "relative MSE to the FP rollout, chunk 1 / middle / last: " + "; ".join(
                          f"{k} {e[1]:.2e} / {e[len(e) // 2]:.2e} / {e[-1]:.2e}"
                          for k, e in ww.items()) + "."]  # fmt: skip
        wa = kv.get("wan_attention")
        if wa:
            lines += ["", f"Wan2.1-1.3B-shaped attention read (12 heads x 128, {wa['query_tokens']} "
                      f"query tokens over {wa['cached_tokens']} cached tokens, dequantize + SDPA, "
                      f"fp32 cache {wa['seconds']['fp32']:.2f} s; same load caveat), time vs the fp32 "
                      f"cache, median (min) of {wa['reps']}: " + ", ".join(
                          f"{k} {v:.2f}x ({wa['time_ratio_min'][k]:.2f}x)"
                          for k, v in wa["time_ratio"].items() if k != "fp32") + "."]  # fmt: skip
        lines.append("")
    for key in ("wan", "wan_avx2_emulated"):
        if not r.get(key):
            continue
        w = r[key]
        where = (f"CPU flags {', '.join(w['cpu_flags'])}" if key == "wan" else
                 "**AVX2 emulated on an AMX machine**: " + ", ".join(
                     f"{k}={v}" for k, v in w.get("emulation_env", {}).items())
                 + f", torch capability {w.get('cpu_capability')}")  # fmt: skip
        lines += [f"## Wan-1.3B-shaped 2-block transformer, {w['shape']['tokens']} tokens, 1 thread "
                  f"(baseline dtype {w['baseline_dtype']}; {where}; activation codes "
                  f"{w.get('act_bits_effective', 8)} bit; load {w.get('loadavg')}, measured while "
                  "the machine was shared)", "",
                  "| model | s (median) | vs fp32 | vs baseline | rel. err vs fp32 |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for k, m in w["models"].items():
            lines.append(
                f"| {k} | {m['seconds']:.3f} | {m['speedup_vs_fp32']:.2f}x | "
                f"{m['speedup_vs_baseline']:.2f}x | {m['rel_err_vs_fp32']:.2e} |"
            )
        rss = w.get("load_rss", {})
        if rss:
            lines += ["", "Peak RSS when loading into an `init_empty_weights` skeleton (own process "
                      "each; budget = packed + unquantized + the process's RSS before loading):",
                      "", "| model | peak MiB | baseline MiB | packed MiB | unquantized MiB | budget MiB | peak / budget |",
                      "|---|---|---|---|---|---|---|"]  # fmt: skip
            for k in ("W8A8", "W4A8"):
                if k in rss:
                    v = rss[k]
                    lines.append(
                        f"| {k} | {v['peak_rss_bytes'] / 2**20:.0f} "
                        f"| {v['framework_baseline_bytes'] / 2**20:.0f} | {v['packed_bytes'] / 2**20:.0f} "
                        f"| {v['unquantized_bytes'] / 2**20:.0f} | {v['budget_bytes'] / 2**20:.0f} "
                        f"| {v['ratio_to_budget']:.3f} |"
                    )
        lines.append("")
    lines.append(f"Reduced configuration: {r['reduced']}")
    return "\n".join(lines) + "\n"


def make_plot(r):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), dpi=110)
    if r.get("sensitivity"):
        s = r["sensitivity"]
        axes[0].bar(range(len(s["mean"])), s["mean"], yerr=s["std"], color="tab:blue")
        axes[0].set(title=f"S1 sensitivity s_k ({s['bits']})", xlabel="chunk k", ylabel="s_k")
    rows = r.get("methods", {}).get("W4A8", {})
    for name, m in sorted(rows.items(), key=lambda kv: _ORDER.index(kv[0])):
        curves = torch.tensor(m["chunk_mse"]).mean(0).tolist()
        axes[1].plot(range(len(curves)), curves, marker="o", ms=3, label=name)
    axes[1].set(title="W4A8 per-chunk latent MSE vs FP", xlabel="chunk", ylabel="MSE", yscale="log")
    axes[1].legend(fontsize=6)
    if r.get("gemm"):
        labels = [f"{g['M']}x{g['K']}x{g['N']}" for g in r["gemm"]]
        axes[2].bar(labels, [g["speedup_kernel"] for g in r["gemm"]], label="kernel")
        axes[2].bar(labels, [g["speedup_with_act_quant"] for g in r["gemm"]], alpha=0.6,
                    label="+act quant")  # fmt: skip
        axes[2].axhline(1.0, color="k", lw=0.8)
        axes[2].set(title="int8 GEMM speed-up vs fp32", ylabel="x")
        axes[2].tick_params(axis="x", labelsize=7)
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(OUT / "quantize.png")
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    ap.add_argument("--seeds", type=int, default=5, help="calibration seeds per method and width")
    ap.add_argument("--iters", type=int, default=80, help="AdaRound iterations per layer")
    ap.add_argument("--videos", type=int, default=20, help="evaluation rollouts per seed")
    ap.add_argument(
        "--bits",
        default="W8A8,W4A8",
        help="comma list of widths for the methods stage (W8A8, W4A8, W4A6); all seeds each",
    )
    ap.add_argument(
        "--methods",
        default="RTN,SmoothQuant,AdaRound (uniform),+S1,+S2,+S1+S2 (Q-ARVD)",
        help="comma list of methods (also Percentile, '+S1+S2 quirk'); 'all' for every one",
    )
    ap.add_argument(
        "--stages",
        default="gemm,sens,methods,time,kv,wan,wan_avx2",
        help="comma list; 'render' redraws only",
    )
    ap.add_argument("--wan-tokens", type=int, default=2048)
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--wan-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        _rss_child(*args.rss_child)
        return
    if args.wan_child:  # the AVX2-emulated Wan timing (wan_avx2_emulated's child process)
        torch.set_num_threads(1)
        out, tokens, reps = args.wan_child
        with tempfile.TemporaryDirectory() as tmp:
            load0 = [round(v, 2) for v in os.getloadavg()]
            res = wan_bench(int(tokens), int(reps), Path(tmp), rss=False)
        res["loadavg"] = [load0, [round(v, 2) for v in os.getloadavg()]]
        Path(out).write_text(json.dumps(res))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    stages = set(args.stages.split(","))
    quick = args.quick
    seeds = list(range(1 if quick else args.seeds))
    iters = 5 if quick else args.iters
    n_videos = 4 if quick else args.videos
    calib_n = 2 if quick else 4
    shapes = [(1024, 1536, 1536), (1024, 1536, 8960), (4680, 1536, 1536), (4680, 1536, 8960)]
    results = {
        "device": "CPU (1 thread), torch " + torch.__version__,
        "machine": machine_info(),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
        "act_bits_full_range_exact": kernels.full_range_exact(),
        "settings": {"seeds": seeds, "adaround_iters": iters, "videos": n_videos,
                     "calibration_rollouts": calib_n, "bits": args.bits},  # fmt: skip
        "reduced": (
            f"AdaRound {iters} iterations per layer (paper 2000), batch 256 rows; {calib_n} "
            f"calibration rollouts; {n_videos} evaluation videos per seed; {len(seeds)} calibration "
            "seeds per method and width (95 % t-intervals over seeds); sensitivity from {n_videos} "
            "videos per seed (paper: 100 prompts)."
        ),
    }  # fmt: skip
    results["reduced"] = results["reduced"].replace("{n_videos}", str(n_videos))
    prev_path = OUT / "quantize.json"
    if stages == {"render"}:  # redraw the table and plot from the stored results only
        results = json.loads(prev_path.read_text())
        write(results)
        print(markdown(results))
        return
    if prev_path.is_file():  # keep stages that are not re-run (e.g. the GEMM timings)
        prev = json.loads(prev_path.read_text())
        stage_keys = {"gemm": "gemm", "sens": "sensitivity", "methods": "methods",
                      "time": "rollout_time", "kv": "kv_cache", "wan": "wan",
                      "wan_avx2": "wan_avx2_emulated"}  # fmt: skip
        for st, key in stage_keys.items():
            if st not in stages and key in prev:
                results[key] = prev[key]
                where = prev.get("machine_of", {}).get(key) or prev.get("machine")
                results.setdefault("machine_of", {})[key] = where
                results.setdefault("carried_over", []).append(
                    f"{key} ({machine_line(where) if where else 'CPU kind not recorded'})"
                )
        if "methods" not in stages and "methods" in prev:  # its settings describe the numbers
            for key in ("settings", "reduced", "loadavg", "act_bits_full_range_exact"):
                results[key] = prev.get(key, results.get(key))
    if "wan" in stages:
        with tempfile.TemporaryDirectory() as tmp:
            load0 = [round(v, 2) for v in os.getloadavg()]
            results["wan"] = wan_bench(256 if quick else args.wan_tokens, 2 if quick else 5,
                                       Path(tmp))  # fmt: skip
            results["wan"]["loadavg"] = [load0, [round(v, 2) for v in os.getloadavg()]]
        write(results)
    if "wan_avx2" in stages:
        with tempfile.TemporaryDirectory() as tmp:
            results["wan_avx2_emulated"] = wan_avx2_emulated(
                256 if quick else args.wan_tokens, 2 if quick else 3, Path(tmp)
            )
        write(results)
    if stages <= {"wan", "wan_avx2"}:
        print(markdown(results))
        return
    fp_model = models.load("moving-digits-causal")
    classifier = models.load("digit-classifier")
    if "gemm" in stages:
        results["gemm"] = gemm_bench(shapes[:1] if quick else shapes, 2 if quick else 5)
        write(results)
    s_mean = [0.25] * 4
    if "sens" in stages:
        per_seed = [sensitivity(fp_model, (4, 8), n_videos, calib_n, s) for s in seeds]
        s_all = torch.tensor([p["s"] for p in per_seed])
        s_mean = s_all.mean(0).tolist()
        from diffkit.quantize import fit_exponential

        results["sensitivity"] = {
            "bits": "W4A8 percentile init",
            "per_seed": per_seed,
            "mean": s_mean,
            "std": (s_all.std(0) if len(seeds) > 1 else torch.zeros(len(s_mean))).tolist(),
            "fit": list(fit_exponential(s_mean)),
        }
        write(results)
    if "methods" in stages:
        results["methods"] = {}
        widths = {"W8A8": (8, 8), "W4A8": (4, 8), "W4A6": (4, 6)}
        plan = [(tag, widths[tag], seeds) for tag in args.bits.split(",")]
        chosen = None if args.methods == "all" else args.methods.split(",")
        for tag, (wb, ab), bseeds in plan:
            rows = {}
            for seed in bseeds:
                labels, noise = calibration_set(n_videos, 100 + seed, fp_model.config)
                fp = generate(fp_model, labels, noise)
                for name, cfg in methods(wb, ab, iters, s_mean).items():
                    if chosen is not None and name not in chosen:
                        continue
                    q, secs = quantized_copy(fp_model, cfg, calib_n, seed)
                    out = compare_rollouts(fp, generate(q, labels, noise), labels,
                                           fp_model.config, classifier)  # fmt: skip
                    row = rows.setdefault(name, {k: [] for k in (
                        "video_mse", "chunk0_mse", "last_chunk_mse", "psnr", "frechet",
                        "digit_acc", "digit_acc_fp", "chunk_mse", "convert_seconds")})  # fmt: skip
                    row["video_mse"].append(out["video_mse"])
                    row["chunk0_mse"].append(out["chunk_mse"][0])
                    row["last_chunk_mse"].append(out["chunk_mse"][-1])
                    row["psnr"].append(statistics.mean(out["chunk_psnr"]))
                    row["frechet"].append(out["frechet_fp_ref"])
                    row["digit_acc"].append(out["digit_acc"])
                    row["digit_acc_fp"].append(out["digit_acc_fp"])
                    row["chunk_mse"].append(out["chunk_mse"])
                    row["convert_seconds"].append(secs)
                    row["bytes_ratio"] = packed_bytes(q)["ratio"]
                    row["s2_fired_layers"] = sum(
                        v["fired"] for v in q.quantize_info["s2"]["by_type"].values()
                    )
                    row["s2_report"] = q.quantize_info["s2"]["by_type"]
                    log.info("%s %s seed %d: video mse %.3e (%.0f s)", tag, name, seed,
                             out["video_mse"], secs)  # fmt: skip
                    results["methods"][tag] = rows
                    write(results, plot=False)
                    if seed == bseeds[0] and name == "+S1+S2 (Q-ARVD)" and tag == plan[0][0]:
                        # calibration is deterministic for a seed: convert again and compare
                        q2, _ = quantized_copy(fp_model, cfg, calib_n, seed)
                        again = compare_rollouts(fp, generate(q2, labels, noise), labels,
                                                 fp_model.config)  # fmt: skip
                        results["determinism"] = {
                            "method": f"{tag} {name}",
                            "seed": seed,
                            "video_mse": [out["video_mse"], again["video_mse"]],
                            "identical": out["video_mse"] == again["video_mse"],
                        }
            write(results)
    if "time" in stages:
        q, _ = quantized_copy(fp_model, RTNConfig(w_bits=8, a_bits=8), calib_n, 0)
        backend = q.quantize_info["backend"]
        rows = []
        for batch in (1, 8):
            labels, noise = calibration_set(batch, 7, fp_model.config)
            t = {"fp32": [], "kernel": [], "simulate": []}
            for _ in range(3):
                t["fp32"] += _time(lambda: generate(fp_model, labels, noise), 1)
                set_backend_(q, backend)
                t["kernel"] += _time(lambda: generate(q, labels, noise), 1)
                set_backend_(q, "simulate")
                t["simulate"] += _time(lambda: generate(q, labels, noise), 1)
            rows.append({"batch": batch, "backend": backend,
                         **{k: statistics.median(v) for k, v in t.items()}})  # fmt: skip
        results["rollout_time"] = rows
    if "kv" in stages:
        results["kv_cache"] = kv_bench(fp_model, 2 if quick else 4, seeds,
                                       8 if quick else 10, 2 if quick else 5)  # fmt: skip
        write(results)
    results["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write(results)
    print(markdown(results))


if __name__ == "__main__":
    main()
