"""``digits-sd3-flow``: a class-conditional diffusers ``SD3Transformer2DModel`` on 16x16 digits.

Rectified flow (x_t = (1 - sigma) x0 + sigma eps, velocity target eps - x0, SD3-style shift 1.0 at
this size) on pixels (1 channel, patch 2, 64 tokens). The class enters as SD3's text does: a learned
table gives ``num_tokens`` joint-attention tokens (``encoder_hidden_states``) and a pooled vector
(``pooled_projections``) per label; label 10 is the null label for classifier-free guidance.
Same wrapper and flat folder layout as :mod:`diffkit.models.digits_unet`.
"""

from __future__ import annotations

from diffkit.models.digits_unet import ClassConditionalDenoiser, build, load_dir, save_dir

DEFAULT_CONFIG = {
    "kind": "sd3",
    "num_classes": 10,
    "num_tokens": 2,
    "image_size": 16,
    "schedule": {"type": "flow", "shift": 1.0},
    "model": {
        "sample_size": 16,
        "patch_size": 2,
        "in_channels": 1,
        "out_channels": 1,
        "num_layers": 4,
        "attention_head_dim": 16,
        "num_attention_heads": 4,
        "caption_projection_dim": 64,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "pos_embed_max_size": 16,
    },
}

__all__ = ["DEFAULT_CONFIG", "ClassConditionalDenoiser", "build", "load_dir", "save_dir"]
