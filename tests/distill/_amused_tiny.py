"""A tiny random-init aMUSEd folder (UVit2DModel, VQModel, AmusedScheduler, CLIP text encoder and,
optionally, a character-level CLIP tokenizer), laid out as a real local checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def save_tiny_amused(
    root: Path,
    *,
    text_vocab: int = 100,
    eos_token_id: int = 2,
    tokenizer: bool = False,
    sample_size: int = 8,
) -> Path:
    """An 8x8 token grid (``sample_size``) decoded to 8x8 RGB images (VQ scale factor 1)."""
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    UVit2DModel(
        hidden_size=8, use_bias=False, cond_embed_dim=8, micro_cond_encode_dim=2,
        micro_cond_embed_dim=10, encoder_hidden_size=8, vocab_size=32, codebook_size=8,
        in_channels=8, block_out_channels=8, num_res_blocks=1, downsample=True, upsample=True,
        block_num_heads=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
        sample_size=sample_size,
    ).save_pretrained(root / "transformer")  # fmt: skip
    AmusedScheduler(mask_token_id=31).save_pretrained(root / "scheduler")
    VQModel(
        act_fn="silu", block_out_channels=[8], down_block_types=["DownEncoderBlock2D"],
        in_channels=3, latent_channels=8, layers_per_block=1, norm_num_groups=8,
        num_vq_embeddings=8, out_channels=3, sample_size=8, up_block_types=["UpDecoderBlock2D"],
        mid_block_add_attention=False, lookup_from_codebook=True,
    ).save_pretrained(root / "vqvae")  # fmt: skip
    CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=0, eos_token_id=eos_token_id, pad_token_id=1, hidden_size=8,
            intermediate_size=8, num_attention_heads=1, num_hidden_layers=1,
            vocab_size=text_vocab, projection_dim=8,
        )
    ).save_pretrained(root / "text_encoder")  # fmt: skip
    if tokenizer:  # ids: start 0, end 1, then each letter and its end-of-word form
        tk = root / "tokenizer"
        tk.mkdir()
        vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
        for c in "abcdefghijklmnopqrstuvwxyz":
            vocab[c] = len(vocab)
            vocab[c + "</w>"] = len(vocab)
        (tk / "vocab.json").write_text(json.dumps(vocab))
        (tk / "merges.txt").write_text("#version: 0.2\n")
        CLIPTokenizer(str(tk / "vocab.json"), str(tk / "merges.txt")).save_pretrained(tk)
    return root
