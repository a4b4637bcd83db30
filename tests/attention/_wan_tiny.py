"""Tiny random-init configs of the real diffusers classes the attention tests share."""

WAN = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=16,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)

HUNYUAN = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=12,
    num_layers=1,
    num_single_layers=1,
    num_refiner_layers=1,
    patch_size=2,
    patch_size_t=1,
    guidance_embeds=False,
    text_embed_dim=16,
    pooled_projection_dim=8,
    rope_axes_dim=(4, 4, 4),
)

VACE = dict(WAN, vace_layers=[0, 1], vace_in_channels=72)  # 2 z_dim + 8 x 8 mask channels

SKYREELS = dict(WAN)

VAE = dict(
    base_dim=3,
    z_dim=4,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    latents_mean=[0.0] * 4,
    latents_std=[1.0] * 4,
)

#: 9 frames of 64 x 128 pixels -> a 3 x 8 x 16 latent -> 3 x 4 x 8 = 96 tokens after patching
CALL = dict(height=64, width=128, num_frames=9, num_inference_steps=4, guidance_scale=3.0)


def pipeline(cls_name: str, **components):
    """A diffusers pipeline of ``cls_name`` around the given transformer(s) with a tiny random
    VAE and a flow-matching Euler scheduler; no tokenizer or text encoder (pass embeddings)."""
    import diffusers
    import torch

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLWan(**VAE).eval()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    cls = getattr(diffusers, cls_name)
    pipe = cls(tokenizer=None, text_encoder=None, vae=vae, scheduler=scheduler, **components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(text_dim: int = 16, tokens: int = 5):
    import torch

    g = torch.Generator().manual_seed(3)
    return {
        "prompt_embeds": torch.randn(1, tokens, text_dim, generator=g),
        "negative_prompt_embeds": torch.randn(1, tokens, text_dim, generator=g),
    }
