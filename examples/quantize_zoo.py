"""Q-ARVD W4A8 on the shipped causal video zoo model: prepare -> tagged rollouts -> convert,
save packed weights, reload, and compare with the FP rollout under identical noise.

    python examples/quantize_zoo.py
"""

from __future__ import annotations

import tempfile

import torch

from diffkit import models, quantize
from diffkit.models import causal_wan as cw
from diffkit.quantize.targets import calibration_set, compare_rollouts, generate

torch.set_num_threads(1)

fp = models.load("moving-digits-causal")
model = models.load("moving-digits-causal")

# 1. prepare: swap Linear layers (except time embedding/projection and the head) for observers
quantize.quantize_(model, quantize.QARVDConfig(w_bits=4, a_bits=8, iters=100))

# 2. calibrate: rollouts whose chunks are tagged, so S1 can weight early chunks more
labels, noise = calibration_set(4, seed=0, config=model.config)
cw.rollout(model, labels, noise, chunk_context=quantize.chunk)

# 3. convert: S2 dual scales, chunk-weighted AdaRound, real int8 / nibble-packed int4 weights
quantize.quantize_(model, quantize.QARVDConfig(w_bits=4, a_bits=8, iters=100, step="convert"))
print("backend:", model.quantize_info["backend"])
print(
    "S2 fired in", sum(v["fired"] for v in model.quantize_info["s2"]["by_type"].values()), "layers"
)

with tempfile.TemporaryDirectory() as d:
    report = quantize.save_quantized(model, d, source="zoo:moving-digits-causal")
    print(f"quantized layers: {report['ratio']:.3f}x of fp32 bytes")
    reloaded = quantize.load_quantized(models.load("moving-digits-causal"), d)

labels, noise = calibration_set(8, seed=100, config=fp.config)
ref = generate(fp, labels, noise)
out = generate(reloaded, labels, noise)
metrics = compare_rollouts(ref, out, labels, fp.config)
for k, (mse, psnr) in enumerate(zip(metrics["chunk_mse"], metrics["chunk_psnr"])):
    print(f"chunk {k}: latent MSE {mse:.2e}, PSNR {psnr:.1f} dB")
