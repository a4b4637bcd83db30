"""moving-digits-causal architecture: KV cache == full recomputation, teacher forcing, VAE."""

from __future__ import annotations

import torch

from diffkit.models import causal_wan as cw

TINY = {**cw.DEFAULT_CONFIG, "dim": 32, "heads": 2, "ffn_dim": 64, "layers": 2, "num_frames": 9}


def _model():
    torch.manual_seed(0)
    return cw.build(TINY).eval()


def test_kv_cached_rollout_equals_full_recomputation_with_block_causal_mask():
    m = _model()
    labels = torch.tensor([[3, -1], [7, 2]])
    noise = cw.rollout_noise(2, TINY, torch.Generator().manual_seed(0))
    cached = cw.rollout(m, labels, noise)
    full = cw.rollout(m, labels, noise, use_cache=False)
    assert cached.shape == (2, 9, 16, 8, 8)
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-5)


def test_prefix_reuse_regenerates_only_the_suffix_identically():
    m = _model()
    labels = torch.tensor([[1, -1]])
    noise = cw.rollout_noise(1, TINY, torch.Generator().manual_seed(1))
    full = cw.rollout(m, labels, noise)
    suffix = cw.rollout(m, labels, noise, start_chunk=2, prefix=full)
    torch.testing.assert_close(suffix, full, atol=1e-5, rtol=1e-5)


def test_teacher_forcing_matches_inference_view():
    """The noisy chunk k in the teacher-forcing sequence sees what rollout's call k sees."""
    m = _model()
    g = torch.Generator().manual_seed(2)
    clean = torch.randn(1, 9, 16, 8, 8, generator=g)
    noisy = torch.randn(1, 9, 16, 8, 8, generator=g)
    labels = torch.tensor([[4, -1]])
    seq, idx, mask = cw.teacher_forcing_inputs(m, clean, noisy)
    t = torch.cat([torch.zeros(1, 9), torch.full((1, 9), 600.0)], 1)
    out = m(seq, t, labels, frame_index=idx, mask=mask)[:, 9:]
    cache = cw.KVCache.empty(len(m.blocks))
    m(clean[:, :3], torch.zeros(1, 3), labels, cache=cache, write_cache=True)
    step = m(noisy[:, 3:6], torch.full((1, 3), 600.0), labels, cache=cache)
    torch.testing.assert_close(out[:, 3:6], step, atol=1e-5, rtol=1e-5)


def test_block_causal_mask_shape_and_pattern():
    m = _model()
    mask = m.block_mask(torch.arange(6), torch.arange(6))[0, 0]
    P = m.tokens_per_frame
    assert mask.shape == (6 * P, 6 * P)
    assert bool(mask[0, 3 * P - 1]) and not bool(mask[0, 3 * P])  # chunk 0 cannot see chunk 1
    assert bool(mask[3 * P, 0])


def test_vae_round_trip_and_sigmas():
    x = torch.rand(2, 3, 1, 32, 32) * 2 - 1
    lat = cw.encode_video(x)
    assert lat.shape == (2, 3, 16, 8, 8)
    torch.testing.assert_close(cw.decode_latents(lat), x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        cw.sigmas_for().float(), torch.tensor([1.0, 0.9375, 0.833333, 0.625]), atol=1e-5, rtol=0
    )
    # a model's sampler: its config's passes and shift, else Self-Forcing's 4 at shift 5
    assert cw.sample_steps({}) == 4 and cw.sample_steps({"sample_steps": 8}) == 8
    assert torch.equal(cw.sampler_sigmas({}), cw.sigmas_for())
    eight = cw.sampler_sigmas({"sample_steps": 8, "shift": 3.0})
    assert torch.equal(eight, cw.sigmas_for(cw.denoising_timesteps(8), 3.0)) and len(eight) == 8


def test_int8_kv_cache_is_close_and_four_times_smaller():
    m = _model()
    labels = torch.tensor([[5, -1]])
    noise = cw.rollout_noise(1, TINY, torch.Generator().manual_seed(3))
    ref = cw.rollout(m, labels, noise)
    q = cw.rollout(m, labels, noise, kv_bits=8)
    assert not torch.equal(q, ref)
    assert float((q - ref).pow(2).mean() / ref.pow(2).mean()) < 1e-3
    fp_cache, q_cache = cw.KVCache.empty(2), cw.KVCache.empty(2, bits=8)
    x = torch.randn(1, 3, 16, 8, 8)
    m(x, torch.zeros(1, 3), labels, cache=fp_cache, write_cache=True)
    m(x, torch.zeros(1, 3), labels, cache=q_cache, write_cache=True)
    assert q_cache.nbytes() < 0.35 * fp_cache.nbytes()


