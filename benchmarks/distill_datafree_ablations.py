"""The spec's missing FPD ablations on the paper's data-free FPD (issue 16, item 5).

Spec distill-fpd.md (g): the re-mask ratio r in {0.1, 0.3, 0.5} (fixed) against the default
r ~ U[0.1, 0.5], and the drift space: the lifter's features (the default) against the tokens'
codebook embeddings (``LifterConfig(space="embedding")``). Every variant is data-free FPD-1 (the
configuration of benchmarks/distill_datafree.py: no GAN, no real positives, no drift guidance) and
is trained for ``--steps`` steps per training seed and scored like the headline (evaluation
network, held-out split; ``--per-class`` samples per class x ``--eval-seeds`` sampling seeds).

    python benchmarks/distill_datafree_ablations.py --steps 150 --seeds 0 1

Runs one after another in this process, seed-major (every variant of seed 0 first), and rewrites
benchmarks/results/distill_datafree_ablations.json after each run with the per-run metrics and a
summary per variant (mean, and std over training seeds). Resumable: ``--work-dir`` keeps each
run's checkpoints (every 25 steps) and finished metrics, and a rerun continues where a cut-short
run stopped. The reduced sizes it was run with are recorded in the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from diffkit.core.machine import machine_info

sys.path.insert(0, str(Path(__file__).parent))
from distill import KEYS  # noqa: E402  (benchmarks/distill.py)
from distill_datafree import DATA_FREE, _student_eval  # noqa: E402  (benchmarks/)

from diffkit.distill import LifterConfig  # noqa: E402
from diffkit.distill.pipeline import distill_digits, load_digits_zoo  # noqa: E402
from diffkit.zoo.digits_fpd import TRAIN  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def variants() -> dict[str, object]:
    r = dataclasses.replace
    return {
        "data-free FPD-1, r ~ U[0.1, 0.5], lifter features (the default)": DATA_FREE,
        "drift space: codebook embeddings": r(DATA_FREE, lifter=LifterConfig(space="embedding")),
        "r = 0.1": r(DATA_FREE, remask_min=0.1, remask_max=0.1),
        "r = 0.3": r(DATA_FREE, remask_min=0.3, remask_max=0.3),
        "r = 0.5": r(DATA_FREE, remask_min=0.5, remask_max=0.5),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--eval-seeds", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "distill_datafree_ablations.json"))
    p.add_argument(
        "--work-dir",
        default="out/distill_datafree_ablations",
        help="checkpoints and finished runs; a rerun with the same folder resumes",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = load_digits_zoo()
    out = {
        "device": "CPU (2 cores shared with other jobs; one torch thread)",
        "machine": machine_info(),
        "config": {**vars(args), "base_fpd": dataclasses.asdict(DATA_FREE)},
        "runs": [],
    }
    work = Path(args.work_dir)
    for seed in args.seeds:
        for i, (name, cfg) in enumerate(variants().items()):
            run_dir = work / f"variant{i}_seed{seed}_steps{args.steps}"
            done = run_dir / "result.json"
            if done.is_file():
                out["runs"].append(json.loads(done.read_text()))
                continue
            t0, load0 = time.perf_counter(), os.getloadavg()
            train = dataclasses.replace(TRAIN, steps=args.steps, seed=seed, checkpoint_every=25)
            student, _ = distill_digits(cfg, train, run_dir, zoo=zoo)
            train_s = time.perf_counter() - t0
            m = _student_eval(zoo, student, args.per_class, range(args.eval_seeds), cfg.sample_mode)
            run = {
                "variant": name, "seed": seed, "metrics": m, "train_seconds_last_invocation": train_s,
                "loadavg_start_end": [list(load0), list(os.getloadavg())],
                "remask": [cfg.remask_min, cfg.remask_max], "space": cfg.lifter.space,
            }  # fmt: skip
            done.write_text(json.dumps(run, indent=2) + "\n")
            out["runs"].append(run)
            out["summary"] = summary(out["runs"])
            Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
            print(name, seed, round(m["kid"]["mean"], 2), round(m["class_acc"]["mean"], 4),
                  flush=True)  # fmt: skip
    out["summary"] = summary(out["runs"])
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


def summary(runs: list[dict]) -> dict:
    """Per variant: mean over training seeds of each metric (each the mean over sampling seeds),
    std over training seeds (over sampling seeds when only one training seed has finished)."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["variant"], []).append(r["metrics"])
    return {
        name: {"training_seeds": len(ms), **{k: {
            "mean": statistics.fmean(m[k]["mean"] for m in ms),
            "std": statistics.stdev([m[k]["mean"] for m in ms]) if len(ms) > 1 else ms[0][k]["std"],
        } for k in KEYS}}
        for name, ms in by.items()
    }  # fmt: skip


if __name__ == "__main__":
    main()
