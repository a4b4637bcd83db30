"""FPD on the tiny zoo: distil the 8-step digits MaskGIT into a one-step student, compare, save a grid.

python examples/distill_digits.py            # ~2-4 min on 2 cores (150 steps; the zoo uses 1000)
"""

from __future__ import annotations

import tempfile
import time

import torch

from diffkit import distill
from diffkit.distill.evaluate import evaluate_samples
from diffkit.distill.pipeline import distill_digits, load_digits_zoo, sample_digits
from diffkit.report import make_grid
from diffkit.train import TrainConfig

torch.set_num_threads(2)
zoo = load_digits_zoo()  # digits-patch-tokenizer, digits-maskgit (teacher), digits-lifter
cfg = distill.FPDConfig(samples_per_group=24, queue_size=48, teacher_guidance=2.0, ste="argmax")
train = TrainConfig(steps=150, batch_size=4, lr=2e-4, grad_clip=2.0, ema_decay=0.95, seed=0)
with tempfile.TemporaryDirectory() as tmp:
    student, last = distill_digits(cfg, train, tmp, zoo=zoo)
print("last step:", {k: round(v, 3) for k, v in last.items() if "tau0.05" in k or "refine" in k})

labels = torch.arange(10).repeat_interleave(30)
for name, kw in [("teacher 8 steps", {"steps": 8}), ("teacher 1 step", {"steps": 1}),
                 ("FPD student", {"student": student, "mode": cfg.sample_mode})]:  # fmt: skip
    t0 = time.perf_counter()
    images, ids = sample_digits(zoo.teacher, zoo.tokenizer, labels, **kw)
    dt = time.perf_counter() - t0
    m = evaluate_samples(images, labels, ids=ids, codebook_size=64)
    print(f"{name:16s} {dt:6.2f} s  KID {m['kid']:.2f}  acc {m['class_acc']:.3f}  "
          f"coverage {m['coverage']:.2f}")  # fmt: skip

grid = make_grid(images[(torch.arange(10)[:, None] * 30 + torch.arange(8)).flatten()], nrow=8)
from PIL import Image  # noqa: E402

Image.fromarray(grid.repeat(3, 0).repeat(3, 1)).save("fpd_samples.png")
print("wrote fpd_samples.png")
