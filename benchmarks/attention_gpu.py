"""GPU benchmark of RoPeSLR (issue 17 item 5): attention alone and a whole Wan-1.3B forward.

(check) agreement first: the Triton and flex backends against the reference backend (fp32,
    gated and mass merges, spike kernel), so no timing is written for a wrong kernel.
(attention) L in {16,384, 32,760, 75,600} (``--lengths``), 12 heads, d = 128, bf16, density 0.1:
    dense SDPA vs RoPeSLR on the ``triton`` and ``flex`` backends (spike only, gated merge, mass
    merge), the spike kernels alone on a fixed selection (with achieved TFLOP/s), and the
    selection alone; every method once per round, rounds interleaved, CUDA-synchronised,
    median of ``--reps``; ``paired`` = median over rounds of SDPA's time / the method's.
(e2e) ``WanTransformer3DModel`` with Wan2.1-T2V-1.3B's real config (30 layers, hidden 1536,
    12 heads, ffn 8960), random init, bf16, whole forward (batch 1, 512 text tokens) at
    480p x 81 frames (21 x 30 x 52 = 32,760 tokens) and 720p (21 x 45 x 80 = 75,600): diffusers'
    SDPA processor vs RoPeSLR (``apply_ropeslr_``, density 0.1, block 128, tile 4x4x8) on the
    triton and flex backends, with the output's distance to the dense forward.

    python benchmarks/attention_gpu.py                      # everything, ~5 min on an H100
    python benchmarks/attention_gpu.py --part attention --tune   # + a tile sweep of the kernel
    python benchmarks/attention_gpu.py --dry-run            # tiny shapes on CPU, reference path

Writes benchmarks/results/attention_gpu_<date>.json|md with the machine record
(``diffkit.core.machine.machine_info()``) and the load average. ``--dry-run`` runs every part
end to end at toy sizes on the CPU through the reference backend (the script's own check; its
numbers mean nothing) and writes to a temporary folder unless ``--out`` is given.
"""

# ruff: noqa: B023  (the timing lambdas run inside the loop iteration that defines them)
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.attention.ropeslr import plan_blocks
from diffkit.core.machine import machine_info, machine_line

RESULTS = Path(__file__).parent / "results"

GRIDS = {  # latent patch grids (t, h, w)
    16384: (16, 32, 32),
    32760: (21, 30, 52),  # Wan 480p, 81 frames
    75600: (21, 45, 80),  # Wan 720p, 81 frames
}
# Wan2.1-T2V-1.3B's transformer config (diffusers), random init.
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
# Tile candidates (block_m, block_n, num_warps, num_stages) of ``--tune`` (block 128).
TILES = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 2)]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed_rounds(fns: dict, reps: int, device: str) -> tuple[dict, dict, dict]:
    """First-call time, per-round times and errors of each method, rounds interleaved."""
    first, errors = {}, {}
    for name, fn in list(fns.items()):
        t0 = time.perf_counter()
        try:
            fn()
            _sync(device)
        except Exception as e:  # recorded; the other methods still run
            if name == "sdpa":
                raise
            errors[name] = f"{type(e).__name__}: {e}"[:500]
            print(json.dumps({"method": name, "error": errors[name]}), flush=True)
            del fns[name]
            continue
        first[name] = time.perf_counter() - t0
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return first, times, errors


