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
