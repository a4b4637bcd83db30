"""Probe for the benchmark redesign: which toy reward can the digits zoo UNet learn to rank?

The first benchmark's smooth random patterns gave a held-out implicit accuracy of ~0.47 in every
arm, the same as the random-label null: the model learned no ranking, so the paper's claims could
not show. This probe trains ``linear_pure`` (w = 0.5, the reference only measures) on Bradley-
Terry pairs (kappa 5) of three rewards R(x, k) = <x, P_k> and records the held-out implicit
accuracy on test-digit pairs during training:

* ``smooth_random``: :func:`diffkit.align.toy.projection_patterns` (the first benchmark);
* ``pc1``: :func:`diffkit.align.toy.principal_patterns` (each class's top principal direction);
* ``ink``: a constant pattern (the amount of ink).

    python benchmarks/align_reward_probe.py --steps 200     # ~10 min on 2 shared cores

Writes benchmarks/results/align_reward_probe.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.align import LinearDPO, LinearDPOConfig
from diffkit.align.toy import (
    PairDataset,
    implicit_accuracy,
    make_preference_pairs,
    principal_patterns,
    projection_patterns,
)
from diffkit.core.machine import machine_info
from diffkit.data import load_digits
from diffkit.train import TrainConfig, fit

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--member", default="digits-unet-eps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=str(RESULTS / "align_reward_probe.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    tr, te = load_digits("train"), load_digits("test")
    size = tr.images.shape[-1]
    rewards = {
        "smooth_random": projection_patterns(size=size),
        "pc1": principal_patterns(tr.images, tr.labels),
        "ink": torch.ones(10, *tr.images.shape[1:]) / size,
    }
    wrapper = models.load(args.member)
    out = {
        "config": vars(args),
        "machine": machine_info(),
        "loadavg_start": os.getloadavg(),
        "rewards": {},
    }
    for name, patterns in rewards.items():
        pairs = make_preference_pairs(tr.images, tr.labels, patterns, 4000, kappa=5.0, seed=0)
        held = make_preference_pairs(te.images, te.labels, patterns, 512, kappa=5.0, seed=1)
        held_cond = wrapper.cond(held["labels"])
        policy = copy.deepcopy(wrapper.model).train().requires_grad_(True)
        objective = LinearDPO(
            LinearDPOConfig(loss="linear_pure", reference="frozen"),
            policy,
            schedule=wrapper.schedule,
        )
        curve = []

        def evaluate(step, metrics, policy=policy, held=held, held_cond=held_cond, curve=curve):
            if step % max(1, args.steps // 4) == 0:
                policy.eval()
                acc = implicit_accuracy(policy, wrapper.model, wrapper.schedule, held, held_cond)
                curve.append({"step": step, "heldout_implicit_acc": round(acc, 4)})
                policy.train()

        cfg = TrainConfig(
            steps=args.steps, batch_size=args.batch, lr=args.lr, log_every=args.steps, resume=False
        )
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fit(objective, policy, PairDataset(pairs, wrapper.cond), cfg, tmp, callbacks=[evaluate])
        out["rewards"][name] = {
            "curve": curve,
            # how often the noisy Bradley-Terry label agrees with the true reward (a ceiling)
            "label_agreement": float((held["reward_w"] > held["reward_l"]).float().mean()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(name, json.dumps(out["rewards"][name]), flush=True)
    out["loadavg_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
