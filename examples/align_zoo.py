"""Linear-DPO on the digits UNet zoo model with a known toy reward, in about a minute on CPU.

Pairs of training digits of the same class are ranked (Bradley-Terry noise) by a fixed projection
reward R(x, k) = <x, P_k>; the model is aligned with an fp32 EMA reference and the reward of
samples drawn with the same noise is compared before and after.

    python examples/align_zoo.py
"""

from __future__ import annotations

import copy
import tempfile

import torch

from diffkit import models
from diffkit.align import LinearDPO, LinearDPOConfig
from diffkit.align.toy import (
    PairDataset,
    make_preference_pairs,
    projection_patterns,
    projection_reward,
)
from diffkit.data import load_digits
from diffkit.train import TrainConfig, fit

torch.set_num_threads(2)
base = models.load("digits-unet-eps")  # diffusers UNet2DConditionModel + class tokens
train = load_digits("train")
P = projection_patterns(seed=0)
pairs = make_preference_pairs(train.images, train.labels, P, n_pairs=2000, seed=0)
data = PairDataset(pairs, base.cond)  # x_w, x_l and the class tokens as encoder_hidden_states

policy = copy.deepcopy(base.model).train()
objective = LinearDPO(
    LinearDPOConfig(loss="linear", beta=160.0, eta=1e-3, reference="ema", ema_decay=0.99),
    policy,
    schedule=base.schedule,
)
with tempfile.TemporaryDirectory() as out:
    res = fit(objective, policy, data, TrainConfig(steps=40, batch_size=8, lr=1e-4), out)
print({k: round(v, 4) for k, v in res.metrics.items()})

policy.eval()
labels = torch.arange(10).repeat_interleave(10)
noise = torch.randn(len(labels), 1, 16, 16, generator=torch.Generator().manual_seed(1))
before = base.sample(labels, steps=10, guidance=2.0, noise=noise.clone())
after = base.sample(labels, steps=10, guidance=2.0, denoiser=policy, noise=noise.clone())
r0, r1 = projection_reward(before, labels, P), projection_reward(after, labels, P)
print(
    f"reward before {r0.mean():.3f}  after {r1.mean():.3f}  win-rate {(r1 > r0).float().mean():.2f}"
)
