"""Benchmark: FPD one-step student vs the multi-step MaskGIT teacher, naive KD and ablations.

Spec distill-fpd.md (g). Everything is evaluated on the *evaluation network* (digit-classifier,
never used for training) against the held-out test split: KID (raw unbiased MMD², not rescaled), FID, class accuracy,
precision / recall / coverage, within-class diversity relative to real data, unique token grids,
NFE and measured wall-clock per 1000 samples (decoder included; teacher and student interleaved).

    python benchmarks/distill.py --workers 2    # FPD-1 and naive KD: 3 training seeds at the
                                                # recipe's steps; ablations: 1 seed, 300 steps

Writes benchmarks/results/distill.json, distill.md and distill.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.core.machine import fast_dtype, machine_info, machine_line
from diffkit.distill import FPDConfig, KDPool, LifterConfig, NaiveKD
from diffkit.distill.evaluate import evaluate_samples
from diffkit.distill.pipeline import (
    TEACHER_SAMPLING,
    distill_digits,
    load_digits_zoo,
    sample_digits,
)
from diffkit.train import fit
from diffkit.zoo.digits_fpd import FPD_CONFIG, TRAIN

RESULTS = Path(__file__).parent / "results"
KEYS = ("kid", "fid", "class_acc", "precision", "recall", "coverage", "diversity_ratio",
        "unique_grids")  # fmt: skip


def ablations(base: FPDConfig) -> dict[str, FPDConfig]:
    r = dataclasses.replace
    return {
        "FPD-1 (STE, multi-tau, feature, student source, cond. GAN, drift CFG "
        f"{base.drift_guidance:g}, {base.real_positives} real positives)": base,
        "ablation: soft embedding instead of STE": r(base, ste="soft"),
        "ablation: single bandwidth (0.05)": r(base, bandwidths=(0.05,)),
        "ablation: pixel-space drift": r(base, lifter=LifterConfig(space="pixel")),
        "ablation: teacher refines random tokens": r(base, refine_source="random"),
        "ablation: no GAN": r(base, gan_weight=0.0),
        "ablation: unconditional GAN (the paper's)": r(base, gan_conditional=False),
        "ablation: no drift guidance": r(base, drift_guidance=1.0),
        "ablation: no real positives (the paper's data-free drift)": r(base, real_positives=0),
    }


def evaluate(zoo, labels, seeds, student=None, steps=8, mode="categorical"):
    runs = []
    for s in seeds:
        imgs, ids = sample_digits(zoo.teacher, zoo.tokenizer, labels, student=student,
                                  steps=steps, mode=mode, seed=1000 + s)  # fmt: skip
        m = evaluate_samples(imgs, labels, ids=ids, codebook_size=64)
        runs.append(m)
    return {
        k: {"mean": statistics.fmean(r[k] for r in runs),
            "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0}
        for k in KEYS
    }  # fmt: skip


def merge(per_seed):
    """Mean over training seeds; std over training seeds (or over sampling seeds if only one)."""
    return {
        k: {
            "mean": statistics.fmean(m[k]["mean"] for m in per_seed),
            "std": (statistics.stdev([m[k]["mean"] for m in per_seed])
                    if len(per_seed) > 1 else per_seed[0][k]["std"]),
        }
        for k in KEYS
    }  # fmt: skip


def timing(zoo, student, mode, n=1000, repeats=3, dtype=torch.float32):
    """Median seconds per n samples, teacher-8 (CFG) and student interleaved in one process,
    both under ``dtype`` autocast (fp32: none)."""
    labels = torch.arange(10).repeat_interleave(n // 10)
    t_teacher, t_student = [], []
    cast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    for r in range(repeats):
        with cast:
            t0 = time.perf_counter()
            sample_digits(zoo.teacher, zoo.tokenizer, labels, steps=8, seed=r)
            t_teacher.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sample_digits(zoo.teacher, zoo.tokenizer, labels, student=student, seed=r, mode=mode)
            t_student.append(time.perf_counter() - t0)
    return statistics.median(t_teacher), statistics.median(t_student)


def timing_by_dtype(zoo, student, mode) -> dict:
    """Teacher-8 vs student seconds per 1000 samples in fp32 and, where it differs, in the dtype a
    user would pick on this machine (diffkit.core.machine.fast_dtype: bf16 with AMX)."""
    out = {}
    for dt in dict.fromkeys([torch.float32, fast_dtype("cpu")]):
        t_teacher, t_student = timing(zoo, student, mode, dtype=dt)
        out[str(dt).removeprefix("torch.")] = {
            "teacher_8_steps_cfg": t_teacher,
            "fpd_student": t_student,
            "speedup": t_teacher / t_student,
        }
    return out


def timing_only(name: str) -> None:
    """Re-measure only the sampling times of an existing results file (fp32 and fast dtype)."""
    path = RESULTS / f"{name}.json"
    out = json.loads(path.read_text())
    zoo = load_digits_zoo()
    shipped = models.load("digits-fpd")
    mode = models.metrics("digits-fpd").get("sample_mode", "categorical")
    by = timing_by_dtype(zoo, shipped, mode)
    out["seconds_per_1000"] = by["float32"]
    out["seconds_per_1000_by_dtype"] = by
    out["timing_machine"] = machine_info()
    out["timing_loadavg"] = list(os.getloadavg())
    path.write_text(json.dumps(out, indent=2) + "\n")
    write_md(out, name)


def _job(job: dict) -> dict:
    """One training run + its evaluation (runs in a worker process, one torch thread)."""
    torch.set_num_threads(1)
    zoo = load_digits_zoo()
    labels = torch.arange(10).repeat_interleave(job["per_class"])
    seeds = list(range(job["eval_seeds"]))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if job["kind"] == "kd":
            pool = KDPool(zoo.teacher, job["pool_per_class"], steps=8, guidance_scale=2.0,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
            student = zoo.teacher.make_student()
            fit(NaiveKD(zoo.teacher), student, pool, job["train"], tmp)
            student.eval()
        else:
            student, _ = distill_digits(job["cfg"], job["train"], tmp, zoo=zoo)
    train_s = time.perf_counter() - t0
    return {
        mode: evaluate(zoo, labels, seeds, student=student, mode=mode) for mode in job["modes"]
    } | {"train_seconds": train_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--steps", type=int, default=TRAIN.steps, help="FPD-1 and naive-KD training steps"
    )
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="training seeds of FPD-1 and naive KD")  # fmt: skip
    p.add_argument("--ablation-steps", type=int, default=300, help="training steps per ablation")
    p.add_argument("--ablation-seeds", type=int, nargs="+", default=[0],
                   help="training seeds per ablation")  # fmt: skip
    p.add_argument("--eval-seeds", type=int, default=3, help="sampling seeds per model")
    p.add_argument("--per-class", type=int, default=200,
                   help="samples per class per evaluation (spec: about 2000 in all)")  # fmt: skip
    p.add_argument("--kd-pool", type=int, default=200,
                   help="teacher-8 samples per class in the naive-KD training pool")  # fmt: skip
    p.add_argument("--skip-ablations", action="store_true", help="only FPD-1 among the variants")
    p.add_argument("--workers", type=int, default=1,
                   help="training runs in parallel processes (one torch thread each)")  # fmt: skip
    p.add_argument("--name", default="distill", help="results file stem in benchmarks/results/")
    p.add_argument("--timing-only", action="store_true",
                   help="only re-measure sampling times (fp32 and the machine's fast dtype) into "
                        "the existing results file")  # fmt: skip
    args = p.parse_args()
    if args.timing_only:
        torch.set_num_threads(1)
        return timing_only(args.name)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    t_start = time.perf_counter()
    zoo = load_digits_zoo()
    labels = torch.arange(10).repeat_interleave(args.per_class)
    seeds = list(range(args.eval_seeds))
    rows = []

    def add(name, nfe, metrics, **extra):
        rows.append({"method": name, "nfe": nfe, **metrics, **extra})
        print(name, json.dumps({k: round(v["mean"], 4) for k, v in metrics.items()}), flush=True)

    # the training runs (FPD-1 + naive KD over training seeds, ablations) go to a process pool
    train = dataclasses.replace(TRAIN, steps=args.steps)
    common = {"per_class": args.per_class, "eval_seeds": args.eval_seeds}
    jobs = {}
    for ts in args.train_seeds:
        kd_train = dataclasses.replace(train, batch_size=80, ema_decay=0.0, seed=ts)
        jobs[("kd", ts)] = {**common, "kind": "kd", "train": kd_train,
                            "pool_per_class": args.kd_pool, "modes": ("categorical", "argmax")}  # fmt: skip
        jobs[("fpd", ts)] = {**common, "kind": "fpd", "cfg": FPD_CONFIG,
                             "train": dataclasses.replace(train, seed=ts),
                             "modes": (FPD_CONFIG.sample_mode,)}  # fmt: skip
    variants = {} if args.skip_ablations else dict(list(ablations(FPD_CONFIG).items())[1:])
    abl_train = dataclasses.replace(TRAIN, steps=args.ablation_steps)
    if not args.skip_ablations:
        variants = {next(iter(ablations(FPD_CONFIG))): FPD_CONFIG, **variants}
    for name, cfg in variants.items():
        for ts in args.ablation_seeds:
            jobs[("abl", name, ts)] = {**common, "kind": "fpd", "cfg": cfg,
                                       "train": dataclasses.replace(abl_train, seed=ts),
                                       "modes": (cfg.sample_mode,)}  # fmt: skip
    if args.workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
            futures = {k: ex.submit(_job, j) for k, j in jobs.items()}
            # the evaluation-only rows run here meanwhile
            baseline_rows = _baselines(zoo, labels, seeds)
            results = {k: f.result() for k, f in futures.items()}
    else:
        baseline_rows = _baselines(zoo, labels, seeds)
        results = {k: _job(j) for k, j in jobs.items()}
    for r in baseline_rows:
        add(*r)

    kd = [results[("kd", ts)] for ts in args.train_seeds]
    for mode in ("categorical", "argmax"):
        add(f"naive KD, {mode} tokens ({args.steps} steps)", 1, merge([r[mode] for r in kd]))
    fpd = [results[("fpd", ts)] for ts in args.train_seeds]
    add(f"FPD-1, {FPD_CONFIG.sample_mode} tokens ({args.steps} steps)", 1,
        merge([r[FPD_CONFIG.sample_mode] for r in fpd]),
        train_seconds=statistics.fmean(r["train_seconds"] for r in fpd))  # fmt: skip
    for name, cfg in variants.items():
        per_seed = [results[("abl", name, ts)] for ts in args.ablation_seeds]
        add(f"{name} ({args.ablation_steps} steps)", 1,
            merge([r[cfg.sample_mode] for r in per_seed]),
            train_seconds=statistics.fmean(r["train_seconds"] for r in per_seed))  # fmt: skip

    # the shipped zoo student (loaded only now: `make zoo` may retrain it while this runs)
    shipped = models.load("digits-fpd")
    mode = models.metrics("digits-fpd").get("sample_mode", "categorical")
    steps = models.metrics("digits-fpd").get("steps")
    add(f"FPD-1, shipped digits-fpd ({steps} steps), {mode} tokens", 1,
        evaluate(zoo, labels, seeds, student=shipped, mode=mode))  # fmt: skip
    by_dtype = timing_by_dtype(zoo, shipped, mode)
    real = evaluate_real(labels)
    out = {
        "device": "CPU (2 shared cores, torch threads <= 2)",
        "machine": machine_info(),
        "loadavg_start_end": [list(LOAD0), list(os.getloadavg())],
        "config": {
            **vars(args),
            "fpd": dataclasses.asdict(FPD_CONFIG),
            "train": dataclasses.asdict(train),
        },  # fmt: skip
        "notes": "KID/FID on digit-classifier penultimate features vs the 359-image test split; "
        "mean +- std over training seeds (over sampling seeds when one training seed). Teacher "
        f"sampling: {TEACHER_SAMPLING}, cosine schedule.",
        "rows": rows,
        "real_train_vs_test": real,
        "seconds_per_1000": by_dtype["float32"],
        "seconds_per_1000_by_dtype": by_dtype,
        "wall_seconds": time.perf_counter() - t_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2) + "\n")
    write_md(out, args.name)
    plot(out, args.name)
    print(f"done in {out['wall_seconds']:.0f} s; speedup {out['seconds_per_1000']['speedup']:.1f}x")


def _baselines(zoo, labels, seeds) -> list[tuple]:
    """Rows that need no training: the teacher at T steps, the student at init, the shipped one."""
    rows = []
    for T in (1, 2, 4, 8):
        rows.append((f"teacher, {T} step{'s' if T > 1 else ''} (CFG 2)", 2 * T,
                     evaluate(zoo, labels, seeds, steps=T)))  # fmt: skip
    init = zoo.teacher.make_student().eval()
    for mode in ("categorical", "argmax"):
        rows.append((f"student at init (teacher, 1 pass from z_init), {mode} tokens", 1,
                     evaluate(zoo, labels, seeds, init, mode=mode)))  # fmt: skip
    return rows


def evaluate_real(labels):
    from diffkit.data.digits import load_digits

    tr = load_digits("train")
    idx = torch.cat(
        [torch.nonzero(tr.labels == c).flatten()[: (labels == c).sum()] for c in range(10)]
    )
    m = evaluate_samples(tr.images[idx], tr.labels[idx])
    return {k: m[k] for k in KEYS if k in m}


def write_md(out, name: str = "distill") -> None:
    lines = [
        "| method | NFE | KID | FID | class acc | precision | recall | coverage | diversity | unique |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["rows"]:
        f = lambda k, d=3, r=r: f"{r[k]['mean']:.{d}f} ± {r[k]['std']:.{d}f}"  # noqa: E731
        lines.append(
            f"| {r['method']} | {r['nfe']} | {f('kid')} | {f('fid', 1)} | {f('class_acc')} | "
            f"{f('precision', 2)} | {f('recall', 2)} | {f('coverage', 2)} | "
            f"{f('diversity_ratio', 2)} | {f('unique_grids', 2)} |"
        )
    rr = out["real_train_vs_test"]
    lines.append(
        f"| real train images (floor) | – | {rr['kid']:.3f} | {rr['fid']:.1f} | {rr['class_acc']:.3f} "
        f"| {rr['precision']:.2f} | {rr['recall']:.2f} | {rr['coverage']:.2f} | "
        f"{rr['diversity_ratio']:.2f} | – |"
    )
    s = out["seconds_per_1000"]
    lines += [
        "",
        f"Wall-clock per 1000 samples (decoder included, median of 3, interleaved): teacher 8 steps "
        f"+ CFG {s['teacher_8_steps_cfg']:.2f} s, FPD student {s['fpd_student']:.3f} s "
        f"(**{s['speedup']:.1f}x**). {out['device']}; load average {out['loadavg_start_end']}.",
        f"Machine: {machine_line(out['machine']) if 'machine' in out else 'CPU kind not recorded'}.",
    ]
    for dt, t in out.get("seconds_per_1000_by_dtype", {}).items():
        where = out.get("timing_machine", out.get("machine"))
        lines.append(
            f"- {dt}: teacher-8 {t['teacher_8_steps_cfg']:.2f} s, student {t['fpd_student']:.3f} s "
            f"per 1000 samples ({t['speedup']:.1f}x); {machine_line(where) if where else ''}"
        )
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")


def plot(out, name: str = "distill") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = out["rows"]
    names = [r["method"].split(" (")[0] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=110)
    for ax, key, label in ((axes[0], "kid", "KID (lower is better)"),
                           (axes[1], "class_acc", "class accuracy")):  # fmt: skip
        ax.barh(range(len(rows)), [r[key]["mean"] for r in rows],
                xerr=[r[key]["std"] for r in rows], color="tab:blue")  # fmt: skip
        ax.set_yticks(range(len(rows)), names if ax is axes[0] else [""] * len(rows), fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel(label)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(f"FPD vs teacher on digits (CPU); sampling speedup vs teacher-8 "
                 f"{out['seconds_per_1000']['speedup']:.1f}x", fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(RESULTS / f"{name}.png")


LOAD0 = os.getloadavg()

if __name__ == "__main__":
    main()
