"""The RoPE facts RoPeSLR is built on (spec f.2), in float64."""

import logging

import pytest
import torch

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams, ropeslr_attention
from diffkit.core.rope import apply_rope, split_3d

GRID = (4, 8, 8)
D = 24


def rope_tables(head_dim, grid, offset=(0, 0, 0), theta=10000.0):
    """Wan-layout 3D RoPE cos/sin in float64 (core.rope returns float32 tables)."""
    f, h, w = grid
    cos, sin = [], []
    for axis, (dim, size, start) in enumerate(zip(split_3d(head_dim), grid, offset)):
        inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        ang = torch.outer(torch.arange(start, start + size, dtype=torch.float64), inv)
        shape = [1, 1, 1, dim]
        shape[axis] = size
        c = ang.cos().repeat_interleave(2, 1).view(shape).expand(f, h, w, dim)
        s = ang.sin().repeat_interleave(2, 1).view(shape).expand(f, h, w, dim)
        cos.append(c)
        sin.append(s)
    L = f * h * w
    return torch.cat(cos, -1).reshape(L, head_dim), torch.cat(sin, -1).reshape(L, head_dim)


def _qk(seed=0):
    g = torch.Generator().manual_seed(seed)
    L = GRID[0] * GRID[1] * GRID[2]
    return [torch.randn(1, 2, L, D, generator=g, dtype=torch.float64) for _ in range(3)]


def test_3d_rope_scores_invariant_to_global_shift():
    q, k, _ = _qk()
    c0, s0 = rope_tables(D, GRID)
    c1, s1 = rope_tables(D, GRID, offset=(3, 5, 11))
    a = apply_rope(q, c0, s0) @ apply_rope(k, c0, s0).transpose(-1, -2)
    b = apply_rope(q, c1, s1) @ apply_rope(k, c1, s1).transpose(-1, -2)
    assert (a - b).abs().max() < 1e-12


def test_spike_path_inherits_shift_invariance():
    q, k, v = _qk()
    cfg = RoPeSLRConfig(density=0.25, background=False, block_size=32, tile=(2, 4, 4))
    outs = []
    for off in [(0, 0, 0), (7, 2, 9)]:
        c, s = rope_tables(D, GRID, off)
        outs.append(
            ropeslr_attention(apply_rope(q, c, s), apply_rope(k, c, s), v, config=cfg, grid=GRID)
        )
    assert (outs[0] - outs[1]).abs().max() < 1e-12


def _ape(cfg):
    return RoPeSLRParams(cfg, heads=1, head_dim=D).double()


def test_fourier_ape_kernel_depends_only_on_delta_and_decays():
    p = _ape(RoPeSLRConfig(rank=16))
    pos = torch.zeros(40, 3, dtype=torch.long)
    pos[:, 2] = torch.arange(40)
    shifted = pos + torch.tensor([5, 7, 13])
    with torch.no_grad():
        k0 = p.ape(pos)[0] @ p.ape(pos)[0].T
        k1 = p.ape(shifted)[0] @ p.ape(shifted)[0].T
    assert (k0 - k1).abs().max() < 1e-12
    # Toeplitz: the kernel is a function of Delta only.
    for delta in range(1, 5):
        diag = torch.diagonal(k0, delta)
        assert (diag - diag[0]).abs().max() < 1e-12
    prof = torch.stack([torch.diagonal(k0, dd).mean() for dd in range(40)])
    assert (prof.diff() < 0).all(), "mean kernel value decreases with |Delta| at initialisation"


def test_negative_control_linear_attention_after_rope_is_not_shift_invariant():
    """The paper's "RoPE dilemma": phi(RoPE(q)) . phi(RoPE(k)) changes under a global shift."""
    q, k, _ = _qk()
    phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    c0, s0 = rope_tables(D, GRID)
    c1, s1 = rope_tables(D, GRID, offset=(3, 5, 11))
    a = phi(apply_rope(q, c0, s0)) @ phi(apply_rope(k, c0, s0)).transpose(-1, -2)
    b = phi(apply_rope(q, c1, s1)) @ phi(apply_rope(k, c1, s1)).transpose(-1, -2)
    rel = ((a - b).pow(2).mean() / a.pow(2).mean()).item()
    assert rel > 1e-3, f"expected the shift to change linear-attention scores, got rel var {rel}"


def test_background_features_with_fourier_ape_keep_the_kernel_shift_invariant():
    """With concat injection the APE part of phi_q . phi_k is exactly gamma^2 kappa(Delta)."""
    cfg = RoPeSLRConfig(rank=12, inject="concat")
    p = _ape(cfg)
    x = torch.zeros(1, 1, 30, D, dtype=torch.float64)
    pos = torch.zeros(30, 3, dtype=torch.long)
    pos[:, 1] = torch.arange(30)
    with torch.no_grad():
        u = p.u_q
        f0 = p.features(x, u, pos)
        f1 = p.features(x, u, pos + 4)
    k0, k1 = f0 @ f0.transpose(-1, -2), f1 @ f1.transpose(-1, -2)
    assert (k0 - k1).abs().max() < 1e-12


def test_table_ape_warns_beyond_its_size(caplog):
    p = _ape(RoPeSLRConfig(rank=12, ape="table", ape_max_len=(4, 8, 8)))
    pos = torch.tensor([[0, 0, 0], [9, 0, 0]])
    with caplog.at_level(logging.WARNING):
        out = p.ape(pos)
    assert out.shape == (1, 2, 12)
    assert "exceeds the table size" in caplog.text


def test_rank_must_split_over_three_axes():
    with pytest.raises(ValueError, match="rank"):
        RoPeSLRConfig(rank=5)
