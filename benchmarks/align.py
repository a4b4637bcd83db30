"""Benchmark: Linear-DPO vs Diffusion-DPO, frozen vs EMA reference, in the regime of the claims.

The paper's claims (arXiv 2605.21123, tested as hypotheses, spec section f): the sigmoid loss with
a frozen reference plateaus as its weights saturate; Linear-DPO with an EMA reference keeps
improving; at matched drift one of them gives the higher reward. To reach that regime:

* **a reward the model can learn to rank**: the amount of ink, R(x) = <x, 1/8> (a constant unit
  pattern; ``benchmarks/align_reward_probe.py`` found it learnable, held-out implicit accuracy
  0.64-0.77), on offline same-class pairs of 8x8 training digits labelled with Bradley-Terry noise
  (kappa 5 on the standardised reward);
* **a model small enough for long runs**: a class-conditional diffusers ``UNet2DConditionModel``
  (zoo wrapper :mod:`diffkit.models.digits_unet` at 8x8, one 32-channel block plus the
  cross-attention mid block, eps-prediction DDPM), pre-trained here on the digits (stage 0),
  saved and reloaded through ``from_pretrained``;
* **runs long enough for the references to differ**: >= 1000 steps; references frozen and EMA
  d in {0.9, 0.99, 0.999} (time constants 10, 100, 1000 steps);
* **beta in the saturating range**: beta per (reference, LR) from a calibration run
  (:func:`calibrate_betas`): beta * std(m) = ``beta_target`` over steps 10-20 of the grid;
  the curves record how beta * std(m) and the gradient weights evolve afterwards;
* **controls**: random labels (null), ``linear_pure`` (w = 0.5, the reference only measures),
  20 % flipped labels (linear + EMA 0.99 and sigmoid + frozen);
* **curves** every ``eval_every`` steps of the grid: reward gain of fixed-noise guided samples over the
  base model, win-rate, drift (held-out denoising MSE / base - 1), held-out implicit accuracy
  (pairs ordered by the true reward), and training-window means of beta * std(m), the normalised
  gradient weight and the share of Linear-DPO weights at their clip bounds.

The losses, the references and the per-sample errors are the package's own
(:class:`diffkit.align.LinearDPO`); the loop is a plain AdamW loop (no checkpoints) to keep a step
at a few tens of ms.

Stages (each resumable; results go to ``benchmarks/results/``)::

    python benchmarks/align.py prepare            # stage 0 + beta calibration -> align_setup.json
    python benchmarks/align.py run --shard 0/2    # the grid, one JSON line per finished run
    python benchmarks/align.py run --shard 1/2    #   (align_runs_<i>.jsonl; reruns skip done runs)
    python benchmarks/align.py memory             # peak RSS per reference strategy, own process each
    python benchmarks/align.py report             # align.json, align.md, plots, README/docs text

``run`` goes through the grid in priority order (seeds 0-2 of the two middle LRs first), so a run
stopped early leaves a complete, smaller design; ``report`` states exactly which runs it found.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.align import LinearDPO, LinearDPOConfig
from diffkit.align.losses import margin
from diffkit.align.objective import paired_errors
from diffkit.align.reference import make_reference
from diffkit.align.toy import (
    PairDataset,
    denoising_mse,
    implicit_accuracy,
    make_preference_pairs,
    projection_reward,
)
from diffkit.core.machine import machine_info
from diffkit.data import load_digits
from diffkit.models import digits_unet

RESULTS = Path(__file__).parent / "results"
WORK = Path(os.environ.get("DIFFKIT_ALIGN_BENCH_DIR", "/tmp/diffkit_align_bench"))
SIZE = 8

BASE_CONFIG = {
    "kind": "unet",
    "num_classes": 10,
    "num_tokens": 2,
    "image_size": SIZE,
    "schedule": {"type": "ddpm", "beta_schedule": "linear", "prediction_type": "epsilon"},
    "model": {
        "sample_size": SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": [32],
        "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "cross_attention_dim": 16,
        "attention_head_dim": 8,
    },
}

REFERENCES = {"frozen": ("frozen", 1.0), "ema0.9": ("ema", 0.9)}
REFERENCES.update({"ema0.99": ("ema", 0.99), "ema0.999": ("ema", 0.999)})
# arm name -> (loss, reference key, label variant)
ARMS = {f"{loss}+{ref}": (loss, ref, "bt") for loss in ("linear", "sigmoid") for ref in REFERENCES}
ARMS.update(
    {
        "null(linear+ema0.99)": ("linear", "ema0.99", "random"),
        "linear_pure": ("linear_pure", "frozen", "bt"),
        "flip20(linear+ema0.99)": ("linear", "ema0.99", "flip"),
        "flip20(sigmoid+frozen)": ("sigmoid", "frozen", "flip"),
    }
)


def ink_patterns() -> torch.Tensor:
    """(10, 1, 8, 8) constant unit patterns: R(x) = <x, 1/8> = 8 * mean pixel (the ink)."""
    return torch.full((10, 1, SIZE, SIZE), 1.0 / SIZE)


def default_grid() -> dict:
    return {
        "lrs": [3e-5, 1e-4, 3e-4, 1e-3],
        "seeds": 5,
        "steps": 1000,
        "batch": 8,
        "eval_every": 250,
        "eta": 1e-3,
        "beta_target": 4.0,
        "calib_steps": 20,
        "n_pairs": 20000,
        "kappa": 5.0,
        "flip_frac": 0.2,
        "eval_per_class": 6,
        "sampler_steps": 6,
        "guidance": 2.0,
        "pretrain_steps": 600,
        "pretrain_batch": 64,
        "pretrain_lr": 3e-3,
    }


CORE_ARMS = ("linear+ema0.99", "sigmoid+frozen", "linear+frozen", "sigmoid+ema0.99",
             "null(linear+ema0.99)", "linear_pure")  # fmt: skip


def run_order(grid: dict) -> list[tuple[str, float, int]]:
    """Every (arm, lr, seed) of the grid, most informative first.

    One LR at a time, smallest first (the least drift, nearest the paper's fine-tuning regime):
    seeds 0-2 of the core arms (the paper's two methods, their swaps, the null and
    ``linear_pure``), then seeds 0-2 of the other arms; the remaining seeds come last. A grid
    stopped early is still a complete design (3 seeds) over fewer arms or LRs. Each run's
    checkpoints already give points along the drift axis, so one LR is enough for a
    matched-drift comparison.
    """
    lrs, seeds = sorted(grid["lrs"]), list(range(grid["seeds"]))
    rest = [a for a in ARMS if a not in CORE_ARMS]
    order = []
    for lr in lrs:
        for arms in (CORE_ARMS, rest):
            order += [(arm, lr, seed) for seed in seeds[:3] for arm in arms]
    order += [(arm, lr, seed) for seed in seeds[3:] for lr in lrs for arm in ARMS]
    return order


def run_key(arm: str, lr: float, seed: int) -> str:
    return f"{arm}|{lr:g}|{seed}"


# ----------------------------------------------------------------------------- stage 0
def pretrain_base(grid: dict, out: Path) -> None:
    """Stage 0: eps-prediction DDPM on the 8x8 training digits (10 % null labels for CFG)."""
    torch.manual_seed(0)
    tr = load_digits("train", size=SIZE)
    wrapper = digits_unet.build(BASE_CONFIG).train()
    opt = torch.optim.AdamW(wrapper.parameters(), lr=grid["pretrain_lr"], weight_decay=0.0)
    steps, B = grid["pretrain_steps"], grid["pretrain_batch"]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = torch.randint(0, len(tr.images), (B,), generator=g)
        x0, labels = tr.images[idx], tr.labels[idx].clone()
        labels[torch.rand(B, generator=g) < 0.1] = wrapper.null_label
        noise = torch.randn(x0.shape, generator=g)
        t = wrapper.schedule.sample_t(B, g)
        pred = wrapper(wrapper.schedule.add_noise(x0, noise, t), t, labels)
        loss = F.mse_loss(pred, wrapper.schedule.target(x0, noise, t))
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        if step % 100 == 0:
            print(f"pretrain step {step} loss {loss.item():.4f}", flush=True)
    digits_unet.save_dir(wrapper.eval(), out)


# ----------------------------------------------------------------------------- calibration
def calibrated_beta(stds: list[float], target: float) -> float:
    """beta with beta * median(std(m)) = target, from per-step batch stds of the margin m."""
    if not stds or any(not s > 0 for s in stds):
        raise ValueError(f"margin stds must be positive, got {stds}")
    if not target > 0:
        raise ValueError(f"beta target must be > 0, got {target}")
    s = sorted(stds)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return target / med


def calibrate_betas(wrapper, data: PairDataset, grid: dict, lr: float) -> dict[str, float]:
    """beta per reference for one LR: train ``linear_pure`` (beta-free) for ``calib_steps`` and
    measure, every step, std(m) against every reference strategy built from the same policy
    (frozen copy and the three EMAs); beta_ref = target / median std over the second half of the
    run. Early (``calib_steps`` = 20, as the spec's "after 10 warm-up steps"): the margins of the
    beta-free ``linear_pure`` grow without bound later, and the arms' own losses take over.
    Linear and sigmoid arms with the same reference then share beta."""
    policy = copy.deepcopy(wrapper.model).train().requires_grad_(True)
    refs = {k: make_reference(kind, policy, d) for k, (kind, d) in REFERENCES.items()}
    obj = LinearDPO(
        LinearDPOConfig(loss="linear_pure", reference="frozen", log_drift=False),
        policy,
        schedule=wrapper.schedule,
        reference=refs["frozen"],
    )
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1234)
    stds = {k: [] for k in refs}
    steps, B = grid["calib_steps"], grid["batch"]
    for step in range(steps):
        batch = data.get_batch(torch.randint(0, len(data), (B,), generator=g))
        noise = torch.randn(batch["x_w"].shape, generator=g)
        t = (torch.rand(B, generator=g) * 1000).long().clamp(0, 999)
        ew, el = paired_errors(policy, wrapper.schedule, batch["x_w"], batch["x_l"],
                               batch["cond"], noise, t)  # fmt: skip
        if step >= steps // 2:
            with torch.no_grad():
                for k, ref in refs.items():
                    with ref.model(policy) as net:
                        rw, rl = paired_errors(net, wrapper.schedule, batch["x_w"],
                                               batch["x_l"], batch["cond"], noise, t)  # fmt: skip
                    stds[k].append(float(margin(ew.detach(), el.detach(), rw, rl).std()))
        loss, _ = obj.loss_fn(ew, el, ew.detach(), el.detach())
        loss.backward()
        opt.step()
        opt.zero_grad()
        for ref in refs.values():
            ref.update(policy)
    return {k: calibrated_beta(v, grid["beta_target"]) for k, v in stds.items()}


# ----------------------------------------------------------------------------- evaluation
class Evaluator:
    """Fixed-noise sampling reward and win-rate vs base, drift, held-out implicit accuracy."""

    def __init__(self, wrapper, grid: dict):
        self.w, self.P = wrapper, ink_patterns()
        self.steps, self.guidance = grid["sampler_steps"], grid["guidance"]
        self.labels = torch.arange(10).repeat_interleave(grid["eval_per_class"])
        g = torch.Generator().manual_seed(777)
        self.noise = torch.randn(len(self.labels), 1, SIZE, SIZE, generator=g)
        te = load_digits("test", size=SIZE)
        with torch.no_grad():
            self.test_x, self.test_cond = te.images[:64], wrapper.cond(te.labels[:64])
            # held-out pairs ordered by the true reward (kappa -> infinity)
            self.held = make_preference_pairs(te.images, te.labels, self.P, 128, kappa=1e6, seed=5)
            self.held_cond = wrapper.cond(self.held["labels"])
        self.base = wrapper.model
        self.base_reward = self._rewards(self.base)
        self.base_mse = denoising_mse(self.base, wrapper.schedule, self.test_x, self.test_cond, 4)

    @torch.no_grad()
    def _rewards(self, net):
        x = self.w.sample(self.labels, self.steps, self.guidance, denoiser=net, noise=self.noise)
        return projection_reward(x, self.labels, self.P)

    @torch.no_grad()
    def __call__(self, net) -> dict:
        was = net.training
        net.eval()
        r = self._rewards(net)
        mse = denoising_mse(net, self.w.schedule, self.test_x, self.test_cond, 4)
        acc = implicit_accuracy(net, self.base, self.w.schedule, self.held, self.held_cond)
        net.train(was)
        return {
            "reward_gain": round(float(r.mean() - self.base_reward.mean()), 5),
            "win_rate": round(float((r > self.base_reward).float().mean()), 4),
            "drift": round(mse / self.base_mse - 1.0, 5),
            "heldout_implicit_acc": round(acc, 4),
        }


def normalised_weight(loss: str, mean_weight: float, beta: float) -> float:
    """Mean per-pair gradient weight on [0, 1]: w for linear / linear_pure, sigma(beta m / 2)
    for sigmoid (its logged weight is (beta / 2) sigma(beta m / 2))."""
    return mean_weight / (0.5 * beta) if loss == "sigmoid" else mean_weight


def train_run(wrapper, data, ev, grid, loss, ref_key, beta, lr, seed) -> dict:
    """One arm: ``grid['steps']`` AdamW steps of the package's LinearDPO objective."""
    kind, decay = REFERENCES[ref_key]
    torch.manual_seed(seed)
    policy = copy.deepcopy(wrapper.model).train().requires_grad_(True)
    cfg = LinearDPOConfig(
        loss=loss, beta=beta, eta=grid["eta"], reference=kind, ema_decay=decay, log_drift=True
    )
    obj = LinearDPO(cfg, policy, schedule=wrapper.schedule)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(10_000 + seed)
    B, every = grid["batch"], grid["eval_every"]
    window: dict[str, list[float]] = {}
    curve = [{"step": 0, **ev(policy)}]
    nonfinite = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for step in range(1, grid["steps"] + 1):
        batch = data.get_batch(torch.randint(0, len(data), (B,), generator=g))
        out = obj(policy, batch, generator=g)
        if not torch.isfinite(out.loss):
            nonfinite += 1
            opt.zero_grad()
            continue
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        obj.after_step(policy, step)
        for k in ("beta_margin_std", "implicit_acc", "weight", "clip_low_frac", "clip_high_frac",
                  "drift"):  # fmt: skip
            if k in out.metrics:
                window.setdefault(k, []).append(float(out.metrics[k]))
        if step % every == 0:
            tm = {f"train_{k}": round(sum(v) / len(v), 5) for k, v in window.items()}
            tm["train_weight_norm"] = round(normalised_weight(loss, tm["train_weight"], beta), 5)
            tm["param_dist_to_ref"] = tm.pop("train_drift")
            curve.append({"step": step, **ev(policy), **tm})
            window = {}
    return {
        "curve": curve,
        "final": curve[-1],
        "nonfinite_steps": nonfinite,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }


def _setup(grid):
    tr = load_digits("train", size=SIZE)
    wrapper = digits_unet.load_dir(WORK / "base").eval()
    P = ink_patterns()
    n, kappa = grid["n_pairs"], grid["kappa"]
    mk = {
        "bt": dict(kappa=kappa),
        "random": dict(kappa=kappa, random_labels=True),
        "flip": dict(kappa=kappa, flip_frac=grid["flip_frac"]),
    }
    datasets = {
        k: PairDataset(
            make_preference_pairs(tr.images, tr.labels, P, n, seed=0, **kw), wrapper.cond
        )
        for k, kw in mk.items()
    }
    return wrapper, datasets


def cmd_prepare(args) -> None:
    grid = default_grid()
    if args.reduced:
        grid.update(reduced_overrides())
    t0 = time.perf_counter()
    if not (WORK / "base" / "denoiser.json").exists():
        pretrain_base(grid, WORK / "base")
    pretrain_s = round(time.perf_counter() - t0, 1)
    wrapper, datasets = _setup(grid)
    betas = {f"{lr:g}": calibrate_betas(wrapper, datasets["bt"], grid, lr) for lr in grid["lrs"]}
    ev = Evaluator(wrapper, grid)
    tr = load_digits("train", size=SIZE)
    setup = {
        "grid": grid,
        "base_config": BASE_CONFIG,
        "arms": {k: list(v) for k, v in ARMS.items()},
        "betas": betas,
        "base_reward": float(ev.base_reward.mean()),
        "data_reward_std": float(projection_reward(tr.images, tr.labels, ink_patterns()).std()),
        "base_heldout_mse": ev.base_mse,
        "params": sum(p.numel() for p in wrapper.model.parameters()),
        "pretrain_seconds": pretrain_s,
        "prepare_seconds": round(time.perf_counter() - t0, 1),
        "machine": machine_info(),
        "loadavg": os.getloadavg(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "align_setup.json").write_text(json.dumps(setup, indent=2) + "\n")
    print(json.dumps({k: setup[k] for k in ("betas", "base_reward", "params")}, indent=1))


def reduced_overrides() -> dict:
    """The documented reduced configuration (about 1/6 of the full grid's runs)."""
    return {"lrs": [3e-5, 1e-4], "seeds": 3}


def _done_keys() -> set[str]:
    done = set()
    for f in RESULTS.glob("align_runs_*.jsonl"):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done.add(run_key(r["arm"], r["lr"], r["seed"]))
    return done


def cmd_run(args) -> None:
    setup = json.loads((RESULTS / "align_setup.json").read_text())
    grid = setup["grid"]
    if args.train_steps:
        grid["steps"] = args.train_steps
    i, n = (int(x) for x in args.shard.split("/"))
    wrapper, datasets = _setup(grid)
    ev = Evaluator(wrapper, grid)
    out = RESULTS / f"align_runs_{i}.jsonl"
    order = run_order(grid)[i::n]
    if args.limit:
        order = order[: args.limit]
    for arm, lr, seed in order:
        if run_key(arm, lr, seed) in _done_keys():
            continue
        loss, ref_key, labels = ARMS[arm]
        beta = setup["betas"][f"{lr:g}"][ref_key]
        load0 = os.getloadavg()[0]
        r = train_run(wrapper, datasets[labels], ev, grid, loss, ref_key, beta, lr, seed)
        rec = {"arm": arm, "lr": lr, "seed": seed, "beta": beta, "steps": grid["steps"], **r}
        rec["loadavg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        fin = rec["final"]
        print(arm, lr, seed, {k: fin[k] for k in ("reward_gain", "drift")}, rec["train_seconds"],
              flush=True)  # fmt: skip


# ----------------------------------------------------------------------------- memory
def _memory_probe(strategy: str, steps: int) -> dict:
    """Runs in a fresh process: peak RSS of ``steps`` DPO steps of one reference strategy on a
    UNet large enough (12.8 M parameters, 51 MB per fp32 copy) for its copies to show."""
    from diffusers import UNet2DConditionModel

    from diffkit.align.pipeline import add_lora_
    from diffkit.core.schedules import DDPM

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128, 256), norm_num_groups=32, cross_attention_dim=256,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8,
    ).train()  # fmt: skip
    if strategy.startswith("lora"):
        add_lora_(unet, 4, 4.0)
    rss_model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    schedule = DDPM()
    obj = None
    if strategy != "plain":
        obj = LinearDPO(LinearDPOConfig(reference=strategy, log_drift=False), unet, schedule)
    g = torch.Generator().manual_seed(0)
    B = 2
    batch = {
        "x_w": torch.randn(B, 4, 8, 8, generator=g),
        "x_l": torch.randn(B, 4, 8, 8, generator=g),
        "cond": {"encoder_hidden_states": torch.randn(B, 4, 256, generator=g)},
    }
    for i in range(steps):
        if obj is None:  # plain fine-tuning on the same 2B images (no reference)
            t = torch.randint(0, 1000, (B,), generator=g)
            noise = torch.randn(B, 4, 8, 8, generator=g)
            ew, el = paired_errors(unet, schedule, batch["x_w"], batch["x_l"], batch["cond"],
                                   noise, t)  # fmt: skip
            loss = (ew + el).mean()
        else:
            loss = obj(unet, batch, generator=g).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if obj is not None:
            obj.after_step(unet, i)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "strategy": strategy,
        "params_M": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "trainable_M": round(sum(p.numel() for p in params) / 1e6, 3),
        "rss_after_model_MB": round(rss_model, 1),
        "peak_rss_MB": round(peak, 1),
        "training_MB": round(peak - rss_model, 1),
    }


def cmd_memory(args) -> None:
    rows = []
    for s in ("plain", "frozen", "ema", "lora_base", "lora_ema"):
        code = (
            f"import json, sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"torch.set_num_threads(1); from align import _memory_probe; "
            f"print(json.dumps(_memory_probe({s!r}, {args.steps})))"
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        if res.returncode != 0:
            rows.append({"strategy": s, "error": res.stderr[-400:]})
        else:
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    out = {"rows": rows, "steps": args.steps, "machine": machine_info(), "loadavg": os.getloadavg()}
    (RESULTS / "align_memory.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_report(args) -> None:
    from _align_report import collect, write_all

    results = collect(RESULTS)
    (RESULTS / "align.json").write_text(json.dumps(results, indent=1) + "\n")
    root = Path(__file__).resolve().parent.parent
    write_all(results, RESULTS, docs=root / "docs" / "align.md", readme=root / "README.md")


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd")  # none: every stage in turn (run_all.py, make bench)
    p = sub.add_parser("prepare", help="stage 0 (base model) and beta calibration")
    p.add_argument("--reduced", action="store_true", help="2 LRs x 3 seeds (see reduced_overrides)")
    p = sub.add_parser("run", help="train the grid (resumable)")
    p.add_argument("--shard", default="0/1", help="i/n: every n-th run starting at i")
    p.add_argument("--limit", type=int, default=0, help="at most this many runs (smoke tests)")
    p.add_argument("--train-steps", type=int, default=0, help="override the steps (smoke tests)")
    p = sub.add_parser("memory", help="peak RSS per reference strategy, one process each")
    p.add_argument("--steps", type=int, default=2)
    sub.add_parser("report", help="align.json, align.md, plots and the README/docs text")
    args = ap.parse_args()
    if args.cmd is None:
        args = argparse.Namespace(reduced=False, shard="0/1", limit=0, train_steps=0, steps=2)
        for stage in (cmd_prepare, cmd_run, cmd_memory, cmd_report):
            stage(args)
        return
    {"prepare": cmd_prepare, "run": cmd_run, "memory": cmd_memory, "report": cmd_report}[args.cmd](
        args
    )


if __name__ == "__main__":
    main()
