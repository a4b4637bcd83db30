"""Foundation benchmark: the evaluation network's noise floor, and the training loop's overhead.

1. Evaluation network (``digit-classifier``): held-out accuracy; FID/KID between real train and
   real test features (the floor no generator can beat); FID/KID between two random halves of the
   test split (the noise band for sample sets of that size); feature extraction throughput.
2. ``diffkit.train.fit`` vs a hand-written PyTorch loop (same model, data, optimizer, steps) on a
   small MLP regression, measured interleaved in the same process: the cost of checkpointing,
   logging and the per-sample noise machinery.

CPU only (this machine has no GPU). Writes benchmarks/results/core.json and core.md.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from diffkit import models
from diffkit.core import LossOutput
from diffkit.core.machine import machine_info, machine_line
from diffkit.core.metrics import frechet_distance, kernel_inception_distance
from diffkit.data.digits import load_digits
from diffkit.train import TrainConfig, fit

OUT = Path(__file__).parent / "results"


def eval_network() -> dict:
    net = models.load("digit-classifier")
    tr, te = load_digits("train"), load_digits("test")
    t0 = time.perf_counter()
    f_tr, _ = net.embed(tr.images)
    dt = time.perf_counter() - t0
    f_te, p_te = net.embed(te.images)
    halves = []
    for seed in range(5):
        perm = torch.randperm(len(te), generator=torch.Generator().manual_seed(seed))
        a, b = f_te[perm[: len(te) // 2]], f_te[perm[len(te) // 2 :]]
        halves.append(
            (
                frechet_distance(a, b),
                kernel_inception_distance(a, b, num_subsets=20, subset_size=150)[0],
            )
        )
    return {
        "test_accuracy": float((p_te == te.labels).float().mean()),
        "fid_train_vs_test": frechet_distance(f_tr, f_te),
        "kid_train_vs_test": kernel_inception_distance(f_tr, f_te, num_subsets=20, subset_size=300)[
            0
        ],
        "fid_test_half_vs_half_mean": statistics.mean(h[0] for h in halves),
        "fid_test_half_vs_half_std": statistics.stdev(h[0] for h in halves),
        "kid_test_half_vs_half_mean": statistics.mean(h[1] for h in halves),
        "features_per_second": len(tr) / dt,
    }


class Data:
    def __init__(self, n=4096, d=64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.randn(d, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def get_batch(self, idx):
        return {"x": self.x[idx], "y": self.y[idx]}


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, 1)
    )


def objective(model, batch, ctx):
    return LossOutput((model(batch["x"]) - batch["y"]).pow(2).mean())


def plain_loop(steps: int, bs: int) -> float:
    data, model = Data(), make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (bs,), generator=g)
        b = data.get_batch(idx)
        loss = (model(b["x"]) - b["y"]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return time.perf_counter() - t0


def diffkit_loop(steps: int, bs: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        fit(
            objective,
            make_model(),
            Data(),
            TrainConfig(steps=steps, batch_size=bs, lr=1e-3, log_every=50, checkpoint_every=100),
            d,
        )
        return time.perf_counter() - t0


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    OUT.mkdir(parents=True, exist_ok=True)
    ev = eval_network()
    steps, bs = 300, 64
    plain, ours = [], []
    for _ in range(3):  # interleaved repeats
        plain.append(plain_loop(steps, bs))
        ours.append(diffkit_loop(steps, bs))
    loop = {
        "steps": steps,
        "batch_size": bs,
        "plain_torch_s_median": statistics.median(plain),
        "diffkit_fit_s_median": statistics.median(ours),
        "overhead_ratio": statistics.median(ours) / statistics.median(plain),
        "checkpoints_written": steps // 100,
    }
    result = {
        "device": "cpu",
        "machine": machine_info(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1m": os.getloadavg()[0],
        "eval_network": ev,
        "train_loop": loop,
    }
    (OUT / "core.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "| evaluation network (digit-classifier) | value |",
        "|---|---|",
        f"| held-out test accuracy | {ev['test_accuracy']:.4f} |",
        f"| FID floor: real train vs real test features | {ev['fid_train_vs_test']:.3f} |",
        f"| FID noise: test half vs half (mean ± std, 5 splits) | {ev['fid_test_half_vs_half_mean']:.3f} ± {ev['fid_test_half_vs_half_std']:.3f} |",
        f"| KID floor: train vs test | {ev['kid_train_vs_test']:.2e} |",
        f"| feature extraction | {ev['features_per_second']:.0f} images/s |",
        "",
        f"| training loop, {steps} steps × batch {bs}, MLP | seconds (median of 3) |",
        "|---|---|",
        f"| plain PyTorch loop (baseline) | {loop['plain_torch_s_median']:.2f} |",
        f"| `diffkit.train.fit` (+ 3 checkpoints, JSONL/TensorBoard logs) | {loop['diffkit_fit_s_median']:.2f} ({loop['overhead_ratio']:.2f}×) |",
        "",
        f"Machine: {machine_line(result['machine'])}; 1-min load average {result['loadavg_1m']:.1f}.",
    ]
    (OUT / "core.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
