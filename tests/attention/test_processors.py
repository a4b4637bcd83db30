"""RoPeSLR on the real diffusers classes (tiny random configs, saved and reloaded from disk)."""

import pytest
import torch
from _wan_tiny import HUNYUAN, WAN  # conftest.py puts this folder on sys.path

from diffkit.attention import (
    RoPeSLRConfig,
    apply_ropeslr_,
    remove_ropeslr_,
    ropeslr_state,
    ropeslr_state_dict,
)


def _wan(path):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel.from_pretrained(path).eval()


def _wan_inputs():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 4, 16, 16, generator=g),
        torch.tensor([700.0, 300.0]),
        torch.randn(2, 3, 16, generator=g),
    )


@torch.no_grad()
def test_wan_density_one_equals_original_processor(wan_dir):
    m = _wan(wan_dir)
    x, t, c = _wan_inputs()
    ref = m(x, t, c, return_dict=False)[0]
    replaced = apply_ropeslr_(m, RoPeSLRConfig(density=1.0, block_size=16, rank=12))
    assert sorted(replaced) == ["blocks.0.attn1", "blocks.1.attn1"]
    assert type(m.blocks[0].attn2.processor).__name__ == "WanAttnProcessor"
    out = m(x, t, c, return_dict=False)[0]
    assert (out - ref).abs().max() < 1e-5
    assert ropeslr_state(m).grid == (4, 8, 8)
    remove_ropeslr_(m, replaced)
    assert torch.equal(m(x, t, c, return_dict=False)[0], ref)


@torch.no_grad()
def test_wan_sparse_changes_output_and_dense_switches_restore_it(wan_dir):
    m = _wan(wan_dir)
    x, t, c = _wan_inputs()
    ref = m(x, t, c, return_dict=False)[0]
    apply_ropeslr_(m, RoPeSLRConfig(density=0.25, block_size=16, rank=12))
    sparse = m(x, t, c, return_dict=False)[0]
    assert (sparse - ref).abs().max() > 1e-4
    m2 = _wan(wan_dir)
    apply_ropeslr_(m2, RoPeSLRConfig(density=0.25, block_size=16, rank=12, dense_first_layers=2))
    assert (m2(x, t, c, return_dict=False)[0] - ref).abs().max() < 1e-5
    m3 = _wan(wan_dir)
    apply_ropeslr_(m3, RoPeSLRConfig(density=0.25, block_size=16, rank=12, dense_heads=(0, 1)))
    assert (m3(x, t, c, return_dict=False)[0] - ref).abs().max() < 1e-5


@torch.no_grad()
def test_wan_dense_first_steps_follow_the_sampling_run(wan_dir):
    m = _wan(wan_dir)
    x, _, c = _wan_inputs()
    cfg = RoPeSLRConfig(density=0.25, block_size=16, rank=12, dense_first_steps=1)
    refs = [m(x, torch.full((2,), s), c, return_dict=False)[0] for s in (900.0, 500.0)]
    apply_ropeslr_(m, cfg)
    for _ in range(2):  # two sampling runs: the counter resets when t jumps back up
        first = m(x, torch.full((2,), 900.0), c, return_dict=False)[0]
        second = m(x, torch.full((2,), 500.0), c, return_dict=False)[0]
        assert (first - refs[0]).abs().max() < 1e-5
        assert (second - refs[1]).abs().max() > 1e-4


def test_wan_parameters_saved_and_loaded_with_state_dict(wan_dir, tmp_path):
    from diffkit.core.io import load_tensors, save_tensors

    m = _wan(wan_dir)
    cfg = RoPeSLRConfig(density=0.25, block_size=16, rank=12)
    apply_ropeslr_(m, cfg)
    sd = ropeslr_state_dict(m)
    assert (
        "blocks.0.attn1.processor.params.u_q" in sd
        and "blocks.0.attn1.processor.params.u_q" in m.state_dict()
    )
    with torch.no_grad():
        for p in m.blocks[0].attn1.processor.params.parameters():
            p.add_(0.5)
    save_tensors(tmp_path / "r.safetensors", ropeslr_state_dict(m))
    m2 = _wan(wan_dir)
    apply_ropeslr_(m2, cfg)
    m2.load_state_dict(load_tensors(tmp_path / "r.safetensors"), strict=False)
    x, t, c = _wan_inputs()
    with torch.no_grad():
        assert torch.equal(m(x, t, c, return_dict=False)[0], m2(x, t, c, return_dict=False)[0])


def test_hunyuan_density_one_equals_original_with_text_padding(tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    HunyuanVideoTransformer3DModel(**HUNYUAN).save_pretrained(tmp_path)
    m = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 4, 16, 16, generator=g)
    t = torch.tensor([500, 200])
    txt = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    pooled = torch.randn(2, 8, generator=g)
    with torch.no_grad():
        ref = m(x, t, txt, mask, pooled, return_dict=False)[0]
        replaced = apply_ropeslr_(m, RoPeSLRConfig(density=1.0, block_size=16, rank=12))
        assert sorted(replaced) == ["single_transformer_blocks.0.attn", "transformer_blocks.0.attn"]
        out = m(x, t, txt, mask, pooled, return_dict=False)[0]
        assert (out - ref).abs().max() < 1e-5
        remove_ropeslr_(m, replaced)
        apply_ropeslr_(m, RoPeSLRConfig(density=0.25, block_size=16, rank=12))
        sparse = m(x, t, txt, mask, pooled, return_dict=False)[0]
    assert (sparse - ref).abs().max() > 1e-5


def test_unsupported_class_and_bad_head_dim_are_clear_errors():
    from diffusers import SD3Transformer2DModel, WanTransformer3DModel

    sd3 = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=8,
        out_channels=4,
    )
    with pytest.raises(
        ValueError,
        match="SD3Transformer2DModel.*WanTransformer3DModel, WanVACETransformer3DModel, "
        "SkyReelsV2Transformer3DModel, HunyuanVideoTransformer3DModel",
    ):
        apply_ropeslr_(sd3, RoPeSLRConfig())
    wan = WanTransformer3DModel(**{**WAN, "attention_head_dim": 4})
    with pytest.raises(ValueError, match="head_dim"):
        apply_ropeslr_(wan, RoPeSLRConfig(rank=12))
