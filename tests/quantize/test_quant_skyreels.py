"""diffusers SkyReelsV2Transformer3DModel (diffusion forcing): calibrate + convert, tiny config
saved and reloaded with from_pretrained (the path a user takes with real weights)."""

from __future__ import annotations

import pytest
import torch

from diffkit.quantize import (
    QARVDConfig,
    RTNConfig,
    load_quantized,
    only_chunks,
    quant_layers,
    quantize_,
    save_quantized,
)
from diffkit.quantize.chunks import chunk
from diffkit.quantize.targets import (
    calibrate_skyreels,
    check_supported,
    diffusion_forcing_schedule,
    skyreels_chunk_ids,
)

TINY = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
    out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
    qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
)  # fmt: skip


@pytest.fixture(scope="module")
def skyreels_dir(tmp_path_factory):
    from diffusers import SkyReelsV2Transformer3DModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("skyreels")
    SkyReelsV2Transformer3DModel(**TINY).save_pretrained(path)
    return path


def _load(path):
    from diffusers import SkyReelsV2Transformer3DModel

    m = SkyReelsV2Transformer3DModel.from_pretrained(path).eval()
    m._set_ar_attention(3)
    return m


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(1, 4, 6, 8, 8, generator=g)
    text = torch.randn(1, 12, 16, generator=g)
    t = torch.tensor([[100, 100, 100, 700, 700, 700]])
    return lat, text, t


def _forward(m, lat, text, t):
    with torch.no_grad():
        return m(lat, t, text, enable_diffusion_forcing=True, return_dict=False)[0]


@pytest.mark.parametrize("cfg", [RTNConfig(w_bits=8, a_bits=8), QARVDConfig(w_bits=8, a_bits=8, iters=10)],
                         ids=["rtn", "qarvd"])  # fmt: skip
def test_skyreels_calibrate_convert_close_to_fp(skyreels_dir, cfg, tmp_path):
    model = _load(skyreels_dir)
    lat, text, t = _inputs()
    ref = _forward(model, lat, text, t)
    quantize_(model, cfg)
    names = set(quant_layers(model))
    assert "blocks.0.attn1.to_q" in names and "blocks.1.ffn.net.2" in names
    assert not any("time_embedder" in n or "time_proj" in n or n == "proj_out" for n in names)
    calibrate_skyreels(model, lat, text, generator=torch.Generator().manual_seed(1))
    assert sorted(quant_layers(model)["blocks.0.attn1.to_q"].rows) == [0, 1]  # frame blocks
    assert sorted(quant_layers(model)["blocks.0.attn2.to_k"].rows) == [-1]  # text: untagged
    quantize_(model, type(cfg)(**{**cfg.__dict__, "step": "convert"}))
    out = _forward(model, lat, text, t)
    rel = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert rel < 0.05, rel
    save_quantized(model, tmp_path / "q", source=str(skyreels_dir))
    fresh = _load(skyreels_dir)
    load_quantized(fresh, tmp_path / "q", backend=model.quantize_info["backend"])
    assert torch.equal(_forward(fresh, lat, text, t), out)


def test_chunk_ids_follow_frame_blocks(skyreels_dir):
    model = _load(skyreels_dir)
    ids = skyreels_chunk_ids(model, (1, 4, 6, 8, 8))
    assert ids.tolist() == [0] * 48 + [1] * 48


def test_unsupported_model_class_is_named():
    with pytest.raises(ValueError, match="Linear has no calibration driver; supported: CausalWan"):
        check_supported(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "blocks,steps,ar_step",
    [(3, (1000, 750, 500, 250), 2), (4, (999, 800, 600, 400, 200), 1), (2, (1000, 500), 0),
     (5, (1000, 900, 700, 500, 300, 100), 3)],
)  # fmt: skip
def test_schedule_equals_diffusers_generate_timestep_matrix(blocks, steps, ar_step):
    from diffusers.pipelines.skyreels_v2.pipeline_skyreels_v2_diffusion_forcing import (
        SkyReelsV2DiffusionForcingPipeline as Pipe,
    )

    ref = Pipe.generate_timestep_matrix(
        None, blocks, torch.tensor(steps), blocks, ar_step=ar_step, causal_block_size=1
    )[0]
    ours = diffusion_forcing_schedule(blocks, steps, ar_step)
    assert torch.equal(ours, ref)
    # earlier blocks are more denoised in every row (the direction the calibration must follow);
    # 999 is the template's "not started yet" entry, which precedes the first step
    later, earlier = ours[:, 1:], ours[:, :-1]
    assert bool(((later >= earlier) | (later == 999)).all())


def test_calibration_feeds_the_diffusers_schedule_with_cleaner_early_frames(skyreels_dir):
    model = _load(skyreels_dir)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    lat, text, _ = _inputs()
    used = calibrate_skyreels(model, lat, text, steps=(1000, 500), ar_step=1)
    expected = diffusion_forcing_schedule(2, (1000, 500), 1).repeat_interleave(3, dim=1)
    assert torch.equal(used, expected) and torch.equal(torch.cat(seen), expected)
    assert used[1].tolist() == [500] * 3 + [1000] * 3  # block 0 ahead of block 1


def test_only_chunks_follows_per_token_tags(skyreels_dir):
    model = _load(skyreels_dir)
    lat, text, t = _inputs()
    ref = _forward(model, lat, text, t)
    cfg = RTNConfig(w_bits=4, a_bits=4)
    quantize_(model, cfg)
    calibrate_skyreels(model, lat, text, generator=torch.Generator().manual_seed(1))
    quantize_(model, RTNConfig(w_bits=4, a_bits=4, step="convert"), keep_fp=True)
    ids = skyreels_chunk_ids(model, tuple(lat.shape))
    with only_chunks([1]), chunk(ids):
        late = _forward(model, lat, text, t)
    with only_chunks([0]), chunk(ids):
        early = _forward(model, lat, text, t)
    with only_chunks([]), chunk(ids):
        assert torch.equal(_forward(model, lat, text, t), ref)
    # block-causal attention: quantizing only block 1 leaves block 0's frames exactly FP ...
    assert torch.equal(late[:, :, :3], ref[:, :, :3])
    assert not torch.allclose(late[:, :, 3:], ref[:, :, 3:], atol=1e-4)
    # ... and quantizing block 0 reaches block 1 through attention
    assert not torch.allclose(early[:, :, :3], ref[:, :, :3], atol=1e-4)
    assert not torch.allclose(early[:, :, 3:], ref[:, :, 3:], atol=1e-4)
