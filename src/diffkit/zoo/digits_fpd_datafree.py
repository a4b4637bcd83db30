"""Zoo recipe: ``digits-fpd-datafree``, the paper's data-free one-step FPD student of ``digits-maskgit``.

FPD (arXiv 2605.21484, sec. 3) as the paper defines it: the student is trained only on its
teacher's refinements of its own drafts (re-mask r ~ U[0.1, 0.5], one guided teacher step, drift
on ``digits-lifter`` features); no real image, no discriminator, no drift guidance. Everything
else (optimiser, steps, EMA, seed) is the ``digits-fpd`` recipe (:mod:`diffkit.zoo.digits_fpd`).
``benchmarks/distill_datafree.py`` measures this configuration over 3 training seeds.
"""

from __future__ import annotations

from pathlib import Path

from diffkit.zoo.digits_fpd import DATA_FREE_CONFIG, train_student


def train(out_dir: str | Path, *, seed: int = 0, progress: bool = False) -> dict:
    return train_student(
        DATA_FREE_CONFIG, "digits-fpd-datafree", out_dir, seed=seed, progress=progress
    )
