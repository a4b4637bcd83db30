"""Save and load a RoPeSLR model (issue 17 item 1): apply -> train -> save_pretrained ->
from_pretrained -> load_ropeslr_ gives identical outputs, with the config restored from disk."""

import json

import pytest
import torch
from _reload import realign_  # tests/conftest.py puts tests/ on sys.path
from _wan_tiny import HUNYUAN, WAN

from diffkit import config as cfglib
from diffkit.attention import (
    RoPeSLRConfig,
    apply_ropeslr_,
    load_ropeslr_,
    read_ropeslr_record,
    remove_ropeslr_,
    ropeslr_state,
    ropeslr_state_dict,
    save_ropeslr,
)

# non-default values everywhere, so a config that is not restored from disk cannot pass
CFG = RoPeSLRConfig(
    density=0.25,
    block_size=16,
    rank=12,
    merge="mass",
    feature_map="elu1",
    dense_heads=(1,),
    pe_scale_init=0.3,
    backend="reference",
)


def _wan_inputs():
    g = torch.Generator().manual_seed(1)
    return (
        torch.randn(2, 4, 4, 16, 16, generator=g),
        torch.tensor([700.0, 300.0]),
        torch.randn(2, 3, 16, generator=g),
    )


def _hunyuan_inputs():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 4, 16, 16, generator=g)
    txt = torch.randn(2, 5, 16, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    return x, torch.tensor([500, 200]), txt, mask, torch.randn(2, 8, generator=g)


def _train_(model, inputs, steps=2):
    """A few real optimizer steps on backbone and RoPeSLR parameters (reference backend)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    target = torch.zeros_like(model(*inputs, return_dict=False)[0])
    for _ in range(steps):
        opt.zero_grad()
        (model(*inputs, return_dict=False)[0] - target).pow(2).mean().backward()
        opt.step()


def _round_trip(cls, model, inputs, path, **save_kwargs):
    before = {k: v.clone() for k, v in ropeslr_state_dict(model).items()}
    _train_(model, inputs)
    changed = [k for k, v in ropeslr_state_dict(model).items() if not torch.equal(v, before[k])]
    assert changed, "training did not move the RoPeSLR parameters: the test would prove nothing"
    model.eval()
    with torch.no_grad():
        ref = model(*inputs, return_dict=False)[0]
    model.save_pretrained(path, **save_kwargs)
    loaded = realign_(cls.from_pretrained(path).eval())
    assert getattr(loaded, "_ropeslr_state", None) is None  # from_pretrained alone drops RoPeSLR
    with torch.no_grad():
        plain = loaded(*inputs, return_dict=False)[0]
    assert (plain - ref).abs().max() > 1e-4
    replaced = load_ropeslr_(loaded, path)
    assert ropeslr_state(loaded).config == CFG
    with torch.no_grad():
        out = loaded(*inputs, return_dict=False)[0]
    assert torch.equal(out, ref)
    return loaded, replaced


def test_wan_save_pretrained_from_pretrained_load_ropeslr_is_exact(tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    m = WanTransformer3DModel(**WAN)
    apply_ropeslr_(m, CFG)
    loaded, replaced = _round_trip(WanTransformer3DModel, m, _wan_inputs(), tmp_path)
    assert sorted(replaced) == ["blocks.0.attn1", "blocks.1.attn1"]
    assert json.loads((tmp_path / "config.json").read_text())["_ropeslr"]["layers"] == [0, 1]
    remove_ropeslr_(loaded, replaced)  # the record leaves the config with RoPeSLR
    assert "_ropeslr" not in loaded.config


def test_hunyuan_save_pretrained_from_pretrained_load_ropeslr_is_exact(tmp_path):
    from diffusers import HunyuanVideoTransformer3DModel

    torch.manual_seed(0)
    m = HunyuanVideoTransformer3DModel(**HUNYUAN)
    apply_ropeslr_(m, CFG)
    _, replaced = _round_trip(HunyuanVideoTransformer3DModel, m, _hunyuan_inputs(), tmp_path)
    assert sorted(replaced) == ["single_transformer_blocks.0.attn", "transformer_blocks.0.attn"]


def test_sharded_weights_and_a_layer_subset_round_trip(tmp_path):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    m = WanTransformer3DModel(**WAN)
    apply_ropeslr_(m, CFG, layers=[1])
    loaded, replaced = _round_trip(
        WanTransformer3DModel, m, _wan_inputs(), tmp_path, max_shard_size="20KB"
    )
    assert len(list(tmp_path.glob("*.safetensors"))) > 1  # really sharded
    assert sorted(replaced) == ["blocks.1.attn1"]
    assert type(loaded.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"


def test_sidecar_save_ropeslr_and_the_bare_config_format(wan_dir, tmp_path):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel.from_pretrained(wan_dir).eval()
    apply_ropeslr_(m, CFG, layers=[0])
    with torch.no_grad():
        for p in ropeslr_state_dict(m).values():
            p.add_(0.25)
        ref = m(*_wan_inputs(), return_dict=False)[0]
    save_ropeslr(m, tmp_path / "side")
    assert read_ropeslr_record(tmp_path / "side") == (CFG, [0])
    m2 = WanTransformer3DModel.from_pretrained(wan_dir).eval()
    load_ropeslr_(m2, tmp_path / "side")
    with torch.no_grad():
        assert torch.equal(m2(*_wan_inputs(), return_dict=False)[0], ref)
    # the first sidecar format (the shipped zoo member): a bare config dict = all layers
    (tmp_path / "side" / "ropeslr.json").write_text(json.dumps(cfglib.to_dict(CFG)))
    assert read_ropeslr_record(tmp_path / "side") == (CFG, None)


def test_load_errors_are_clear_and_leave_the_model_untouched(wan_dir, tmp_path):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel.from_pretrained(wan_dir)
    with pytest.raises(ValueError, match="no RoPeSLR configuration"):
        load_ropeslr_(m, wan_dir)
    # parameters of another model (other head count) do not fit
    other = WanTransformer3DModel(**{**WAN, "num_attention_heads": 1, "attention_head_dim": 24})
    apply_ropeslr_(other, CFG)
    save_ropeslr(other, tmp_path / "other")
    with pytest.raises(ValueError, match="do not match|do not fit"):
        load_ropeslr_(m, tmp_path / "other")
    assert getattr(m, "_ropeslr_state", None) is None
    assert type(m.blocks[0].attn1.processor).__name__ == "WanAttnProcessor"
    # a folder whose config records RoPeSLR but whose weights hold none
    (tmp_path / "stale").mkdir()
    m.save_pretrained(tmp_path / "stale")
    cfg = json.loads((tmp_path / "stale" / "config.json").read_text())
    cfg["_ropeslr"] = {"config": cfglib.to_dict(CFG), "layers": None}
    (tmp_path / "stale" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="missing"):
        load_ropeslr_(m, tmp_path / "stale")
