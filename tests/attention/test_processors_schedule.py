"""Issue 17 item 2's processor bugs: the dense-first-steps counter under per-token timesteps
(Wan2.2 TI2V), and the dtype of the new parameters in a mixed-precision model."""

import torch

from diffkit.attention import RoPeSLRConfig, apply_ropeslr_, ropeslr_parameters, ropeslr_state

CFG = dict(density=0.25, block_size=16, rank=12)


def _inputs(timestep: torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(
        hidden_states=torch.randn(2, 4, 4, 16, 16, generator=g),
        timestep=timestep,
        encoder_hidden_states=torch.randn(2, 3, 16, generator=g),
        return_dict=False,
    )


def _per_token(t: float) -> torch.Tensor:
    """TI2V-style per-token timesteps (B, seq): the first frame's tokens (the conditioning image)
    at t = 0, the rest at t. Grid (4, 8, 8): 64 tokens per frame."""
    ts = torch.full((2, 4 * 8 * 8), t)
    ts[:, :64] = 0.0
    return ts


@torch.no_grad()
def test_per_token_timesteps_with_a_clean_first_frame_end_the_dense_steps(wan_dir):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel.from_pretrained(wan_dir).eval()
    dense_ref = [m(**_inputs(_per_token(t)))[0] for t in (900.0, 500.0)]
    apply_ropeslr_(m, RoPeSLRConfig(**CFG, dense_first_steps=1))
    st = ropeslr_state(m)
    first = m(**_inputs(_per_token(900.0)))[0]
    assert (st.step, st.dense_step) == (0, True)
    assert (first - dense_ref[0]).abs().max() < 1e-5
    second = m(**_inputs(_per_token(500.0)))[0]
    # the counter follows the noisy tokens (t = 500 < 900), not token 0 (t = 0 on both calls)
    assert (st.step, st.dense_step, st.last_t) == (1, False, 500.0)
    assert (second - dense_ref[1]).abs().max() > 1e-4


@torch.no_grad()
def test_new_parameters_follow_the_attention_weights_dtype(wan_dir):
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel.from_pretrained(wan_dir, torch_dtype=torch.bfloat16).eval()
    first = next(m.parameters())
    # diffusers keeps scale_shift_table (the first parameter) in fp32 in a bf16 model
    assert first.dtype == torch.float32
    assert m.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    apply_ropeslr_(m, RoPeSLRConfig(**CFG))
    params = ropeslr_parameters(m)
    assert params and {p.dtype for p in params} == {torch.bfloat16}
    inputs = _inputs(torch.full((2,), 500.0))
    for key in ("hidden_states", "encoder_hidden_states"):
        inputs[key] = inputs[key].bfloat16()
    out = m(**inputs)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
