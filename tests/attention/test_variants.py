"""RoPeSLR through the real diffusers pipelines of the Wan family (issue 17 item 2): Wan2.2's
two-expert ``WanPipeline``, Wan2.2 TI2V (``expand_timesteps``), ``WanVACEPipeline`` and
``SkyReelsV2Pipeline``, tiny random-init configs. Density 1 must equal the dense pipeline; a
sparse config must change it; the RoPeSLR model must survive save_pretrained/from_pretrained."""

import copy
import dataclasses

import diffusers
import pytest
import torch
from _reload import realign_
from _wan_tiny import CALL, SKYREELS, VACE, WAN, pipeline, prompt_embeds

from diffkit.attention import (
    RoPeSLRConfig,
    apply_ropeslr_,
    apply_ropeslr_pipeline_,
    load_ropeslr_,
    load_ropeslr_pipeline_,
    remove_ropeslr_,
    ropeslr_state,
    ropeslr_state_dict,
)

# 96 tokens = 6 blocks of 16; tile (1, 4, 4) keeps blocks compact on the 3 x 4 x 8 grid
DENSE = RoPeSLRConfig(density=1.0, block_size=16, tile=(1, 4, 4), rank=12, backend="reference")
SPARSE = RoPeSLRConfig(density=0.34, block_size=16, tile=(1, 4, 4), rank=12, backend="reference")
# Density 1 is exact in exact arithmetic; one forward differs from SDPA by ~1e-6 in fp32 (the
# processor tests hold it to 1e-5), and 4 Euler steps with CFG scale 3 amplify that at most ~10x.
TOL = 1e-4


def _latents(pipe, **extra):
    g = torch.Generator().manual_seed(1)
    out = pipe(**CALL, **prompt_embeds(), **extra, output_type="latent", generator=g)
    return out.frames


def _perturb_(model):
    with torch.no_grad():
        for i, p in enumerate(ropeslr_state_dict(model).values()):
            p.add_(0.1 * (i % 3 + 1))


def _wan(seed):
    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(**WAN).eval()


def _boundary_after(pipe, steps_of_expert_1: int) -> float:
    """A boundary_ratio that hands over to transformer_2 after this many steps."""
    pipe.scheduler.set_timesteps(CALL["num_inference_steps"])
    ts = pipe.scheduler.timesteps
    mid = (ts[steps_of_expert_1 - 1] + ts[steps_of_expert_1]) / 2
    return float(mid / pipe.scheduler.config.num_train_timesteps)


def test_wan22_two_experts_density_one_sparse_and_save_load(tmp_path):
    pipe = pipeline("WanPipeline", transformer=_wan(0), transformer_2=_wan(1), boundary_ratio=0.5)
    ref = _latents(pipe)
    replaced = apply_ropeslr_pipeline_(pipe, DENSE)
    assert set(replaced) == {"transformer", "transformer_2"}
    assert ropeslr_state(pipe.transformer) is ropeslr_state(pipe.transformer_2)
    assert (_latents(pipe) - ref).abs().max() < TOL

    pipe = pipeline("WanPipeline", transformer=_wan(0), transformer_2=_wan(1), boundary_ratio=0.5)
    apply_ropeslr_pipeline_(pipe, SPARSE)
    _perturb_(pipe.transformer), _perturb_(pipe.transformer_2)
    sparse = _latents(pipe)
    assert (sparse - ref).abs().max() > 1e-3
    pipe.save_pretrained(tmp_path)
    loaded = diffusers.WanPipeline.from_pretrained(tmp_path, tokenizer=None, text_encoder=None)
    loaded.set_progress_bar_config(disable=True)
    realign_(loaded.transformer), realign_(loaded.transformer_2)
    load_ropeslr_pipeline_(loaded, tmp_path)
    assert ropeslr_state(loaded.transformer) is ropeslr_state(loaded.transformer_2)
    assert torch.equal(_latents(loaded), sparse)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_wan22_experts_count_one_sampling_run(compiled):
    """dense_first_steps=2 with expert 1 taking the first 2 steps: the low-noise expert must run
    sparse from its first step (with a step count of its own it would restart at 0 and stay
    dense). Spike only (background=False), so the result does not depend on new parameters.
    Compiled: both experts under torch.compile (the traced counter lives in expert 1's buffers
    and expert 2 reads and writes the same ones)."""
    spike = RoPeSLRConfig(
        density=0.34, block_size=16, tile=(1, 4, 4), background=False, backend="reference"
    )
    t1, t2 = _wan(0), _wan(1)
    shared = pipeline("WanPipeline", transformer=copy.deepcopy(t1), transformer_2=copy.deepcopy(t2))
    ratio = _boundary_after(shared, 2)
    shared.register_to_config(boundary_ratio=ratio)
    dense = _latents(shared)
    apply_ropeslr_pipeline_(shared, dataclasses.replace(spike, dense_first_steps=2))
    if compiled:
        for t in (shared.transformer, shared.transformer_2):
            t.compile(backend="eager", fullgraph=True)
        assert not hasattr(shared.transformer_2, "_ropeslr_step")  # one counter, expert 1's
    out = _latents(shared)
    # the same computation spelled out: expert 1 untouched (dense), expert 2 sparse throughout
    expected = pipeline("WanPipeline", transformer=t1, transformer_2=t2, boundary_ratio=ratio)
    apply_ropeslr_(expected.transformer_2, spike)
    want = _latents(expected)
    assert (want - dense).abs().max() > 1e-3  # the check below can tell the two apart
    assert (out - want).abs().max() < TOL


