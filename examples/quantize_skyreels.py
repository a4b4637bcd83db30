"""Calibrate and convert a diffusers SkyReelsV2Transformer3DModel (diffusion forcing) with Q-ARVD.

A tiny random-init config stands in for real weights here; with a real checkpoint, replace the
``from_pretrained`` path and feed real latents / text embeddings to ``calibrate_skyreels``.

    python examples/quantize_skyreels.py
"""

from __future__ import annotations

import tempfile

import torch
from accelerate import init_empty_weights
from diffusers import SkyReelsV2Transformer3DModel

from diffkit import quantize
from diffkit.quantize.targets import calibrate_skyreels

torch.manual_seed(0)
tiny = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
    out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)  # fmt: skip
work = tempfile.TemporaryDirectory()
base = f"{work.name}/base"
SkyReelsV2Transformer3DModel(**tiny).save_pretrained(base)
model = SkyReelsV2Transformer3DModel.from_pretrained(base).eval()
model._set_ar_attention(3)  # block-causal over blocks of 3 latent frames

latents = torch.randn(1, 4, 6, 8, 8)  # (B, C, frames, H, W): 2 frame blocks
text = torch.randn(1, 12, 16)
t = torch.tensor([[100, 100, 100, 700, 700, 700]])

with torch.no_grad():
    ref = model(latents, t, text, enable_diffusion_forcing=True, return_dict=False)[0]

cfg = quantize.QARVDConfig(w_bits=8, a_bits=8, iters=50)
quantize.quantize_(model, cfg)
calibrate_skyreels(model, latents, text)  # diffusers' diffusion-forcing schedule, tagged by block
quantize.quantize_(model, quantize.QARVDConfig(w_bits=8, a_bits=8, iters=50, step="convert"))

with torch.no_grad():
    out = model(latents, t, text, enable_diffusion_forcing=True, return_dict=False)[0]
rel = float((out - ref).pow(2).mean() / ref.pow(2).mean())
print(f"{len(quantize.quant_layers(model))} layers quantized; relative MSE vs FP: {rel:.2e}")
print("bytes:", quantize.packed_bytes(model))
print(quantize.format_summary(quantize.summary(model)))

# Save, then load into a skeleton whose weights are on the meta device (no fp32 copy is built).
quantize.save_quantized(model, f"{work.name}/q", source=base)
with init_empty_weights():
    fresh = SkyReelsV2Transformer3DModel.from_config(SkyReelsV2Transformer3DModel.load_config(base))
quantize.load_quantized(fresh.eval(), f"{work.name}/q")
fresh._set_ar_attention(3)
with torch.no_grad():
    again = fresh(latents, t, text, enable_diffusion_forcing=True, return_dict=False)[0]
print("reloaded model gives identical output:", torch.equal(again, out))
work.cleanup()
