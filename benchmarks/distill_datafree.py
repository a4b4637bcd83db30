"""Headline measurement of the paper's data-free FPD against a tuned teacher (issue 16, item 1).

1. The teacher's sampler is swept on the teacher alone: CFG scale x choice temperature at 8 steps,
   scored by KID on the evaluation network; the best setting is re-evaluated on the full sample
   budget, and the number of steps is swept at that setting (recorded; teacher-8 is the reference).
2. Data-free FPD-1 (the recipe with gan_weight 0, real_positives 0 and drift guidance 1: no real
   image anywhere) is trained for the given steps and seeds and evaluated the same way.
3. Sampling time of the tuned teacher-8 and the student, interleaved in one process.

    python benchmarks/distill_datafree.py --workers 4    # 3 training seeds in parallel

Writes benchmarks/results/distill_datafree.json (``--out``). The configuration it was run with is
recorded in the file; timings on a shared machine are ratios only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from diffkit.core.machine import machine_info

sys.path.insert(0, str(Path(__file__).parent))
from distill import KEYS, merge  # noqa: E402  (benchmarks/distill.py)

from diffkit.distill.evaluate import evaluate_samples  # noqa: E402
from diffkit.distill.fpd import sample_student  # noqa: E402
from diffkit.distill.pipeline import distill_digits, load_digits_zoo  # noqa: E402
from diffkit.zoo.digits_fpd import DATA_FREE_CONFIG, TRAIN  # noqa: E402

RESULTS = Path(__file__).parent / "results"
DATA_FREE = DATA_FREE_CONFIG  # the zoo member digits-fpd-datafree


def _teacher_eval(zoo, per_class, seeds, guidance, choice_t, steps=8):
    def draw(cond, g):
        return zoo.teacher.sample(cond, steps, generator=g, guidance_scale=guidance,
                                  choice_temperature=choice_t)  # fmt: skip

    return _eval_runs(zoo, per_class, seeds, draw)


def _student_eval(zoo, student, per_class, seeds, mode):
    return _eval_runs(
        zoo, per_class, seeds,
        lambda cond, g: sample_student(zoo.teacher, student, cond, mode=mode, generator=g),
    )  # fmt: skip


def _eval_runs(zoo, per_class, seeds, draw):
    """Metrics (mean, std over sampling seeds) of ``draw(condition, generator) -> token ids``,
    sampled in batches of 500, decoded and scored by the evaluation network."""
    labels = torch.arange(10).repeat_interleave(per_class)
    runs = []
    for s in seeds:
        g = torch.Generator().manual_seed(1000 + s)
        ids = torch.cat([draw(zoo.teacher.condition(labels[i : i + 500]), g)
                         for i in range(0, len(labels), 500)])  # fmt: skip
        imgs = zoo.tokenizer.decode(zoo.tokenizer.embed(ids)).clamp(-1, 1)
        runs.append(evaluate_samples(imgs, labels, ids=ids, codebook_size=64))
    return {k: {"mean": statistics.fmean(r[k] for r in runs),
                "std": statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0}
            for k in KEYS}  # fmt: skip


def _cached(work: Path, key: str, fn):
    """``fn()``, or its result from an earlier (cut-short) run of the same work folder."""
    f = work / "cache.json"
    cache = json.loads(f.read_text()) if f.is_file() else {}
    if key not in cache:
        cache[key] = fn()
        cache = {**(json.loads(f.read_text()) if f.is_file() else {}), key: cache[key]}
        f.write_text(json.dumps(cache, indent=2) + "\n")
    return cache[key]


def _tag(cfg) -> str:
    """Run-folder suffix of a re-mask range other than the default (runs never mix configs)."""
    if (cfg.remask_min, cfg.remask_max) == (DATA_FREE.remask_min, DATA_FREE.remask_max):
        return ""
    return f"_r{cfg.remask_min:g}-{cfg.remask_max:g}"


def _train_job(seed, steps, per_class, eval_seeds, work, cfg=DATA_FREE):
    """Train (resuming from the seed's latest checkpoint if a run was cut short) and evaluate."""
    torch.set_num_threads(1)
    name = f"seed{seed}{_tag(cfg)}"
    done = Path(work, f"{name}.json")
    if done.is_file():
        return json.loads(done.read_text())
    zoo = load_digits_zoo()
    t0 = time.perf_counter()
    train = dataclasses.replace(TRAIN, steps=steps, seed=seed, checkpoint_every=25)
    student, _ = distill_digits(cfg, train, Path(work, name), zoo=zoo)
    train_s = time.perf_counter() - t0
    m = _student_eval(zoo, student, per_class, range(eval_seeds), cfg.sample_mode)
    torch.save(student.state_dict(), Path(work, f"student{seed}{_tag(cfg)}.pt"))
    out = {"metrics": m, "train_seconds_last_invocation": train_s,
           "loadavg_end": list(os.getloadavg())}  # fmt: skip
    done.write_text(json.dumps(out, indent=2) + "\n")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=TRAIN.steps)
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--per-class", type=int, default=200, help="final evaluations")
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--sweep-per-class", type=int, default=100, help="teacher sweep evaluations")
    p.add_argument("--sweep-seeds", type=int, default=2)
    p.add_argument("--choice-temperatures", type=float, nargs="+", default=[1.0, 2.0, 4.5, 8.0])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument(
        "--teacher-steps",
        type=int,
        nargs="+",
        default=[4, 8, 12, 16],
        help="steps swept at the chosen (CFG, choice temperature)",
    )
    p.add_argument(
        "--remask",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="re-mask ratio range r ~ U[MIN, MAX] (default: the recipe's 0.1 0.5); other ranges "
        "train in their own run folders",
    )
    p.add_argument("--workers", type=int, default=2, help="processes; training uses workers - 1")
    p.add_argument(
        "--work-dir",
        default="out/distill_datafree",
        help="checkpoints and finished parts; a rerun with the same folder resumes",
    )
    p.add_argument("--out", default=str(RESULTS / "distill_datafree.json"))
    args = p.parse_args()
    cfg = DATA_FREE
    if args.remask is not None:
        cfg = dataclasses.replace(DATA_FREE, remask_min=args.remask[0], remask_max=args.remask[1])
    torch.set_num_threads(1)
    t_start, load0 = time.perf_counter(), os.getloadavg()
    zoo = load_digits_zoo()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    import multiprocessing as mp

    with ProcessPoolExecutor(max(1, args.workers - 1), mp_context=mp.get_context("spawn")) as ex:
        futures = {s: ex.submit(_train_job, s, args.steps, args.per_class, args.eval_seeds, work, cfg)
                   for s in args.train_seeds}  # fmt: skip
        n_sweep, n_final = (
            (args.sweep_per_class, args.sweep_seeds),
            (args.per_class, args.eval_seeds),
        )

        def teacher(cfg_scale, ct, n, steps=8):  # cached: a rerun resumes the sweep
            key = f"teacher/cfg{cfg_scale:g}/ct{ct:g}/steps{steps}/{n[0]}x{n[1]}"
            return _cached(work, key, lambda: _teacher_eval(zoo, n[0], range(n[1]), cfg_scale, ct,
                                                            steps=steps))  # fmt: skip

        sweep = []
        for cfg_scale in args.guidance:
            for ct in args.choice_temperatures:
                m = teacher(cfg_scale, ct, n_sweep)
                sweep.append({"guidance": cfg_scale, "choice_temperature": ct, **m})
                print("teacher-8", cfg_scale, ct, round(m["kid"]["mean"], 2),
                      round(m["class_acc"]["mean"], 4), flush=True)  # fmt: skip
        best = min(sweep, key=lambda r: r["kid"]["mean"])
        steps_sweep = []
        for n in args.teacher_steps:
            m = teacher(best["guidance"], best["choice_temperature"], n_sweep, steps=n)
            steps_sweep.append({"steps": n, **m})
            print("teacher steps", n, round(m["kid"]["mean"], 2), flush=True)
        tuned = teacher(best["guidance"], best["choice_temperature"], n_final)
        default = teacher(2.0, 2.0, n_final)
        results = {s: f.result() for s, f in futures.items()}
    fpd = merge([r["metrics"] for r in results.values()])
    # interleaved timing: tuned teacher-8 vs the seed-0 student, 1000 samples, median of 3
    student = zoo.teacher.make_student().eval()
    student.load_state_dict(torch.load(work / f"student{args.train_seeds[0]}{_tag(cfg)}.pt"))
    labels = torch.arange(10).repeat_interleave(100)
    tt, ts = [], []
    for r in range(3):
        g = torch.Generator().manual_seed(r)
        t0 = time.perf_counter()
        ids = zoo.teacher.sample(zoo.teacher.condition(labels), 8, generator=g,
                                 guidance_scale=best["guidance"],
                                 choice_temperature=best["choice_temperature"])  # fmt: skip
        zoo.tokenizer.decode(zoo.tokenizer.embed(ids))
        tt.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ids = sample_student(zoo.teacher, student, zoo.teacher.condition(labels),
                             mode=cfg.sample_mode, generator=g)  # fmt: skip
        zoo.tokenizer.decode(zoo.tokenizer.embed(ids))
        ts.append(time.perf_counter() - t0)
    out = {
        "device": "CPU (2 cores shared with other jobs; one torch thread per process)",
        "machine": machine_info(),
        "loadavg_start_end": [list(load0), list(os.getloadavg())],
        "config": {**vars(args), "fpd": dataclasses.asdict(cfg)},
        "teacher_sweep": sweep,
        "teacher_best": {
            "guidance": best["guidance"],
            "choice_temperature": best["choice_temperature"],
        },  # fmt: skip
        "teacher_steps_sweep_at_best": steps_sweep,
        "teacher_8_tuned": tuned,
        "teacher_8_default_cfg2_ct2": default,
        "fpd_data_free": fpd,
        "fpd_data_free_per_seed": {s: r for s, r in results.items()},
        "seconds_per_1000_interleaved_shared_machine": {
            "teacher_8_tuned": statistics.median(tt),
            "fpd_student": statistics.median(ts),
            "ratio": statistics.median(tt) / statistics.median(ts),
        },  # fmt: skip
        "wall_seconds": time.perf_counter() - t_start,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"tuned": {k: round(v["mean"], 4) for k, v in tuned.items()},
                      "fpd": {k: round(v["mean"], 4) for k, v in fpd.items()},
                      "ratio": out["seconds_per_1000_interleaved_shared_machine"]["ratio"]}))  # fmt: skip


if __name__ == "__main__":
    main()
