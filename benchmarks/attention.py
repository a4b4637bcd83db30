"""Benchmark of RoPeSLR (diffkit.attention) against dense SDPA, in one run per part.

(a) speed: attention FLOPs (analytic, spec b.6; cross-checked with torch.utils.flop_counter at
    the smallest L) and CPU wall time vs ``scaled_dot_product_attention`` (4-D input), selection
    included, measurements interleaved method by method, median of ``--reps`` after warm-up.
(b) error vs density on held-out q/k/v of the tiny Wan zoo model: sparse-only, an SLA-style
    sparse + linear baseline (projection fitted by least squares on training q/k/v), RoPeSLR
    before and after stage-1 alignment: relative L2, cosine, attention-mass recall.
(c) sample quality of the tiny Wan model (evaluation-network FID/KID, per-frame digit accuracy):
    dense vs spike-only vs RoPeSLR, same seeds.
(d) a whole diffusers ``WanPipeline`` generation with the zoo's Wan model, RoPeSLR (reference and
    flex backends, spike only) vs dense: pipeline time and final-latent distance
    (``benchmarks/_attention_pipeline.py``).

    python benchmarks/attention.py --part a --part b --part c --part d
(e) torch.compile: whole-model forward, eager vs ``torch.compile(model, fullgraph=True)``
    (inductor), first call (compile included) and steady state, dense and RoPeSLR, for the zoo
    model and a Wan2.1-1.3B-shaped transformer (real widths, random init, ``--wan-layers`` blocks,
    ``--wan-grid`` latent patches); interleaved per model.

    python benchmarks/attention.py --part e --wan-layers 2 --wan-grid 4 16 32
Writes benchmarks/results/attention*.json|png|md. Records os.getloadavg() and the device.

On a CUDA machine only (a) runs, after an agreement check of the CUDA backend (flex vs reference,
density 1 vs SDPA, every merge), and writes attention_gpu.json|md beside the CPU results:

    python benchmarks/attention.py --lengths 16384 32768 75600 131072 --dims 128 64 \
        --heads 12 --dtype bf16 --reps 10 [--tune-flex 75600 131072]
"""

# ruff: noqa: B023  (the timing lambdas run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.attention.profiler import analytic_flops, counted_flops
from diffkit.attention.ropeslr import plan_blocks, resolve_backend
from diffkit.core.machine import fast_dtype, machine_info, machine_line

RESULTS = Path(__file__).parent / "results"
warnings.filterwarnings("ignore")


ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def _env() -> dict:
    return {
        "machine": machine_info(),
        "device": "cuda:" + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
        # set to emulate another CPU kind (e.g. AVX2 on an AMX machine): recorded with the run
        "isa_env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
    }


def _machine(env: dict) -> str:
    """The machine line of a results file (older files carry no record)."""
    return machine_line(env["machine"]) if "machine" in env else "CPU kind not recorded"


def _grid(L: int) -> tuple[int, int, int]:
    f = {
        4096: (16, 16, 16),
        8192: (8, 32, 32),
        16384: (16, 32, 32),
        32768: (32, 32, 32),
        65536: (16, 64, 64),
        75600: (21, 45, 80),  # Wan2.1 at 720p, 81 frames: 21 latent frames of 45 x 80 patches
        131072: (32, 64, 64),
    }
    return f.get(L, (1, 1, L))


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- (a) speed
SPLIT_STAGES = ("selection", "permute_v", "spike", "lse_estimate", "background", "merge", "untile")


def stage_split(q, k, v, q_pre, k_pre, config, params, grid, reps, now) -> dict:
    """Median ms of each stage of one RoPeSLR call with the zoo's merge (mass, estimated lse),
    run in the order ``ropeslr_attention`` runs them (so each stage meets the cache state it
    meets there), beside the whole call and SDPA, timed in the same rounds."""
    from diffkit.attention.background import merge_mass
    from diffkit.attention.ropeslr import _plan_tiled, background_terms, spike
    from diffkit.attention.sparse import estimate_lse

    times = {name: [] for name in (*SPLIT_STAGES, "total", "sdpa")}
    for rnd in range(reps + 1):  # round 0 warms up
        t = [now()]
        plan, qt, kt = _plan_tiled(q, k, config, grid, None)
        t.append(now())
        vt = plan.tiled(v)
        t.append(now())
        o_s, _ = spike(qt, kt, vt, plan, config, need_lse=False)
        t.append(now())
        lse = estimate_lse(qt, kt, plan.idx, plan.valid, config.block_size)
        t.append(now())
        num, den, _ = background_terms(params, q_pre, k_pre, vt, plan, config, need_den=True)
        t.append(now())
        out = merge_mass(o_s, lse, num, den, params.log_lambda.exp(), inplace=True)
        t.append(now())
        plan.untiled(out)
        t.append(now())
        kw = dict(config=config, params=params, q_pre=q_pre, k_pre=k_pre, grid=grid)
        t0 = now()
        ropeslr_attention(q, k, v, **kw)
        t1 = now()
        F.scaled_dot_product_attention(q, k, v)
        t2 = now()
        if rnd:
            for i, name in enumerate(SPLIT_STAGES):
                times[name].append(t[i + 1] - t[i])
            times["total"].append(t1 - t0)
            times["sdpa"].append(t2 - t1)
    return {f"ms_{name}": statistics.median(ts) * 1e3 for name, ts in times.items()}