def test_rollout_uses_the_installed_cache_store():
    """kv_cache_factory is the hook a method (e.g. the quantized KV cache) plugs its store into."""
    m = _model()
    labels = torch.tensor([[6, -1]])
    noise = cw.rollout_noise(1, TINY, torch.Generator().manual_seed(4))
    ref = cw.rollout(m, labels, noise)
    made = []

    class Counting(cw.KVCache):
        def append(self, i, k, v):
            made.append(i)
            super().append(i, k, v)

    m.kv_cache_factory = lambda layers: Counting([None] * layers, [None] * layers)
    out = cw.rollout(m, labels, noise)
    assert isinstance(m.new_cache(), Counting)
    assert made == [0, 1] * 3  # one t = 0 refresh per chunk and block
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    m.kv_cache_factory = None
    assert type(m.new_cache()) is cw.KVCache


def test_sample_is_the_decoded_cached_rollout():
    m = _model()
    labels = torch.tensor([3, 7])
    v = cw.sample(m, labels, generator=torch.Generator().manual_seed(0))
    c = m.config
    assert v.shape == (
        2,
        c["num_frames"],
        1,
        c["latent_size"] * c["vae_patch"],
        c["latent_size"] * c["vae_patch"],
    )
    assert v.min() >= -1 and v.max() <= 1
    noise = cw.rollout_noise(2, c, torch.Generator().manual_seed(0))
    slots = torch.tensor([[3, -1], [7, -1]])
    ref = cw.decode_latents(cw.rollout(m, slots, noise), c).clamp(-1, 1)
    assert torch.equal(v, ref)
    # Same generator -> same videos; other labels -> other videos.
    again = cw.sample(m, labels, generator=torch.Generator().manual_seed(0))
    assert torch.equal(v, again)
    other = cw.sample(m, torch.tensor([4, 1]), generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(v, other)


def test_denoising_timesteps_and_step_count():
    assert cw.denoising_timesteps(4) == cw.DENOISING_TIMESTEPS
    assert cw.denoising_timesteps(2) == (1000.0, 500.0)
    m = _model()
    noise = cw.rollout_noise(1, m.config, torch.Generator().manual_seed(0), steps=2)
    assert noise.shape[2] == 2
    lat = cw.rollout(m, torch.tensor([[1, -1]]), noise)
    full = cw.rollout(m, torch.tensor([[1, -1]]), noise, use_cache=False)
    torch.testing.assert_close(lat, full, atol=1e-5, rtol=1e-5)


def test_guided_rollout_is_classifier_free_guidance_and_cache_exact():
    """cfg_scale 1 is the plain rollout; a guided rollout with the cache (both branches cached
    as one batch of 2B) equals the guided full recomputation, and its first pass is u + s (c - u)."""
    m = _model()
    labels = torch.tensor([[3, -1], [7, -1]])
    noise = cw.rollout_noise(2, TINY, torch.Generator().manual_seed(5))
    plain = cw.rollout(m, labels, noise)
    assert torch.equal(cw.rollout(m, labels, noise, cfg_scale=1.0), plain)
    guided = cw.rollout(m, labels, noise, cfg_scale=3.0)
    full = cw.rollout(m, labels, noise, cfg_scale=3.0, use_cache=False)
    torch.testing.assert_close(guided, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(guided, plain)
    # One chunk, one pass: x0 = x - sigma * (u + s (c - u)).
    one = noise[:, :1, :1]
    ch = TINY["chunk_frames"]
    sig = float(cw.sigmas_for(cw.denoising_timesteps(1))[0])
    x = one[:, 0, 0]
    t = torch.full((2, ch), 1000.0 * sig)
    c = m(x, t, labels)
    u = m(x, t, torch.full_like(labels, -1))
    ref = x - sig * (u + 3.0 * (c - u))
    torch.testing.assert_close(cw.rollout(m, labels, one, cfg_scale=3.0), ref, atol=1e-5, rtol=1e-5)


def test_sample_uses_the_config_guidance_scale():
    m = _model()
    labels = torch.tensor([3])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = cw.sample(m, labels, generator=g())
    m.config["cfg_scale"] = 2.0
    assert torch.equal(
        cw.sample(m, labels, generator=g()), cw.sample(m, labels, generator=g(), cfg_scale=2.0)
    )
    assert not torch.equal(cw.sample(m, labels, generator=g()), plain)
    assert torch.equal(cw.sample(m, labels, generator=g(), cfg_scale=1.0), plain)
