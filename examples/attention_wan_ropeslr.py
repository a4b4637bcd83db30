"""RoPeSLR on a diffusers WanTransformer3DModel: install, check exactness at density 1, sparsify,
save and reload (save_pretrained -> from_pretrained -> load_ropeslr_), and undo. Runs on CPU in well under a minute (tiny random-init config, saved
and reloaded from disk exactly as a real checkpoint would be).

    python examples/attention_wan_ropeslr.py
"""

import tempfile

import torch
from diffusers import WanTransformer3DModel

from diffkit.attention import (
    RoPeSLRConfig,
    apply_ropeslr_,
    load_ropeslr_,
    remove_ropeslr_,
    ropeslr_state,
)

torch.set_num_threads(1)
torch.manual_seed(0)
with tempfile.TemporaryDirectory() as tmp:
    WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=24,
        in_channels=4,
        out_channels=4,
        text_dim=16,
        freq_dim=16,
        ffn_dim=64,
        num_layers=2,
        rope_max_seq_len=64,
    ).save_pretrained(tmp)
    model = WanTransformer3DModel.from_pretrained(tmp).eval()

x = torch.randn(1, 4, 8, 32, 32)  # latent video: 8 frames of 32x32 -> 8x16x16 = 2,048 tokens
t = torch.tensor([600.0])
text = torch.randn(1, 4, 16)

with torch.no_grad():
    dense = model(x, t, text, return_dict=False)[0]

    # backend="reference": the default "auto" would compile flex at 2,048 tokens (tens of seconds)
    replaced = apply_ropeslr_(model, RoPeSLRConfig(density=1.0, backend="reference"))
    same = model(x, t, text, return_dict=False)[0]
    print(f"density 1.0: max |RoPeSLR - dense| = {(same - dense).abs().max():.2e}")
    remove_ropeslr_(model, replaced)

    apply_ropeslr_(model, RoPeSLRConfig(density=0.1, backend="reference"))
    sparse = model(x, t, text, return_dict=False)[0]
    print("grid captured by the pre-hook:", ropeslr_state(model).grid)
    rel = (sparse - dense).norm() / dense.norm()
    print(f"density 0.1 (untrained background): relative output error {rel:.3f}")

new = sum(p.numel() for n, p in model.named_parameters() if ".processor.params." in n)
print(f"new RoPeSLR parameters: {new} (saved in model.state_dict())")

with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)  # backbone + RoPeSLR parameters; config.json records the config
    again = WanTransformer3DModel.from_pretrained(tmp).eval()  # plain model
    load_ropeslr_(again, tmp)  # RoPeSLR back, with the saved config and parameters
    with torch.no_grad():
        same = torch.equal(again(x, t, text, return_dict=False)[0], sparse)
    print(f"save_pretrained -> from_pretrained -> load_ropeslr_: identical output: {same}")
