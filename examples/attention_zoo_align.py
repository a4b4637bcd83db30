"""Stage-1 alignment of RoPeSLR on the zoo's tiny Wan model, then sample dense vs RoPeSLR.

Needs the shipped `moving-digits-wan` weights (`diffkit zoo train moving-digits-wan`). Trains only
the new parameters for a few steps (the zoo member uses 150) and prints the per-layer error.

    python examples/attention_zoo_align.py
"""

import tempfile

import torch

from diffkit import models
from diffkit.attention import AlignmentObjective, RoPeSLRConfig, apply_ropeslr_, freeze_backbone_
from diffkit.attention.pretrained import make_inputs
from diffkit.data import make_moving_digits
from diffkit.models import moving_digits_wan as mdw
from diffkit.train import TrainConfig, fit
from diffkit.zoo.moving_digits_wan import video_config
from diffkit.zoo.moving_digits_wan_ropeslr import layer_errors

torch.set_num_threads(1)
model = models.load("moving-digits-wan")
apply_ropeslr_(model, RoPeSLRConfig(density=0.1, ape_max_len=(16, 32, 32), backend="reference"))
print("trainable RoPeSLR parameters:", freeze_backbone_(model))

data = make_moving_digits(64, video_config("train"), seed=0)
held = make_moving_digits(2, video_config("test"), seed=1).get_batch(torch.arange(2))
print("per-layer relative MSE before:", layer_errors(model, held))
with tempfile.TemporaryDirectory() as tmp:
    cfg = TrainConfig(steps=20, batch_size=2, lr=1e-3, log_every=5, resume=False)
    fit(AlignmentObjective(make_inputs()), model, data, cfg, tmp)
print("per-layer relative MSE after: ", layer_errors(model, held))

g = torch.Generator().manual_seed(0)
videos = mdw.sample(model.eval(), torch.tensor([7]), steps=8, generator=g)
print("sampled video with RoPeSLR attention:", tuple(videos.shape))