def _rows(first, times, base: str, **common) -> list[dict]:
    rows = []
    for name, ts in times.items():
        rows.append(
            dict(
                common,
                method=name,
                median_ms=1e3 * statistics.median(ts),
                first_call_s=first[name],
                speedup_vs_sdpa=statistics.median(times[base]) / statistics.median(ts),
                speedup_paired=statistics.median(a / b for a, b in zip(times[base], ts)),
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


# ----------------------------------------------------------------------------- agreement
@torch.no_grad()
def check(device: str, backends: list[str]) -> dict:
    """max |backend - reference| (fp32) of the spike and of both merges on a small grid."""
    grid, heads, d = ((4, 16, 16), 2, 64) if device == "cuda" else ((2, 8, 16), 2, 32)
    L = math.prod(grid)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, qp, kp = (torch.randn(1, heads, L, d, generator=g, device=device) for _ in range(5))
    out = {}
    for merge in ("gated", "mass", "spike"):
        kw = dict(density=0.25, block_size=64, tile=(2, 4, 8))
        if merge == "mass":
            kw.update(merge="mass", feature_map="elu1")
        if merge == "spike":
            kw["background"] = False
        p = RoPeSLRParams(RoPeSLRConfig(**kw), heads, d).to(device)
        p.gate_w.normal_()
        ref = ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend="reference", **kw),
                                params=p, q_pre=qp, k_pre=kp, grid=grid)  # fmt: skip
        for b in backends:
            o = ropeslr_attention(q, k, v, config=RoPeSLRConfig(backend=b, **kw), params=p,
                                  q_pre=qp, k_pre=kp, grid=grid)  # fmt: skip
            out[f"{b}_{merge}_maxabs"] = float((o - ref).abs().max())
    out["ok"] = all(val < 1e-3 for val in out.values())
    print(json.dumps({"check": out}), flush=True)
    return out


# ----------------------------------------------------------------------------- attention
def _kernel_fns(q, k, v, plan, cfg, backends, tune, device) -> dict:
    """The spike kernels alone, on the tile-major tensors and a fixed selection."""
    from diffkit.attention.sparse import block_sparse_flex

    qt, kt, vt = (plan.tiled(t) for t in (q, k, v))
    sel = (plan.idx, plan.valid, cfg.block_size)
    fns = {}
    if "flex" in backends:
        fns["kernel_flex"] = lambda: block_sparse_flex(qt, kt, vt, *sel)
    if "triton" in backends:
        from diffkit.attention.triton_kernels import block_sparse_triton

        fns["kernel_triton"] = lambda: block_sparse_triton(qt, kt, vt, *sel)
        for tiles in TILES if tune else []:
            if cfg.block_size % tiles[0] == 0 and cfg.block_size % tiles[1] == 0:
                name = "kernel_triton" + "x".join(map(str, tiles))
                fns[name] = lambda t=tiles: block_sparse_triton(qt, kt, vt, *sel, tiles=t)
    return fns


@torch.no_grad()
def part_attention(args, device: str, dtype: torch.dtype, backends: list[str]) -> list[dict]:
    rows = []
    for L in args.lengths:
        grid = GRIDS.get(L) or (1, 1, L)
        if math.prod(grid) != L:
            raise SystemExit(f"no grid for L={L}; known: {sorted(GRIDS)}")
        g = torch.Generator(device=device).manual_seed(0)
        shape = (1, args.heads, L, args.head_dim)
        q, k, v, qp, kp = (
            torch.randn(shape, generator=g, device=device).to(dtype) for _ in "qkvab"
        )
        base = dict(density=args.density, block_size=args.block, tile=tuple(args.tile))
        fns = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v)}
        for b in backends:
            spike = RoPeSLRConfig(backend=b, background=False, **base)
            gated = RoPeSLRConfig(backend=b, rank_ref_tokens=L, **base)
            mass = RoPeSLRConfig(backend=b, rank_ref_tokens=L, merge="mass", feature_map="elu1",
                                 **base)  # fmt: skip
            p_g = RoPeSLRParams(gated, args.heads, args.head_dim).to(device, dtype)
            p_m = RoPeSLRParams(mass, args.heads, args.head_dim).to(device, dtype)
            fns[f"spike_{b}"] = lambda c=spike: ropeslr_attention(q, k, v, config=c, grid=grid)
            fns[f"ropeslr_gated_{b}"] = lambda c=gated, p=p_g: ropeslr_attention(
                q, k, v, config=c, params=p, q_pre=qp, k_pre=kp, grid=grid
            )
            fns[f"ropeslr_mass_{b}"] = lambda c=mass, p=p_m: ropeslr_attention(
                q, k, v, config=c, params=p, q_pre=qp, k_pre=kp, grid=grid
            )
        cfg = RoPeSLRConfig(**base)
        plan = plan_blocks(q, k, cfg, grid)
        fns["selection"] = lambda: plan_blocks(q, k, cfg, grid)
        fns |= _kernel_fns(q, k, v, plan, cfg, backends, args.tune, device)
        first, times, errors = _timed_rounds(fns, args.reps, device)
        selected = int(plan.valid.sum()) * args.block * args.block  # (query, key) pairs
        common = dict(part="attention", L=L, heads=args.heads, d=args.head_dim,
                      dtype=str(dtype).removeprefix("torch."), density=args.density,
                      achieved_density=plan.achieved_density)  # fmt: skip
        for row in _rows(first, times, "sdpa", **common):
            if row["method"].startswith("kernel_"):  # 4 d FLOPs per selected (query, key) pair
                row["tflops"] = 4 * selected * args.head_dim / (row["median_ms"] * 1e-3) / 1e12
            rows.append(row)
        rows += [dict(common, method=m, error=e) for m, e in errors.items()]
    return rows


