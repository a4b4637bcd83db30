import pytest
import torch

from diffkit.attention.layout import (
    block_mean,
    block_scores,
    block_tiles,
    forced_blocks,
    grid_positions,
    inverse_permutation,
    num_blocks,
    num_selected,
    select_blocks,
    selection_mask,
    tile_permutation,
)


@pytest.mark.parametrize(
    "grid,tile", [((4, 8, 8), (4, 4, 4)), ((3, 5, 7), (2, 4, 4)), ((1, 1, 9), (1, 1, 4))]
)
def test_permutation_round_trip(grid, tile):
    perm = tile_permutation(grid, tile)
    inv = inverse_permutation(perm)
    x = torch.randn(2, 3, grid[0] * grid[1] * grid[2], 5)
    assert sorted(perm.tolist()) == list(range(x.shape[2]))
    assert torch.equal(x[:, :, perm][:, :, inv], x)


def test_tile_major_blocks_are_compact_cubes():
    grid, tile = (8, 16, 16), (4, 4, 4)
    perm = tile_permutation(grid, tile)
    pos = grid_positions(grid)[perm]
    for b in range(0, len(perm), 64):
        blk = pos[b : b + 64]
        assert (blk.amax(0) - blk.amin(0)).tolist() == [3, 3, 3]
    tiles = block_tiles(grid, tile, perm, 64)
    assert tiles.shape == (32, 3) and len({tuple(t) for t in tiles.tolist()}) == 32


def test_block_mean_ragged_tail():
    x = torch.arange(10.0).view(1, 1, 10, 1)
    m = block_mean(x, 4)
    assert m.flatten().tolist() == [1.5, 5.5, 8.5]


@pytest.mark.parametrize("L", [256, 300])
def test_block_scores_are_pooled_q_against_pooled_centred_k(L):
    """Smooth-K scores (ragged tail included) equal mean-pooled q against mean-pooled k - mean(k)
    (fp64), and centring k shifts each row by a constant, so the top-k selection is unchanged."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, L, 8, generator=g, dtype=torch.float64) for _ in range(2))
    k = k + 3.0  # a large common offset, which Smooth-K removes
    want = block_mean(q, 64) @ block_mean(k - k.mean(-2, keepdim=True), 64).transpose(-1, -2)
    got = block_scores(q, k, 64)
    assert (got - want / 8**0.5).abs().max() < 1e-12
    plain = block_scores(q, k, 64, smooth_k=False)
    row_shift = plain - got
    assert (row_shift - row_shift[..., :1]).abs().max() < 1e-12
    assert torch.equal(plain.topk(2).indices, got.topk(2).indices)


def test_budget_and_forced_blocks():
    assert num_selected(0.1, 32) == 4
    assert num_selected(1.0, 32) == 32
    assert num_selected(1e-6, 32) == 1
    scores = torch.randn(1, 2, 6, 6)
    scores[..., 3] = 100.0  # a globally attractive block
    idx, valid = select_blocks(scores, 2, forced_blocks(6))
    assert valid.all() and idx.shape[-1] == 2
    own = (idx == torch.arange(6).view(1, 1, 6, 1)).any(-1)
    assert own.all(), "the query's own block is always kept"
    assert (idx == 3).any(-1).all()
    assert (idx.diff(dim=-1) > 0).all(), "indices sorted ascending"


def test_local_radius_neighbours_are_forced():
    tiles = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 2, 2]])
    f = forced_blocks(4, tiles, radius=1)
    assert f[0].tolist() == [True, True, False, False]
    assert f[1].tolist() == [True, True, True, False]


def test_topp_selection_is_a_valid_prefix():
    scores = torch.tensor([[[[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]])
    idx, valid = select_blocks(scores, 4, None, mode="topp", top_p=0.9)
    assert valid[0, 0, 0].sum() == 1 and idx[0, 0, 0, 0] == 0
    assert valid[0, 0, 1].sum() == 4
    m = selection_mask(idx, valid, 4)
    assert m[0, 0, 0].tolist() == [True, False, False, False]


def test_bad_inputs_name_the_value():
    with pytest.raises(ValueError, match="block_size=64 is larger than the sequence length L=50"):
        num_blocks(50, 64)
    with pytest.raises(ValueError, match="density must be in"):
        num_selected(1.5, 4)
    with pytest.raises(ValueError, match="selection mode 'x'"):
        select_blocks(torch.zeros(1, 1, 2, 2), 1, mode="x")
