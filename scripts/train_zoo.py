"""Reproduce every shipped tiny checkpoint deterministically (fixed seeds), in dependency order.

python scripts/train_zoo.py --all            # everything (what `make zoo` runs)
python scripts/train_zoo.py digit-classifier  # one member (same as `diffkit zoo train NAME`)
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from diffkit import zoo


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("names", nargs="*", help="zoo members to train (default with --all: every one)")
    p.add_argument("--all", action="store_true", help="train every registered member")
    p.add_argument("--seed", type=int, default=0, help="training seed (shipped weights use 0)")
    args = p.parse_args()
    if not args.names and not args.all:
        p.error("name at least one zoo model, or pass --all")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    # --all trains everything in dependency order; named members train alone and expect their
    # dependencies to be present already (zoo.train checks and says which to build first).
    names = zoo.train_order() if args.all else args.names
    for name in names:
        t0 = time.perf_counter()
        zoo.train(name, seed=args.seed, progress=True)
        logging.info("%s done in %.1f s", name, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