def test_wan22_ti2v_expand_timesteps():
    """TI2V's per-token timesteps (B, L) reach the pre-hook; density 1 equals dense."""
    pipe = pipeline("WanPipeline", transformer=_wan(0), expand_timesteps=True)
    ref = _latents(pipe)
    apply_ropeslr_pipeline_(pipe, DENSE)
    assert (_latents(pipe) - ref).abs().max() < TOL
    assert ropeslr_state(pipe.transformer).grid == (3, 4, 8)
    pipe = pipeline("WanPipeline", transformer=_wan(0), expand_timesteps=True)
    apply_ropeslr_pipeline_(pipe, SPARSE)
    assert (_latents(pipe) - ref).abs().max() > 1e-3


def test_wan22_ti2v_image_to_video():
    """WanImageToVideoPipeline with expand_timesteps (Wan2.2 TI2V-5B): the first latent frame is
    the encoded image, its tokens get timestep 0; density 1 equals dense, sparse changes it."""
    from PIL import Image

    image = Image.new("RGB", (CALL["width"], CALL["height"]), (200, 30, 60))

    def make():
        return pipeline(
            "WanImageToVideoPipeline",
            transformer=_wan(0),
            expand_timesteps=True,
            image_processor=None,
            image_encoder=None,
        )

    pipe = make()
    ref = _latents(pipe, image=image)
    apply_ropeslr_pipeline_(pipe, DENSE)
    assert (_latents(pipe, image=image) - ref).abs().max() < TOL
    pipe = make()
    apply_ropeslr_pipeline_(pipe, SPARSE)
    assert (_latents(pipe, image=image) - ref).abs().max() > 1e-3


def _control_video():
    from PIL import Image

    return [Image.new("RGB", (CALL["width"], CALL["height"]), (20 * i, 90, 40)) for i in range(9)]


def test_wan_vace_blocks_and_vace_blocks(tmp_path):
    torch.manual_seed(0)
    model = diffusers.WanVACETransformer3DModel(**VACE).eval()
    pipe = pipeline("WanVACEPipeline", transformer=model)
    video = _control_video()
    ref = _latents(pipe, video=video)
    replaced = apply_ropeslr_(pipe.transformer, DENSE)
    assert sorted(replaced) == [
        "blocks.0.attn1",
        "blocks.1.attn1",
        "vace_blocks.0.attn1",
        "vace_blocks.1.attn1",
    ]
    assert (_latents(pipe, video=video) - ref).abs().max() < TOL
    _round_trip_sparse(
        diffusers.WanVACETransformer3DModel, pipe, replaced, ref, tmp_path, video=video
    )


def test_skyreels_v2(tmp_path):
    torch.manual_seed(0)
    model = diffusers.SkyReelsV2Transformer3DModel(**SKYREELS).eval()
    pipe = pipeline("SkyReelsV2Pipeline", transformer=model)
    ref = _latents(pipe)
    replaced = apply_ropeslr_(pipe.transformer, DENSE)
    assert sorted(replaced) == ["blocks.0.attn1", "blocks.1.attn1"]
    assert (_latents(pipe) - ref).abs().max() < TOL
    _round_trip_sparse(diffusers.SkyReelsV2Transformer3DModel, pipe, replaced, ref, tmp_path)


def test_skyreels_v2_causal_diffusion_forcing_is_a_clear_error():
    torch.manual_seed(0)
    model = diffusers.SkyReelsV2Transformer3DModel(**SKYREELS).eval()
    model._set_ar_attention(3)  # block-causal attention mask over frames
    apply_ropeslr_(model, SPARSE)
    x, t, c = torch.randn(1, 4, 3, 8, 16), torch.tensor([500.0]), torch.randn(1, 5, 16)
    with pytest.raises(ValueError, match="attention_mask.*num_frame_per_block"):
        model(x, t, c)


def _round_trip_sparse(cls, pipe, replaced, ref, path, **extra):
    """Sparse RoPeSLR changes the pipeline; save_pretrained -> from_pretrained -> load_ropeslr_
    reproduces it exactly."""
    remove_ropeslr_(pipe.transformer, replaced)
    apply_ropeslr_(pipe.transformer, SPARSE)
    _perturb_(pipe.transformer)
    sparse = _latents(pipe, **extra)
    assert (sparse - ref).abs().max() > 1e-3
    pipe.transformer.save_pretrained(path)
    pipe.transformer = realign_(cls.from_pretrained(path).eval())
    load_ropeslr_(pipe.transformer, path)
    assert torch.equal(_latents(pipe, **extra), sparse)
