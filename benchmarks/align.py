"""Benchmark: Linear-DPO vs Diffusion-DPO, frozen vs EMA reference, on the toy projection reward.

For BOTH zoo models (``digits-unet-eps``: eps UNet; ``digits-sd3-flow``: flow SD3 transformer):

1. offline preference pairs from the digits train split, labelled by Bradley-Terry noise on a
   fixed projection reward R(x, k) = <x, P_k> (:mod:`diffkit.align.toy`; not the evaluation net);
2. beta calibrated once per model so that beta * std(m) ~ 1.5 after 10 warm-up steps;
3. arms {sigmoid, linear} x {frozen, EMA d=0.99} over an LR sweep and seeds, plus a null control
   (linear + EMA on random labels); each run is ``diffkit.train.fit`` on a copy of the base model;
4. metrics with fixed sampling noise: mean reward of guided samples, paired-seed win-rate against
   the base model, drift (held-out denoising MSE relative to base), held-out implicit accuracy,
   fraction of Linear-DPO weights at the clip bounds, ||theta - theta_ref||;
5. step time (interleaved, median) and peak RSS (one subprocess each) of every reference strategy
   against plain fine-tuning.

Writes benchmarks/results/align.json, align_pareto.png and align.md. ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from diffkit import models
from diffkit.align import LinearDPO, LinearDPOConfig
from diffkit.align.toy import (
    PairDataset,
    denoising_mse,
    implicit_accuracy,
    make_preference_pairs,
    principal_patterns,
    projection_patterns,
    projection_reward,
)
from diffkit.core.machine import machine_info
from diffkit.data import load_digits
from diffkit.train import TrainConfig, fit

RESULTS = Path(__file__).parent / "results"
MEMBERS = {"unet": "digits-unet-eps", "sd3": "digits-sd3-flow"}


def _cond(wrapper, labels):
    with torch.no_grad():
        return wrapper.cond(labels)


class Evaluator:
    """Fixed-noise sampling reward, win-rate vs base, drift and implicit accuracy."""

    def __init__(self, wrapper, patterns, per_class: int, steps: int, seed: int = 0):
        self.w, self.P, self.steps = wrapper, patterns, steps
        self.labels = torch.arange(10).repeat_interleave(per_class)
        g = torch.Generator().manual_seed(seed + 777)
        S = wrapper.config["image_size"]
        self.noise = torch.randn(len(self.labels), 1, S, S, generator=g)
        test = load_digits("test")
        self.test_x, self.test_cond = test.images[:128], _cond(wrapper, test.labels[:128])
        self.held = make_preference_pairs(test.images, test.labels, patterns, 128, seed=seed + 5)
        self.held_cond = _cond(wrapper, self.held["labels"])
        self.base = wrapper.model
        self.base_reward = self._rewards(self.base)
        self.base_mse = denoising_mse(self.base, wrapper.schedule, self.test_x, self.test_cond)

    def _rewards(self, net):
        x = self.w.sample(
            self.labels, steps=self.steps, guidance=2.0, denoiser=net, noise=self.noise.clone()
        )
        return projection_reward(x, self.labels, self.P)

    def __call__(self, net) -> dict:
        was = net.training
        net.eval()
        r = self._rewards(net)
        mse = denoising_mse(net, self.w.schedule, self.test_x, self.test_cond)
        acc = implicit_accuracy(net, self.base, self.w.schedule, self.held, self.held_cond)
        net.train(was)
        return {
            "reward": float(r.mean()),
            "reward_gain": float(r.mean() - self.base_reward.mean()),
            "win_rate": float((r > self.base_reward).float().mean()),
            "drift": mse / self.base_mse - 1.0,
            "heldout_implicit_acc": acc,
        }


def run_arm(wrapper, data, ev, cfg: LinearDPOConfig, lr, steps, seed, batch, curve_at=0) -> dict:
    torch.manual_seed(seed)
    policy = copy.deepcopy(wrapper.model).train().requires_grad_(True)
    obj = LinearDPO(cfg, policy, schedule=wrapper.schedule)
    curve, train_metrics = [], {}

    def cb(step, metrics):
        train_metrics.update(metrics)
        if curve_at and step == curve_at:
            curve.append({"step": step, **ev(policy)})

    tcfg = TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        weight_decay=0.0,
        seed=seed,
        log_every=steps,
        resume=False,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fit(obj, policy, data, tcfg, tmp, callbacks=[cb])
    secs = time.perf_counter() - t0
    final = ev(policy)
    curve.append({"step": steps, **final})
    keep = (
        "margin",
        "implicit_acc",
        "weight",
        "clip_low_frac",
        "clip_high_frac",
        "drift",
        "beta_margin_std",
        "mse_w",
        "mse_l",
    )
    return {
        **final,
        "curve": curve,
        "train_seconds": round(secs, 1),
        "train_last": {k: train_metrics[k] for k in keep if k in train_metrics},
    }


def calibrate_beta(wrapper, data, lr, batch) -> float:
    """beta such that beta * std(m) ~ 1.5 after 10 warm-up steps (linear loss, EMA, beta = 1)."""
    policy = copy.deepcopy(wrapper.model).train()
    obj = LinearDPO(
        LinearDPOConfig(beta=1.0, reference="ema", ema_decay=0.99),
        policy,
        schedule=wrapper.schedule,
    )
    stds = []
    with tempfile.TemporaryDirectory() as tmp:
        fit(
            obj,
            policy,
            data,
            TrainConfig(steps=10, batch_size=batch, lr=lr, log_every=1, resume=False),
            tmp,
            callbacks=[lambda s, m: stds.append(m["beta_margin_std"])],
        )
    return 1.5 / statistics.median(stds[-5:])


def timing(wrapper, data, batch, steps) -> list[dict]:
    """Interleaved per-step times of each reference strategy vs plain fine-tuning (SFT)."""
    from diffkit.align.pipeline import add_lora_
    from diffkit.core.objective import StepContext

    kinds = ["plain", "frozen", "ema", "lora_base", "lora_ema"]
    setups = {}
    for k in kinds:
        pol = copy.deepcopy(wrapper.model).train()
        if k.startswith("lora"):
            add_lora_(pol, 4, 4.0)
        obj = (
            None
            if k == "plain"
            else LinearDPO(LinearDPOConfig(reference=k), pol, schedule=wrapper.schedule)
        )
        opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-4)
        setups[k] = (pol, obj, opt)
    times = {k: [] for k in kinds}
    from diffkit.align.objective import paired_errors

    for i in range(steps):
        batch_ = data.get_batch(torch.arange(i * batch, (i + 1) * batch) % len(data))
        ctx = StepContext(step=i, generator=torch.Generator(), sample_seeds=torch.arange(batch))
        for k in kinds:
            pol, obj, opt = setups[k]
            t0 = time.perf_counter()
            if obj is None:  # plain fine-tuning on the winners (same 2B-sample forward)
                noise = ctx.randn(*batch_["x_w"].shape[1:])
                t = wrapper.schedule.sample_t(batch, torch.Generator().manual_seed(i))
                ew, el = paired_errors(
                    pol, wrapper.schedule, batch_["x_w"], batch_["x_l"], batch_["cond"], noise, t
                )
                loss = (ew + el).mean()
            else:
                loss = obj(pol, batch_, ctx).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            if obj is not None:
                obj.after_step(pol, i)
            times[k].append(time.perf_counter() - t0)
    out = []
    base = statistics.median(times["plain"][2:])
    for k in kinds:
        pol, obj, _ = setups[k]
        extra = 0
        if obj is not None and hasattr(obj.reference, "module"):
            extra = sum(p.numel() * p.element_size() for p in obj.reference.module.parameters())
        elif obj is not None and getattr(obj.reference, "decay", None) is not None:
            extra = sum(t.numel() * t.element_size() for t in obj.reference.shadow.values())
        med = statistics.median(times[k][2:])
        out.append(
            {
                "strategy": k,
                "step_ms": round(1000 * med, 1),
                "vs_plain": round(med / base, 2),
                "reference_extra_MB": round(extra / 2**20, 3),
                "trainable_params": sum(p.numel() for p in pol.parameters() if p.requires_grad),
            }
        )
    return out


def memory_probe(member: str, strategy: str, batch: int) -> dict:
    """Peak RSS (MB) of a process that loads the model and runs 5 steps of one strategy."""
    code = f"""
