"""Generate the test corpus, curate it locally, score the dedup against the ground truth.

Run: python examples/curate_quickstart.py [--ray]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from diffkit import curate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/curate_example")
    ap.add_argument("--n-base", type=int, default=30)
    ap.add_argument(
        "--ray", action="store_true", help="use the RayExecutor (needs the [ray] extra)"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)

    info = curate.make_corpus(out / "corpus", curate.CorpusConfig(n_base=args.n_base, seed=0))
    print(f"corpus: {info['rows']} rows, roles {info['roles']}")

    cfg = curate.load_config("local", ["shard_size=64"])
    executor = curate.RayExecutor(num_cpus=2) if args.ray else curate.LocalExecutor()
    summary = curate.Pipeline.from_config(cfg).run(out / "corpus", out / "run", executor)
    print(f"{summary['rows_in']} in -> {summary['kept']} kept, {summary['dropped']} dropped")
    for st in summary["stages"]:
        print(f"  {st['stage']:<12} dropped {st['dropped']:>4}  {st['dropped_by_reason']}")

    scores = curate.evaluate_dedup(out / "run", out / "corpus")
    keys = ("pairwise_precision", "pairwise_recall", "bcubed_f1", "false_merges")
    print(json.dumps({k: scores[k] for k in keys}, indent=1))
    print("report:", curate.build_report(out / "run"))


if __name__ == "__main__":
    main()