def part_a(
    lengths,
    dims,
    densities,
    reps,
    block,
    tile,
    heads,
    device,
    dtype="fp32",
    on_rows=None,
    time_budget=None,
    backend="auto",
    skip_cpu=((32768, 128),),
    clock="wall",
    split=False,
) -> list[dict]:
    """Rows of timings; methods that fail are reported (``on_rows(rows, errors)``) and skipped.
    ``time_budget`` (s): start no new (L, d) configuration after it has passed. ``backend``: the
    RoPeSLR backend timed (auto: gather on CPU, flex on CUDA); ``skip_cpu``: (L, d) pairs not
    run on CPU (the slowest SDPA calls). ``clock``: "wall" (perf_counter) or "cpu" (the calling
    thread's CPU time, ``time.thread_time``: on a shared machine it leaves out the time the
    thread waited for a core, though not the cache and memory traffic of the other jobs; CPU
    and one torch thread only, since the other threads' time would not be counted).
    ``split``: also a row with the zoo configuration's :func:`stage_split`."""
    if clock == "cpu" and (device != "cpu" or torch.get_num_threads() != 1):
        raise ValueError("clock='cpu' times one thread: use --threads 1 on the CPU")
    now = time.thread_time if clock == "cpu" else time.perf_counter
    rows, errors = [], []
    dt = DTYPES[dtype]
    t_start = time.perf_counter()
    for d in dims:
        for L in lengths:
            if time_budget and time.perf_counter() - t_start > time_budget:
                print(json.dumps({"skipped": {"L": L, "d": d, "reason": "time budget"}}))
                continue
            if (L, d) in skip_cpu and device == "cpu":
                continue  # see the reduction note in the results
            grid = _grid(L)
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v, qp, kp = (
                torch.randn(1, heads, L, d, generator=g, device=device).to(dt) for _ in range(5)
            )
            cfgs = {
                rho: RoPeSLRConfig(
                    density=rho,
                    block_size=block,
                    tile=tile,
                    backend=backend,
                    rank=0,
                    rank_ref_tokens=L,
                )
                for rho in densities
            }
            params = RoPeSLRParams(cfgs[densities[0]], heads, d).to(device, dt)
            fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
            for rho, c in cfgs.items():
                fns[f"ropeslr@{rho}"] = lambda c=c: ropeslr_attention(
                    q, k, v, config=c, params=params, q_pre=qp, k_pre=kp, grid=grid
                )
                fns[f"spike@{rho}"] = lambda c=c: ropeslr_attention(
                    q, k, v, config=RoPeSLRConfig(**{**c.__dict__, "background": False}), grid=grid
                )
            # the zoo member's merge (mass, elu+1): needs the spike's log-sum-exp, which compiled
            # FlexAttention cannot return on CPU; there it is read out through a sink key
            # (block_sparse_flex), at the cost of one more key block and two value columns
            rho_m = 0.1 if 0.1 in cfgs else densities[0]
            c_mass = RoPeSLRConfig(**{**cfgs[rho_m].__dict__, "merge": "mass",
                                      "feature_map": "elu1"})  # fmt: skip
            p_mass = RoPeSLRParams(c_mass, heads, d).to(device, dt)
            fns[f"ropeslr_mass@{rho_m}"] = lambda: ropeslr_attention(
                q, k, v, config=c_mass, params=p_mass, q_pre=qp, k_pre=kp, grid=grid
            )
            # the zoo member's lse: estimated from block statistics, so the spike needs none
            c_est = RoPeSLRConfig(**{**c_mass.__dict__, "mass_lse": "estimate"})
            fns[f"ropeslr_mass_est@{rho_m}"] = lambda: ropeslr_attention(
                q, k, v, config=c_est, params=p_mass, q_pre=qp, k_pre=kp, grid=grid
            )
            # the selection alone (tile permutation, pooled scores, top-k), part of every row above
            fns[f"selection@{rho_m}"] = lambda: plan_blocks(q, k, cfgs[rho_m], grid)
            if split:
                with torch.no_grad():
                    sp = stage_split(q, k, v, qp, kp, c_est, p_mass, grid, reps, now)
                row = {"L": L, "d": d, "heads": heads, "method": "stage_split", "density": None,
                       "dtype": dtype,
                       "clock": clock, "threads": torch.get_num_threads(), "reps": reps,
                       "loadavg": os.getloadavg()[0], **sp}  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
            first = {}
            with torch.no_grad():
                for name, fn in list(fns.items()):
                    t0 = time.perf_counter()
                    try:
                        fn()
                        if device != "cpu":
                            torch.cuda.synchronize()
                    except Exception as e:  # recorded; the other methods still run
                        if name == "sdpa":
                            raise
                        err = {"L": L, "d": d, "method": name, "error": f"{type(e).__name__}: {e}"}
                        print(json.dumps(err), flush=True)
                        errors.append(err)
                        del fns[name]
                        continue
                    first[name] = time.perf_counter() - t0
                times = {name: [] for name in fns}
                n_rep = reps if (L <= 16384 or device != "cpu") else max(3, reps // 2)
                for _ in range(n_rep):  # interleaved: every method once per round
                    for name, fn in fns.items():
                        if device != "cpu":
                            torch.cuda.synchronize()
                        t0 = now()
                        fn()
                        if device != "cpu":
                            torch.cuda.synchronize()
                        times[name].append(now() - t0)
            base = statistics.median(times["sdpa"])
            with torch.no_grad():
                ran_backend = resolve_backend(cfgs[rho_m], q)
            n = -(-L // block)
            for name in fns:
                rho = None if name == "sdpa" else float(name.split("@")[1])
                med = statistics.median(times[name])
                row = {
                    "L": L,
                    "d": d,
                    "heads": heads,
                    "method": name.split("@")[0],
                    "density": rho,
                    "median_s": med,
                    "first_call_s": first[name],
                    "speedup_vs_sdpa": base / med,
                    # per-round ratio (SDPA and the method timed back to back), median over
                    # rounds: robust to the slow spells of a shared machine
                    "speedup_paired": statistics.median(
                        a / b for a, b in zip(times["sdpa"], times[name], strict=True)
                    ),
                    "reps": len(times[name]),
                    "dtype": dtype,
                    "backend": ran_backend,
                    "threads": torch.get_num_threads(),
                    "clock": clock,
                    "loadavg": os.getloadavg()[0],
                }
                if rho is not None and name != f"selection@{rho}":
                    kb = max(1, min(n, math.ceil(round(rho * n, 9))))
                    fl = analytic_flops(L, d, kb, block, params.rank, name.startswith("ropeslr"))
                    row.update(flop_reduction=fl["reduction"], k_blocks=kb)
                rows.append(row)
                print(json.dumps(row), flush=True)
            if on_rows is not None:
                on_rows(rows, errors)
    return rows


FLEX_CANDIDATES = [
    {},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"USE_TMA": True},
    {"USE_TMA": True, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
]


def tune_flex(lengths, dims, heads, density, block, tile, dtype, reps=10, device="cuda") -> dict:
    """Time the compiled flex spike (CUDA) under each candidate ``kernel_options`` and keep, per
    head dim, the one with the lowest geometric-mean time over ``lengths``."""
    from diffkit.attention.sparse import block_sparse_flex, set_cuda_kernel_options

    out = {"density": density, "lengths": lengths, "results": [], "best": {}}
    for d in dims:
        scores = {i: [] for i in range(len(FLEX_CANDIDATES))}
        for L in lengths:
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(1, heads, L, d, generator=g, device=device).to(DTYPES[dtype])
                       for _ in range(3))  # fmt: skip
            cfg = RoPeSLRConfig(density=density, block_size=block, tile=tile, backend="flex")
            plan = plan_blocks(q, k, cfg, grid=_grid(L))
            qt, kt, vt = plan.tiled(q), plan.tiled(k), plan.tiled(v)
            with torch.no_grad():
                for i, opts in enumerate(FLEX_CANDIDATES):

                    def fn():
                        return block_sparse_flex(qt, kt, vt, plan.idx, plan.valid, block,
                                                 return_lse=False, kernel_options=opts)  # fmt: skip

                    try:
                        t0 = time.perf_counter()
                        fn()
                        torch.cuda.synchronize()
                        first = time.perf_counter() - t0
                        ts = []
                        for _ in range(reps):
                            torch.cuda.synchronize()
                            t0 = time.perf_counter()
                            fn()
                            torch.cuda.synchronize()
                            ts.append(time.perf_counter() - t0)
                        med = statistics.median(ts)
                    except Exception as e:
                        med, first = float("inf"), None
                        print(
                            json.dumps(
                                {"tune_error": str(opts), "error": f"{type(e).__name__}: {e}"[:300]}
                            )
                        )
                    scores[i].append(med)
                    row = {"L": L, "d": d, "options": opts, "median_s": med, "first_call_s": first}
                    out["results"].append(row)
                    print(json.dumps({"tune": row}), flush=True)
        gm = {i: math.exp(sum(math.log(t) for t in ts) / len(ts)) for i, ts in scores.items()}
        best = min(gm, key=gm.get)
        out["best"][d] = {"options": FLEX_CANDIDATES[best], "geomean_s": gm[best],
                          "default_geomean_s": gm[0]}  # fmt: skip
        set_cuda_kernel_options(d, FLEX_CANDIDATES[best])
    print(json.dumps({"tune_best": out["best"]}), flush=True)
    return out


def gpu_check(device: str = "cuda") -> dict:
    """On the GPU: compiled flex (with its own lse) = the reference backend, and density 1 = SDPA,
    for the spike and both merges (fp32, small L). Max abs errors are recorded."""
    from diffkit.attention.layout import block_scores, forced_blocks, select_blocks
    from diffkit.attention.sparse import block_sparse_flex, block_sparse_reference

    g = torch.Generator().manual_seed(0)
    L, H, d, block = 4000, 2, 64, 128  # ragged last block
    q, k, v, qp, kp = (torch.randn(1, H, L, d, generator=g).to(device) for _ in range(5))
    n = -(-L // block)
    idx, valid = select_blocks(block_scores(q, k, block), 4, forced_blocks(n))
    out = {}
    with torch.no_grad():
        o1, l1 = block_sparse_reference(q, k, v, idx, valid, block)
        o2, l2 = block_sparse_flex(q, k, v, idx, valid, block)
        out["spike_o_maxabs"] = float((o1 - o2).abs().max())
        out["spike_lse_maxabs"] = float((l1 - l2).abs().max())
        grid = (4, 25, 40)
        for merge, extra in (
            ("gated", {}),
            ("mass", {"feature_map": "elu1"}),
            ("mass_est", {"feature_map": "elu1", "mass_lse": "estimate"}),
        ):
            kw = dict(block_size=block, tile=(2, 5, 8), merge=merge.split("_")[0],
                      rank_ref_tokens=L, **extra)  # fmt: skip
            c_ref = RoPeSLRConfig(density=0.1, backend="reference", **kw)
            c_flex = RoPeSLRConfig(density=0.1, backend="flex", **kw)
            p = RoPeSLRParams(c_ref, H, d).to(device)
            a = ropeslr_attention(q, k, v, config=c_ref, params=p, q_pre=qp, k_pre=kp, grid=grid)
            b = ropeslr_attention(q, k, v, config=c_flex, params=p, q_pre=qp, k_pre=kp, grid=grid)
            out[f"ropeslr_{merge}_flex_vs_reference_maxabs"] = float((a - b).abs().max())
            c1 = RoPeSLRConfig(density=1.0, backend="flex", **kw)
            dense = ropeslr_attention(q, k, v, config=c1, params=p, q_pre=qp, k_pre=kp, grid=grid)
            sdpa = F.scaled_dot_product_attention(q, k, v)
            out[f"ropeslr_{merge}_density1_vs_sdpa_maxabs"] = float((dense - sdpa).abs().max())
    out["ok"] = all(v < 2e-3 for k2, v in out.items() if k2.endswith("maxabs"))
    print(json.dumps({"gpu_check": out}), flush=True)
    return out


def flop_crosscheck(L=4096, d=64, rho=0.1, block=128, tile=(4, 4, 8)) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v, qp, kp = (torch.randn(1, 1, L, d, generator=g) for _ in range(5))
    c = RoPeSLRConfig(
        density=rho, block_size=block, tile=tile, backend="reference", rank_ref_tokens=L
    )
    p = RoPeSLRParams(c, 1, d)
    with torch.no_grad():
        counted = counted_flops(
            lambda: ropeslr_attention(
                q, k, v, config=c, params=p, q_pre=qp, k_pre=kp, grid=_grid(L)
            )
        )
    n = -(-L // block)
    an = analytic_flops(L, d, math.ceil(rho * n), block, p.rank)
    return {
        "L": L,
        "d": d,
        "density": rho,
        "counted": counted,
        "analytic_total": an["total"],
        "analytic_dense": an["dense"],
        "ratio_counted_over_analytic": counted / an["total"],
        "reduction_counted": an["dense"] / counted,
    }


# ----------------------------------------------------------------------------- (b) error
def capture_qkv(model, batch_videos, labels, sigmas, seed=0):
    """Per layer: list of (q, k, v, q_pre, k_pre) post/pre-RoPE (B, H, L, d) from dense forwards."""
    from diffkit.attention.processors import ropeslr_state
    from diffkit.core.schedules import FlowMatching
    from diffkit.models import moving_digits_wan as mdw

    st = ropeslr_state(model)
    store = {}
    procs = [m.processor for n, m in model.named_modules() if n.endswith("attn1")]
    originals = []
    for p in procs:
        orig = p._attend
        originals.append(orig)

        def rec(q, k, v, q_pre, k_pre, grid, sink=(None, None, None), p=p):
            store.setdefault(p.layer, []).append(
                [t.detach().clone() for t in (q, k, v, q_pre, k_pre)]
            )
            return F.scaled_dot_product_attention(q, k, v)

        object.__setattr__(p, "_attend", rec)
    sched = FlowMatching(shift=2.0)
    g = torch.Generator().manual_seed(seed)
    x0 = mdw.to_model(batch_videos)
    with torch.no_grad():
        for s in sigmas:
            t = torch.full((len(x0),), s)
            xt = sched.add_noise(x0, torch.randn(x0.shape, generator=g), t)
            model(
                xt,
                sched.model_t(t),
                mdw.condition(labels, model.config.text_dim),
                return_dict=False,
            )
    for p, o in zip(procs, originals):
        object.__setattr__(p, "_attend", o)
    return store, st.grid


def _metrics(out, ref):
    rel = float((out - ref).norm() / ref.norm())
    cos = float(F.cosine_similarity(out.flatten(2), ref.flatten(2), dim=-1).mean())
    return rel, cos


def sla_fit(samples, cfg, grid):
    """SLA-style baseline: o = o_sparse + (phi(q) (phi(k)^T v) / phi(q).sum(phi(k))) W, phi =
    softmax over features, linear branch over ALL keys (as in the SLA code); W (per head, d x d)
    fitted by least squares to the residual on training samples."""
    xs, ys = [], []
    for q, k, v, *_ in samples:
        o_s = ropeslr_attention(
            q, k, v, config=RoPeSLRConfig(**{**cfg.__dict__, "background": False}), grid=grid
        )
        lin = _linear(q, k, v)
        xs.append(lin)
        ys.append(F.scaled_dot_product_attention(q, k, v) - o_s)
    X = torch.cat(xs, 0).transpose(0, 1).flatten(1, 2).double()  # (H, N, d)
    Y = torch.cat(ys, 0).transpose(0, 1).flatten(1, 2).double()
    # Linear-attention outputs are nearly collinear: solve in fp64 with a relative ridge.
    xtx = X.transpose(1, 2) @ X
    lam = 1e-3 * xtx.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(X.shape[-1])
    return torch.linalg.solve(xtx + lam, X.transpose(1, 2) @ Y).float()  # (H, d, d)


def _linear(q, k, v):
    pq, pk = torch.softmax(q, -1), torch.softmax(k, -1)
    kv = pk.transpose(-1, -2) @ v
    z = pq @ pk.sum(2, keepdim=True).transpose(-1, -2)
    return (pq @ kv) / z


def part_b(densities, n_train=4, n_test=4) -> dict:
    from diffkit import models
    from diffkit.attention.layout import selection_mask
    from diffkit.attention.ropeslr import plan_blocks
    from diffkit.data import make_moving_digits
    from diffkit.zoo.moving_digits_wan import video_config

    model = models.load("moving-digits-wan-ropeslr")
    trained = {
        m.processor.layer: m.processor.params
        for n, m in model.named_modules()
        if n.endswith("attn1")
    }
    base_cfg = model.blocks[0].attn1.processor.config
    tr = make_moving_digits(n_train, video_config("train"), seed=101)
    te = make_moving_digits(n_test, video_config("test"), seed=202)
    sig = [0.9, 0.6, 0.3]
    train_qkv, grid = capture_qkv(model, tr.videos, tr.labels[:, 0], sig, seed=1)
    test_qkv, _ = capture_qkv(model, te.videos, te.labels[:, 0], sig, seed=2)
    torch.manual_seed(0)
    fresh = {i: RoPeSLRParams(base_cfg, p.heads, p.head_dim) for i, p in trained.items()}
    rows = []
    for rho in densities:
        cfg = RoPeSLRConfig(**{**base_cfg.__dict__, "density": rho})
        acc = {m: [] for m in ("sparse_only", "sla_style", "ropeslr_init", "ropeslr_aligned")}
        recall = []
        for layer in sorted(test_qkv):
            W = sla_fit(train_qkv[layer], cfg, grid)
            for q, k, v, qp, kp in test_qkv[layer]:
                ref = F.scaled_dot_product_attention(q, k, v)
                spk = RoPeSLRConfig(**{**cfg.__dict__, "background": False})
                o_s = ropeslr_attention(q, k, v, config=spk, grid=grid)
                acc["sparse_only"].append(_metrics(o_s, ref))
                sla = o_s + torch.einsum("bhld,hde->bhle", _linear(q, k, v), W)
                acc["sla_style"].append(_metrics(sla, ref))
                for name, prm in (
                    ("ropeslr_init", fresh[layer]),
                    ("ropeslr_aligned", trained[layer]),
                ):
                    with torch.no_grad():
                        o = ropeslr_attention(
                            q, k, v, config=cfg, params=prm, q_pre=qp, k_pre=kp, grid=grid
                        )
                    acc[name].append(_metrics(o, ref))
                plan = plan_blocks(q, k, cfg, grid)
                qq, kk = q[:, :, plan.perm], k[:, :, plan.perm]
                P = torch.softmax(qq @ kk.transpose(-1, -2) / math.sqrt(q.shape[-1]), -1)
                m = selection_mask(plan.idx, plan.valid, plan.n).repeat_interleave(
                    cfg.block_size, -1
                )
                m = m.repeat_interleave(cfg.block_size, -2)[..., : q.shape[2], : q.shape[2]]
                recall.append(float((P * m).sum(-1).mean()))
        row = {"density": rho, "mass_recall": statistics.mean(recall)}
        for name, vals in acc.items():
            row[f"{name}_rel_l2"] = statistics.mean(v[0] for v in vals)
            row[f"{name}_cosine"] = statistics.mean(v[1] for v in vals)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {
        "rows": rows,
        "grid": grid,
        "layers": len(test_qkv),
        "samples_per_layer": len(sig) * n_test,
        "sigmas": sig,
        "note": "toy model: tiny Wan trained on moving digits on this CPU",
    }


# ----------------------------------------------------------------------------- (c) quality
def part_c(per_class: int, steps: int, seeds: list[int], densities: list[float]) -> dict:
    """Sample quality of the tiny Wan model with dense vs sparse-only vs RoPeSLR attention.

    For every seed, every variant samples the same ``10 * per_class`` videos from the same initial
    noise (Euler, ``steps``, CFG 3): per-frame accuracy, class consistency, motion, crop FID/KID
    (:func:`diffkit.models.moving_digits_wan.evaluate`) and each video's distance to the dense
    model's video from the same noise (pixel MSE, cosine of the evaluation network's crop
    features, averaged over frames). RoPeSLR is the zoo's aligned ``moving-digits-wan-ropeslr``
    run at each density; sparse-only is the same model with the background path off. An SLA-style
    sampler (its linear branch over all keys) is not built for whole models: part (b) compares it
    on held-out attention inputs only.
    """
    from diffkit import models
    from diffkit.attention.processors import ropeslr_state
    from diffkit.data import make_moving_digits
    from diffkit.models import moving_digits_wan as mdw
    from diffkit.zoo.moving_digits_wan import video_config

    clf = models.load("digit-classifier")
    dense = models.load("moving-digits-wan")
    rs = models.load("moving-digits-wan-ropeslr")
    procs = [m.processor for m in rs.modules() if hasattr(getattr(m, "processor", None), "params")]
    full = {id(p): p.config for p in procs}
    state = ropeslr_state(rs)

    def variant(background: bool, density: float | None):
        for p in procs:
            cfg = full[id(p)]
            object.__setattr__(
                p, "config", RoPeSLRConfig(**{**cfg.__dict__, "background": background})
            )
        state.density = density

    def draw(model, labels, seed):
        g = torch.Generator().manual_seed(seed + 1)
        return torch.cat([mdw.sample(model, labels[i : i + 20], steps=steps, generator=g)
                          for i in range(0, len(labels), 20)])  # fmt: skip

    def features(videos):
        crops = mdw.classifier_crops(videos.flatten(0, 1).clamp(-1, 1))
        return clf.embed(crops)[0].view(videos.shape[0], videos.shape[1], -1)

    n = 10 * per_class
    labels = torch.arange(n) % 10
    out: dict = {"per_class": per_class, "steps": steps, "seeds": seeds, "rows": {}}
    for seed in seeds:
        real = make_moving_digits(n, video_config("test"), seed=seed + 2).videos
        floor = make_moving_digits(n, video_config("train"), seed=seed + 3).videos
        ref = draw(dense, labels, seed)
        f_ref = features(ref)
        runs = {"dense": (dense, None)}
        for d in densities:
            runs[f"sparse-only {d}"] = (rs, (False, d))
            runs[f"RoPeSLR {d}"] = (rs, (True, d))
        for name, (model, how) in runs.items():
            if how is not None:
                variant(*how)
            vids = ref if name == "dense" else draw(model, labels, seed)
            m = mdw.evaluate(vids, labels, real, clf, floor_real=floor)
            m["pixel_mse_to_dense"] = float((vids - ref).pow(2).mean())
            cos = torch.nn.functional.cosine_similarity(features(vids), f_ref, dim=-1)
            m["feature_cosine_to_dense"] = float(cos.mean())
            out["rows"].setdefault(name, []).append(m)
            print(name, seed, json.dumps({k: round(v, 4) for k, v in m.items()
                                          if isinstance(v, float)}), flush=True)  # fmt: skip
    variant(True, None)
    return out


# Wan2.1-T2V-1.3B's transformer config (diffusers), random init; num_layers set by --wan-layers.
WAN_1_3B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=12,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=8960,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)


def _time_calls(fn, reps: int) -> tuple[float, float]:
    """(first call, median of ``reps`` further calls) in seconds."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


@torch.no_grad()
def _compiled_rows(name: str, models_: dict, inputs: dict, reps: int) -> list[dict]:
    """Eager and compiled forward of each model (same inputs); max |compiled - eager|."""
    rows = []
    for variant, model in models_.items():
        torch._dynamo.reset()
        ref = model(**inputs)[0]
        compiled = torch.compile(model, fullgraph=True)
        for mode, fn in (("eager", model), ("compiled", compiled)):
            first, steady = _time_calls(lambda: fn(**inputs), reps)
            row = dict(model=name, variant=variant, mode=mode, first_s=first, steady_s=steady)
            if mode == "compiled":
                row["max_abs_diff_vs_eager"] = float((fn(**inputs)[0] - ref).abs().max())
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def part_e(reps: int, wan_layers: int, wan_grid: tuple[int, int, int]) -> dict:
    """Compiled vs eager whole-model forward (issue 20 item 3)."""
    from diffusers import WanTransformer3DModel

    from diffkit import models
    from diffkit.attention import apply_ropeslr_
    from diffkit.models import moving_digits_wan as mdw

    rows = []
    zoo = {
        "dense": models.load("moving-digits-wan"),
        "ropeslr": models.load("moving-digits-wan-ropeslr"),
    }
    c = zoo["dense"].config
    g = torch.Generator().manual_seed(0)
    v = mdw.VIDEO
    x = torch.randn(2, c.in_channels, v["num_frames"], v["size"], v["size"], generator=g)
    inputs = dict(hidden_states=x, timestep=torch.tensor([500.0, 500.0]),
                  encoder_hidden_states=mdw.condition(torch.tensor([3, 7]), c.text_dim),
                  return_dict=False)  # fmt: skip
    rows += _compiled_rows("zoo (moving-digits-wan)", zoo, inputs, reps)
    torch.manual_seed(0)
    cfg = {**WAN_1_3B, "num_layers": wan_layers}
    dense = WanTransformer3DModel(**cfg).eval()
    sparse = WanTransformer3DModel(**cfg).eval()
    sparse.load_state_dict(dense.state_dict())
    apply_ropeslr_(sparse, RoPeSLRConfig(density=0.1, block_size=128, tile=(4, 4, 8)))
    f, h, w = wan_grid
    inputs = dict(hidden_states=torch.randn(1, 16, f, 2 * h, 2 * w, generator=g),
                  timestep=torch.tensor([500.0]),
                  encoder_hidden_states=torch.randn(1, 512, 4096, generator=g),
                  return_dict=False)  # fmt: skip
    name = f"Wan-1.3B-shaped, {wan_layers} blocks, {f * h * w} tokens"
    rows += _compiled_rows(name, {"dense": dense, "ropeslr": sparse}, inputs, reps)
    return {"rows": rows, "wan_layers": wan_layers, "wan_grid": list(wan_grid), "reps": reps}


def _compiled_table(res: dict) -> None:
    lines = [
        "| model | variant | eager first / steady (s) | compiled first / steady (s) | "
        "compiled speedup (steady) | max diff vs eager |",
        "|---|---|---|---|---|---|",
    ]
    rows = res["rows"]
    for e, c in zip(rows[0::2], rows[1::2]):
        lines.append(
            f"| {e['model']} | {e['variant']} | {e['first_s']:.2f} / {e['steady_s']:.3f} | "
            f"{c['first_s']:.1f} / {c['steady_s']:.3f} | {e['steady_s'] / c['steady_s']:.2f}x | "
            f"{c['max_abs_diff_vs_eager']:.1e} |"
        )
    env = res["env"]
    lines.append(
        f"\n{_machine(env)}; {env['threads']} thread(s), fp32, median of "
        f"{res['reps']}; load average {env['loadavg_start']} -> {env['loadavg_end']}."
    )
    (RESULTS / "attention_compiled.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _speed_md(rows: list[dict]) -> list[str]:
    """The Markdown table of part (a)'s rows."""
    md = [
        "speedup = median(SDPA) / median(method), SDPA in the same dtype; paired = median over "
        "rounds of the per-round ratio (both timed back to back). Clock: "
        f"{', '.join(sorted({r.get('clock', 'wall') for r in rows}))} time "
        "(cpu = the thread's CPU time, one thread).",
        "",
        "| L | d | dtype | threads | backend | density | method | median s | speedup vs SDPA "
        "| paired | analytic FLOP reduction |",
        "|---:|---:|---|---:|---|---:|---|---:|---:|---:|---:|",
    ]
    splits = [r for r in rows if r["method"] == "stage_split"]
    for r in (r for r in rows if r["method"] != "stage_split"):
        head = (f"| {r['L']} | {r['d']} | {r.get('dtype', 'fp32')} | {r.get('threads', '')} | "
                f"{r.get('backend', 'flex') if r['method'] != 'sdpa' else ''} |")  # fmt: skip
        if r["method"] == "sdpa":
            md.append(f"{head} 1 | sdpa | {r['median_s']:.3f} | 1.00 | 1.00 | 1.0 |")
        else:
            md.append(
                f"{head} {r['density']} | {r['method']} | {r['median_s']:.3f} | "
                f"{r['speedup_vs_sdpa']:.2f} | {r.get('speedup_paired', float('nan')):.2f} | "
                f"{r.get('flop_reduction', float('nan')):.1f} |"
            )
    if splits:
        md += [
            "",
            "Stage split of the zoo configuration (mass merge, estimated lse), ms, stages run in "
            "the order of one call (`--split`):",
            "",
            f"| L | d | dtype | {' | '.join(SPLIT_STAGES)} | sum | whole call | SDPA |",
            "|---:|---:|---|" + "---:|" * (len(SPLIT_STAGES) + 3),
        ]
        for r in splits:
            parts = [r[f"ms_{name}"] for name in SPLIT_STAGES]
            cells = " | ".join(
                f"{x:.1f}" for x in [*parts, sum(parts), r["ms_total"], r["ms_sdpa"]]
            )
            md.append(f"| {r['L']} | {r['d']} | {r['dtype']} | {cells} |")
    return md


def _tagged_speed(res: dict, tag: str) -> None:
    """attention_<tag>.json|md: a part (a) run kept beside the main results (other thread
    counts, an emulated CPU kind)."""
    (RESULTS / f"attention_{tag}.json").write_text(json.dumps(res, indent=1))
    md = [
        f"# RoPeSLR part (a), run `{tag}` (`benchmarks/attention.py --part a --tag {tag}`)",
        "",
        f"Machine: {_machine(res['env'])}.",
        "",
        *(
            [
                f"**Emulated CPU kind**: run with `{res['env']['isa_env']}` on this machine, so "
                "PyTorch and oneDNN use only those instructions; not a measurement of a real "
                "machine of that kind.",
                "",
            ]
            if res["env"].get("isa_env")
            else []
        ),
        f"Environment: `{json.dumps(res['env'])}`",
        "",
        *_speed_md(res["speed"]),
    ]
    (RESULTS / f"attention_{tag}.md").write_text("\n".join(md) + "\n")


def _plots_and_table(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    md = [
        "# RoPeSLR benchmark (`benchmarks/attention.py`)",
        "",
        f"Machine: {_machine(res['env'])}.",
        "",
        f"Environment: `{json.dumps(res['env'])}`",
        "",
    ]
    if "speed" in res:
        rows = res["speed"]
        md += ["## (a) attention speed vs dense SDPA", "", *_speed_md(rows)]
        fig, ax = plt.subplots(figsize=(6, 4))
        for d in sorted({r["d"] for r in rows}):
            for rho in sorted({r["density"] for r in rows if r["density"]}):
                pts = [
                    (r["L"], r["speedup_vs_sdpa"])
                    for r in rows
                    if r["d"] == d and r["density"] == rho and r["method"] == "ropeslr"
                ]
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=f"RoPeSLR d={d} rho={rho}")
        ax.axhline(1, color="k", lw=0.5)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens L")
        ax.set_ylabel("speedup vs SDPA (wall time)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "attention_speed.png", dpi=110)
        if "flop_crosscheck" in res:
            md += ["", f"FLOP counter cross-check: `{json.dumps(res['flop_crosscheck'])}`"]
    if "error" in res:
        rows = res["error"]["rows"]
        md += [
            "",
            "## (b) error vs density (held-out q/k/v of the tiny Wan model; toy-model results)",
            "",
            "| density | mass recall | sparse-only | SLA-style | RoPeSLR init | RoPeSLR aligned |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            md.append(
                f"| {r['density']} | {r['mass_recall']:.3f} | {r['sparse_only_rel_l2']:.4f} | "
                f"{r['sla_style_rel_l2']:.4f} | {r['ropeslr_init_rel_l2']:.4f} | {r['ropeslr_aligned_rel_l2']:.4f} |"
            )
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in ("sparse_only", "sla_style", "ropeslr_init", "ropeslr_aligned"):
            ax.plot(
                [r["density"] for r in rows],
                [r[f"{name}_rel_l2"] for r in rows],
                marker="o",
                label=name,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density")
        ax.set_ylabel("relative L2 error vs dense")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "attention_error.png", dpi=110)
    if "quality" in res:
        md += _quality_md(res["quality"])
    if "pipeline" in res:
        from _attention_pipeline import markdown

        md += markdown(res["pipeline"])
    (RESULTS / "attention.md").write_text("\n".join(md) + "\n")


def _quality_md(q: dict) -> list[str]:
    """Part (c)'s Markdown section."""
    md = [
        "",
        f"## (c) tiny Wan sample quality: {10 * q['per_class']} videos x seeds {q['seeds']}, "
        f"{q['steps']} Euler steps, CFG 3, the same noise for every variant (mean over seeds)",
        "",
        _machine(q["env"]) + "." if "env" in q else "Machine not recorded.",
        "",
        "| attention | frame accuracy | class consistency | FID / floor | KID | pixel MSE to "
        "dense | feature cosine to dense |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fields = ("frame_accuracy", "class_consistency", "fid_over_floor", "kid",
              "pixel_mse_to_dense", "feature_cosine_to_dense")  # fmt: skip
    for k, rows in q["rows"].items():
        mean = {f: statistics.mean(r[f] for r in rows) for f in fields}
        md.append(
            f"| {k} | {mean['frame_accuracy']:.3f} | {mean['class_consistency']:.3f} | "
            f"{mean['fid_over_floor']:.2f} | {mean['kid']:.4f} | "
            f"{mean['pixel_mse_to_dense']:.4f} | {mean['feature_cosine_to_dense']:.3f} |"
        )
    return md


def _gpu_table(res: dict) -> None:
    """attention_gpu.md: the CUDA rows of part (a) and the agreement check."""
    md = [
        "# RoPeSLR on the GPU (`benchmarks/attention.py` run on CUDA)",
        "",
        f"Machine: {_machine(res['env'])}.",
        "",
        f"Environment: `{json.dumps(res['env'])}`",
        "",
        f"Agreement check (fp32, L=4000, flex vs reference, density 1 vs SDPA): "
        f"`{json.dumps(res.get('gpu_check'))}`",
        "",
        "| L | d | heads | dtype | density | method | median ms | speedup vs SDPA | FLOP reduction |",
        "|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    if res.get("flex_tuning"):
        md.insert(6, f"Flex kernel options chosen (spike at density 0.1, geometric mean over "
                     f"L={res['flex_tuning']['lengths']}): `{json.dumps(res['flex_tuning']['best'])}`\n")  # fmt: skip
    for e in res.get("errors") or []:
        md.insert(6, f"Failed: `{json.dumps(e)}`\n")
    for r in res.get("speed", []):
        rho = r["density"] if r["density"] is not None else 1
        red = f"{r['flop_reduction']:.1f}" if "flop_reduction" in r else "-"
        red = "1.0" if r["method"] == "sdpa" else red
        md.append(
            f"| {r['L']} | {r['d']} | {r['heads']} | {r['dtype']} | {rho} | {r['method']} | "
            f"{1e3 * r['median_s']:.2f} | {r['speedup_vs_sdpa']:.2f} | {red} |"
        )
    (RESULTS / "attention_gpu.md").write_text("\n".join(md) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="On a CUDA machine part (a) runs on the GPU and writes attention_gpu.json/.md "
        "(the CPU results are left as they are), after an agreement check of the CUDA backend.",
    )
    ap.add_argument("--part", action="append", choices=["a", "b", "c", "d", "e"],
                    help="parts to run (default a-d; e, torch.compile, only on request)")  # fmt: skip
    ap.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768],
                    help="token counts L of part (a)")  # fmt: skip
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 128], help="head dims of (a)")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.2, 0.1, 0.05],
                    help="block densities of (a)")  # fmt: skip
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--block", type=int, default=128, help="block size (tokens)")
    ap.add_argument("--tile", type=int, nargs=3, default=[4, 4, 8], help="3D tile (t h w)")
    ap.add_argument("--heads", type=int, default=1, help="attention heads in (a)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                    help="dtype of (a): auto measures fp32 AND the machine's fast dtype "
                         "(diffkit.core.machine.fast_dtype: bf16 on CUDA and on AMX/AVX-512-BF16 "
                         "CPUs), so SDPA is also timed in the dtype a user would pick")  # fmt: skip
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                    help="where (a) runs (auto: cuda when available)")  # fmt: skip
    ap.add_argument("--tune-flex", type=int, nargs="*", default=None, metavar="L",
                    help="CUDA: first pick flex kernel options per head dim at these lengths")  # fmt: skip
    ap.add_argument("--backend", choices=["auto", "reference", "flex", "gather"], default="auto",
                    help="RoPeSLR backend timed in (a) (auto: gather on CPU, flex on CUDA)")  # fmt: skip
    ap.add_argument("--all-shapes", action="store_true",
                    help="(a) on CPU: also run L=32768 at d=128 (skipped by default: slow SDPA)")  # fmt: skip
    ap.add_argument("--tag", default=None,
                    help="(a) only: write attention_<tag>.json|md instead of attention.json|md")  # fmt: skip
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="(a) on CPU with --threads 1: 'cpu' times the thread's CPU time "
                         "(a shared machine's waits left out)")  # fmt: skip
    ap.add_argument("--split", action="store_true",
                    help="(a): also time each stage of the zoo configuration (selection, spike, "
                         "lse estimate, background, merge, permutations)")  # fmt: skip
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds after which (a) starts no new (L, d) configuration")  # fmt: skip
    ap.add_argument(
        "--quality-per-class",
        type=int,
        default=20,
        help="videos per digit class and setting in (c) (issue 14: 20 = 200 videos)",
    )
    ap.add_argument(
        "--quality-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2],
        help="sampling seeds of (c); every variant uses the same noise per seed",
    )
    ap.add_argument("--quality-densities", type=float, nargs="+", default=[0.2, 0.1, 0.05],
                    help="densities of (c)")  # fmt: skip
    ap.add_argument("--quality-steps", type=int, default=20, help="sampling steps in (c)")
    ap.add_argument("--pipeline-tokens", type=int, nargs="+", default=[2048], choices=[2048, 8192],
                    help="token counts of (d)")  # fmt: skip
    ap.add_argument("--pipeline-steps", type=int, default=10, help="sampling steps in (d)")
    ap.add_argument("--pipeline-reps", type=int, default=3, help="timed generations in (d)")
    ap.add_argument("--wan-layers", type=int, default=2, help="blocks of the Wan-1.3B shape (e)")
    ap.add_argument("--wan-grid", type=int, nargs=3, default=[4, 16, 32],
                    help="latent patch grid (t h w) of the Wan-1.3B shape in (e)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    device = args.device if args.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu"
    )  # fmt: skip
    fast = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(fast_dtype(device), "fp32")
    a_dtypes = list(dict.fromkeys(["fp32", fast])) if args.dtype == "auto" else [args.dtype]
    one_dtype = fast if args.dtype == "auto" else args.dtype
    if device == "cuda":  # GPU figures go beside the CPU ones, never over them
        path = RESULTS / "attention_gpu.json"
        res = {"env": _env(), "settings": vars(args)}

        def save(rows=None, errors=None):
            if rows is not None:
                res["speed"], res["errors"] = rows, errors
            path.write_text(json.dumps(res, indent=1))
            _gpu_table(res)

        try:
            res["gpu_check"] = gpu_check()
        except Exception as e:  # recorded; the timings still run
            res["gpu_check"] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(res["gpu_check"]), flush=True)
        save()
        if args.tune_flex:
            res["flex_tuning"] = tune_flex(args.tune_flex, args.dims, args.heads, 0.1,
                                           args.block, tuple(args.tile), one_dtype)  # fmt: skip
            save()
        part_a(args.lengths, args.dims, args.densities, args.reps, args.block,
               tuple(args.tile), args.heads, device, one_dtype, on_rows=save,
               time_budget=args.time_budget, backend=args.backend)  # fmt: skip
        res["env"]["loadavg_end"] = os.getloadavg()
        save()
        print(f"wrote {path}")
        return
    parts = args.part or ["a", "b", "c", "d"]
    if "e" in parts:  # its own files: attention.json keeps the env of the run that made it
        out = {"env": _env(), **part_e(args.reps, args.wan_layers, tuple(args.wan_grid))}
        out["env"]["loadavg_end"] = os.getloadavg()
        (RESULTS / "attention_compiled.json").write_text(json.dumps(out, indent=1))
        _compiled_table(out)
        parts = [p for p in parts if p != "e"]
        if not parts:
            return
    skip_cpu = () if args.all_shapes else ((32768, 128),)

    def speed_rows() -> list[dict]:
        return [
            row
            for dt in a_dtypes
            for row in part_a(
                args.lengths,
                args.dims,
                args.densities,
                args.reps,
                args.block,
                tuple(args.tile),
                args.heads,
                device,
                dt,
                backend=args.backend,
                skip_cpu=skip_cpu,
                clock=args.clock,
                split=args.split,
            )
        ]

    if args.tag:
        if parts != ["a"]:
            raise SystemExit("--tag applies to part (a) alone: pass --part a")
        res = {"env": _env(), "speed": speed_rows(), "speed_settings": vars(args)}
        res["env"]["loadavg_end"] = os.getloadavg()
        _tagged_speed(res, args.tag)
        print(f"wrote {RESULTS / f'attention_{args.tag}.json'}")
        return
    path = RESULTS / "attention.json"
    res = json.loads(path.read_text()) if path.is_file() else {}
    alone = parts == ["d"]  # it records its own machine
    if alone:  # keep the machine record of the parts that did not run
        res.setdefault("env", _env())
    else:
        res["env"] = _env()
    if "a" in parts:
        res["speed"] = speed_rows()
        res["flop_crosscheck"] = flop_crosscheck()
        res["speed_settings"] = vars(args)
    if "b" in parts:
        res["error"] = part_b([1.0, 0.5, 0.3, 0.2, 0.1, 0.05])
    if parts == ["c"]:  # alone: its own results file, the other parts' files untouched
        q = part_c(
            args.quality_per_class, args.quality_steps, args.quality_seeds, args.quality_densities
        )
        q["env"] = {**_env(), "loadavg_end": os.getloadavg()}
        (RESULTS / "attention_quality.json").write_text(json.dumps(q, indent=1))
        text = "# RoPeSLR sample quality (`benchmarks/attention.py --part c`)\n\n"
        (RESULTS / "attention_quality.md").write_text(text + "\n".join(_quality_md(q)[1:]) + "\n")
        print(f"wrote {RESULTS / 'attention_quality.json'}")
        return
    if "c" in parts:
        res["quality"] = part_c(
            args.quality_per_class, args.quality_steps, args.quality_seeds, args.quality_densities
        )
        res["quality"]["env"] = {**_env(), "loadavg_end": os.getloadavg()}
    if "d" in parts:
        from _attention_pipeline import part_d

        env = _env()
        res["pipeline"] = part_d(args.pipeline_tokens, args.pipeline_steps, args.pipeline_reps)
        res["pipeline"]["env"] = {**env, "loadavg_end": os.getloadavg()}
    if not alone:
        res["env"]["loadavg_end"] = os.getloadavg()
    path.write_text(json.dumps(res, indent=1))
    _plots_and_table(res)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