# ----------------------------------------------------------------------------- end to end
@torch.no_grad()
def part_e2e(args, device: str, dtype: torch.dtype, backends: list[str]) -> list[dict]:
    from diffusers import WanTransformer3DModel

    from diffkit.attention import apply_ropeslr_

    cfg = dict(WAN_1_3B)
    if args.dry_run:  # the real widths, one block
        cfg["num_layers"] = 1
    torch.manual_seed(0)
    model = WanTransformer3DModel(**cfg).to(device).eval()
    # cast as from_pretrained(torch_dtype=...) loads it: the modules diffusers keeps in fp32 stay
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_floating_point():
            t.data = t.data.to(torch.float32 if keep & set(name.split(".")) else dtype)
    # one copy per backend with RoPeSLR applied once (same weights, same new parameters), so
    # the timed calls are forwards only
    models = {"sdpa": model}
    for b in backends:
        models[f"ropeslr_{b}"] = copy.deepcopy(model)
        torch.manual_seed(1)
        rc = RoPeSLRConfig(backend=b, density=args.density, block_size=args.block,
                           tile=tuple(args.tile))  # fmt: skip
        apply_ropeslr_(models[f"ropeslr_{b}"], rc)
    rows = []
    for f, h, w in args.e2e_grids:
        g = torch.Generator(device=device).manual_seed(0)
        inputs = dict(
            hidden_states=torch.randn(1, 16, f, 2 * h, 2 * w, generator=g, device=device).to(dtype),
            timestep=torch.tensor([500.0], device=device),
            encoder_hidden_states=torch.randn(1, 512, 4096, generator=g, device=device).to(dtype),
            return_dict=False,
        )
        outs = {}

        def forward(name):
            outs[name] = models[name](**inputs)[0]

        fns = {name: lambda name=name: forward(name) for name in models}
        first, times, errors = _timed_rounds(fns, args.e2e_reps, device)
        common = dict(part="e2e", model=f"Wan-1.3B-shaped, {cfg['num_layers']} layers",
                      grid=[f, h, w], L=f * h * w, dtype=str(dtype).removeprefix("torch."),
                      density=args.density)  # fmt: skip
        dense = outs["sdpa"].float()
        for row in _rows(first, times, "sdpa", **common):
            if row["method"] != "sdpa":
                o = outs[row["method"]].float()
                row["rel_l2_vs_dense"] = float((o - dense).norm() / dense.norm())
            rows.append(row)
        rows += [dict(common, method=m, error=e) for m, e in errors.items()]
    return rows


