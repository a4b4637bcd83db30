"""Helpers: tiny random-init diffusers models of the exact classes align supports (spec section f)."""

from __future__ import annotations

import torch

UNET_CFG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)
SD3_CFG = dict(
    sample_size=8,
    patch_size=2,
    in_channels=4,
    out_channels=4,
    num_layers=2,
    attention_head_dim=8,
    num_attention_heads=4,
    caption_projection_dim=32,
    joint_attention_dim=32,
    pooled_projection_dim=64,
    pos_embed_max_size=16,
)


def tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**UNET_CFG)


def tiny_sd3():
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(**SD3_CFG)


def make_pairs(kind: str, n: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    cond = {"encoder_hidden_states": torch.randn(n, 3, 32, generator=g)}
    if kind == "sd3":
        cond["pooled_projections"] = torch.randn(n, 64, generator=g)
    return {
        "x_w": torch.randn(n, 4, 8, 8, generator=g),
        "x_l": torch.randn(n, 4, 8, 8, generator=g),
        "cond": cond,
    }


class PairData:
    """A tensor dataset of pairs with get_batch, as diffkit.train.fit wants."""

    def __init__(self, pairs: dict) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs["x_w"])

    def get_batch(self, idx):
        return {
            "x_w": self.pairs["x_w"][idx],
            "x_l": self.pairs["x_l"][idx],
            "cond": {k: v[idx] for k, v in self.pairs["cond"].items()},
        }


# ----------------------------------------------------------------------------- tiny pipelines
def tiny_tokenizer(tmp):
    """A CLIPTokenizer over single characters (no download)."""
    import json
    from pathlib import Path

    from transformers import CLIPTokenizer

    tmp = Path(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=16)
    return tok


def tiny_clip(projection: bool, hidden: int = 32, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=80,
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=hidden,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )


def save_tiny_sd15(path):
    """A tiny random StableDiffusionPipeline saved with save_pretrained (16px images -> 8px)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip(False),
        tokenizer=tiny_tokenizer(path / "_tok"),
        unet=tiny_unet(),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path


def save_tiny_sdxl(path):
    """A tiny random StableDiffusionXLPipeline (two CLIP encoders, text-time added conditioning)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        **{
            **UNET_CFG,
            "cross_attention_dim": 64,  # both encoders' hidden states, concatenated (32 + 32)
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 8,
            "projection_class_embeddings_input_dim": 6 * 8 + 32,  # 6 time ids + pooled text
        }
    )
    tok = tiny_tokenizer(path / "_tok")
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=tiny_clip(False, seed=1),
        text_encoder_2=tiny_clip(True, seed=2),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear"),
    )
    pipe.save_pretrained(path)
    return path


def save_tiny_sd3(path):
    """A tiny random StableDiffusion3Pipeline (two CLIP encoders, no T5) saved to ``path``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tok = tiny_tokenizer(path / "_tok")
    vae = tiny_vae()
    pipe = StableDiffusion3Pipeline(
        transformer=tiny_sd3(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=tiny_clip(True, seed=1),
        tokenizer=tok,
        text_encoder_2=tiny_clip(True, seed=2),
        tokenizer_2=tok,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.save_pretrained(path)
    return path


def png_bytes(seed: int, size: int = 16, mode: str = "RGB") -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, format="PNG")
    return buf.getvalue()