import json, resource, sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
torch.set_num_threads(1)
from align import _probe
print(json.dumps(_probe({member!r}, {strategy!r}, {batch})))
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"strategy": strategy, "error": res.stderr[-500:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _probe(member, strategy, batch):
    from diffkit.align.pipeline import add_lora_

    wrapper = models.load(member)
    pol = wrapper.model.train()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tr = load_digits("train")
    P = projection_patterns()
    data = PairDataset(make_preference_pairs(tr.images, tr.labels, P, 64), wrapper.cond)
    if strategy.startswith("lora"):
        add_lora_(pol, 4, 4.0)
    obj = None
    if strategy != "plain":
        obj = LinearDPO(LinearDPOConfig(reference=strategy), pol, schedule=wrapper.schedule)
    opt = torch.optim.AdamW([p for p in pol.parameters() if p.requires_grad], lr=1e-4)
    from diffkit.core.objective import StepContext

    for i in range(5):
        b = data.get_batch(torch.arange(batch))
        ctx = StepContext(step=i, generator=torch.Generator(), sample_seeds=torch.arange(batch))
        if strategy == "plain":
            from diffkit.align.objective import paired_errors

            t = wrapper.schedule.sample_t(batch)
            ew, el = paired_errors(
                pol,
                wrapper.schedule,
                b["x_w"],
                b["x_l"],
                b["cond"],
                ctx.randn(*b["x_w"].shape[1:]),
                t,
            )
            loss = (ew + el).mean()
        else:
            loss = obj(pol, b, ctx).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if obj is not None:
            obj.after_step(pol, i)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "strategy": strategy,
        "peak_rss_MB": round(peak, 1),
        "rss_after_load_MB": round(base_rss, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 seed, 1 LR, few steps (smoke test)")
    ap.add_argument("--models", default="unet,sd3")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16, help="pairs per optimizer step")
    ap.add_argument("--lrs", default="3e-4,1e-3")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=10, help="evaluation samples per class")
    ap.add_argument("--sampler-steps", type=int, default=8)
    ap.add_argument("--curve", action="store_true", help="also evaluate at half the steps")
    ap.add_argument(
        "--reward",
        default="smooth",
        choices=("smooth", "pc1", "ink"),
        help="smooth random patterns (the first benchmark; not learnable to rank by the digits "
        "UNet in short runs), each class's top principal direction, or the amount of ink (a "
        "constant pattern); see benchmarks/align_reward_probe.py",
    )
    ap.add_argument("--merge", nargs="+", help="merge result files (of --models runs) into align")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.merge:
        parts = [json.loads((RESULTS / f).read_text()) for f in args.merge]
        merged = {**parts[0], "models": {}, "parts": args.merge}
        for p in parts:
            merged["models"].update(p["models"])
        merged["total_seconds"] = sum(p["total_seconds"] for p in parts)
        merged["loadavg_end"] = parts[-1]["loadavg_end"]
        (RESULTS / "align.json").write_text(json.dumps(merged, indent=2))
        from _align_report import write_report

        write_report(merged, RESULTS, "align")
        return
    if args.quick:
        args.steps, args.seeds, args.lrs = min(args.steps, 10), 1, "1e-3"
    lrs = [float(x) for x in args.lrs.split(",")]
    tr = load_digits("train")
    P = {
        "smooth": lambda: projection_patterns(),
        "pc1": lambda: principal_patterns(tr.images, tr.labels),
        "ink": lambda: torch.ones(10, *tr.images.shape[1:]) / tr.images.shape[-1],
    }[args.reward]()
    results = {
        "config": {
            **vars(args),
            "lrs": lrs,
            "pairs": 4000,
            "kappa": 5.0,
            "guidance": 2.0,
            "eval_samples": 10 * args.per_class,
            "device": "cpu",
            "torch_threads": 1,
        },
        "loadavg_start": os.getloadavg(),
        "machine": machine_info(),
        "models": {},
    }
    t_all = time.perf_counter()
    for key in args.models.split(","):
        wrapper = models.load(MEMBERS[key])
        pairs = make_preference_pairs(tr.images, tr.labels, P, 4000, kappa=5.0, seed=0)
        data = PairDataset(pairs, wrapper.cond)
        null = PairDataset(
            make_preference_pairs(tr.images, tr.labels, P, 4000, random_labels=True, seed=0),
            wrapper.cond,
        )
        ev = Evaluator(wrapper, P, per_class=args.per_class, steps=args.sampler_steps)
        beta = calibrate_beta(wrapper, data, lrs[-1], args.batch)
        runs = []
        arms = [(loss, ref) for loss in ("sigmoid", "linear") for ref in ("frozen", "ema")]
        for lr in lrs:
            for seed in range(args.seeds):
                for loss, ref in arms:
                    cfg = LinearDPOConfig(
                        loss=loss, beta=beta, eta=1e-3, reference=ref, ema_decay=0.99
                    )
                    r = run_arm(
                        wrapper,
                        data,
                        ev,
                        cfg,
                        lr,
                        args.steps,
                        seed,
                        args.batch,
                        args.steps // 2 if args.curve else 0,
                    )
                    runs.append({"arm": f"{loss}+{ref}", "lr": lr, "seed": seed, **r})
                    print(
                        key,
                        runs[-1]["arm"],
                        lr,
                        seed,
                        {k: round(runs[-1][k], 4) for k in ("reward_gain", "win_rate", "drift")},
                        flush=True,
                    )
        for seed in range(args.seeds):
            cfg = LinearDPOConfig(loss="linear", beta=beta, reference="ema", ema_decay=0.99)
            r = run_arm(wrapper, null, ev, cfg, lrs[-1], args.steps, seed, args.batch)
            runs.append({"arm": "null(linear+ema)", "lr": lrs[-1], "seed": seed, **r})
        results["models"][key] = {
            "member": MEMBERS[key],
            "beta": beta,
            "base_reward": float(ev.base_reward.mean()),
            "data_reward_std": float(projection_reward(tr.images, tr.labels, P).std()),
            "runs": runs,
        }
        try:
            results["models"][key]["timing"] = timing(
                wrapper, data, args.batch, 6 if args.quick else 12
            )
        except Exception as e:  # keep the DPO results
            results["models"][key]["timing"] = [{"strategy": "error", "step_ms": repr(e)}]
        results["models"][key]["memory"] = [
            memory_probe(MEMBERS[key], s, args.batch)
            for s in ("plain", "frozen", "ema", "lora_base", "lora_ema")
        ]
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    results["loadavg_end"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "align_quick" if args.quick else "align_" + args.models.replace(",", "_")
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))
    from _align_report import write_report

    write_report(results, RESULTS, name)


if __name__ == "__main__":
    main()