# ----------------------------------------------------------------------------- output
def _markdown(res: dict) -> str:
    env = res["env"]
    md = ["# RoPeSLR on the GPU (`benchmarks/attention_gpu.py`)", ""]
    md += [f"Machine: {machine_line(env['machine'])}.", ""]
    md += [f"Load average {env['loadavg_start']} -> {env['loadavg_end']}; "
           f"agreement check: `{json.dumps(res.get('check'))}`.", ""]  # fmt: skip
    att = [r for r in res["rows"] if r["part"] == "attention" and "error" not in r]
    if att:
        md += [f"## Attention ({res['args']['heads']} heads, batch 1, selection included)", "",
               "| L | d | dtype | density | method | median ms | vs SDPA | paired | TFLOP/s |",
               "|---:|---:|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in att:
            tf = f"{r['tflops']:.0f}" if "tflops" in r else ""
            md.append(
                f"| {r['L']} | {r['d']} | {r['dtype']} | {r['density']} | {r['method']} | "
                f"{r['median_ms']:.2f} | {r['speedup_vs_sdpa']:.2f} | "
                f"{r['speedup_paired']:.2f} | {tf} |"
            )
        md.append("")
    e2e = [r for r in res["rows"] if r["part"] == "e2e" and "error" not in r]
    if e2e:
        md += ["## Whole forward", "", "Random init, RoPeSLR parameters untrained: the distance "
               "to the dense output is not a quality figure.", "",
               "| model | grid | L | method | median s | vs SDPA | paired | rel. L2 vs dense |",
               "|---|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in e2e:
            dist = f"{r['rel_l2_vs_dense']:.3f}" if "rel_l2_vs_dense" in r else ""
            md.append(
                f"| {r['model']} | {'x'.join(map(str, r['grid']))} | {r['L']} | {r['method']} | "
                f"{r['median_ms'] / 1e3:.3f} | {r['speedup_vs_sdpa']:.2f} | "
                f"{r['speedup_paired']:.2f} | {dist} |"
            )
        md.append("")
    errs = [r for r in res["rows"] if "error" in r]
    if errs:
        md += ["## Errors", ""] + [f"- {r['part']} L={r['L']} {r['method']}: {r['error']}"
                                   for r in errs]  # fmt: skip
    return "\n".join(md) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--part", action="append", choices=["attention", "e2e"], help="parts to run (default: both)"
    )
    ap.add_argument("--lengths", type=int, nargs="+", default=[16384, 32760, 75600])
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--tile", type=int, nargs=3, default=[4, 4, 8])
    ap.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--backends", nargs="+", choices=["triton", "flex"], default=["triton", "flex"])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--e2e-reps", type=int, default=3)
    ap.add_argument(
        "--e2e-grids",
        type=int,
        nargs=3,
        action="append",
        help="latent patch grids (t h w); default 21 30 52 and 21 45 80",
    )
    ap.add_argument("--tune", action="store_true", help="also time the kernel tile candidates")
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="tiny shapes on CPU through the reference backend (checks the script)",
    )
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    args = ap.parse_args(argv)  # fmt: skip
    parts = args.part or ["attention", "e2e"]
    args.e2e_grids = args.e2e_grids or [[21, 30, 52], [21, 45, 80]]
    if args.dry_run:
        device, dtype, backends = "cpu", torch.float32, ["reference"]
        args.lengths, args.heads, args.head_dim, args.block = [256], 2, 32, 64
        args.tile, args.reps, args.e2e_reps, args.e2e_grids = [2, 4, 8], 2, 1, [[2, 8, 16]]
        GRIDS[256] = (2, 8, 16)
        out_dir = args.out or Path(tempfile.mkdtemp(prefix="attention_gpu_dry_"))
    else:
        if not torch.cuda.is_available():  # (exit 0: `make bench` runs every script)
            print("attention_gpu: no CUDA device, nothing measured (--dry-run checks the script)")
            return {}
        device, backends = "cuda", args.backends
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
        out_dir = args.out or RESULTS
    res = {"env": {"machine": machine_info(), "loadavg_start": os.getloadavg()},
           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
           "rows": []}  # fmt: skip
    res["check"] = check(device, [b for b in backends if b != "reference"] or ["reference"])
    if not res["check"]["ok"]:
        print("agreement check failed: timings skipped", flush=True)
        parts = []
    if "attention" in parts:
        res["rows"] += part_attention(args, device, dtype, backends)
    if "e2e" in parts:
        res["rows"] += part_e2e(args, device, dtype, backends)
    res["env"]["loadavg_end"] = os.getloadavg()
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"attention_gpu_{datetime.date.today().isoformat()}"
    (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out_dir / f"{stem}.md").write_text(_markdown(res))
    print(f"wrote {out_dir / stem}.json|md", flush=True)
    return res


if __name__ == "__main__":
    main()
