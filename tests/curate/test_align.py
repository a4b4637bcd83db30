"""Aligned-thumbnail NCC verification (diffkit.curate.align; issue 19 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from diffkit.curate.align import (
    aligned_ncc,
    rank_transform,
    resample_matrix,
    thumbnail,
    thumbs_array,
    window_offsets,
)
from diffkit.curate.dedup import PhashDedupConfig, phash_clusters


def _field(rng, n=400):
    """A smooth random RGB picture (bicubic upsampling of 8x8 noise) as a PIL image."""
    from PIL import Image

    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((n, n), Image.BICUBIC)


def test_resample_matrix_is_identity_at_full_scale_and_exact_on_ramps():
    np.testing.assert_allclose(resample_matrix(16, 1.0, 0.0), np.eye(16), atol=1e-12)
    # linear interpolation reproduces a linear ramp exactly inside the window
    x = np.arange(32, dtype=np.float64)
    r = resample_matrix(32, 0.75, 0.125)
    want = (0.125 + 0.75 * (np.arange(32) + 0.5) / 32) * 32 - 0.5
    np.testing.assert_allclose(r @ x, want, atol=1e-9)
    assert np.allclose(r.sum(axis=1), 1.0)


def test_window_offsets_cover_the_free_margin():
    np.testing.assert_allclose(window_offsets(1.0, 0.1), [0.0])
    o = window_offsets(0.9, 1 / 32)
    assert o[0] == 0.0 and abs(o[-1] - 0.1) < 1e-12 and np.all(np.diff(o) <= 1 / 32 + 1e-12)


def test_rank_transform_ignores_any_increasing_tone_curve():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 100, (3, 16, 16), dtype=np.uint8)
    v = np.arange(256)
    curve = np.minimum(2 * v + v * v // 200, 255).astype(np.uint8)  # increasing, convex
    assert (np.diff(curve[:100].astype(int)) > 0).all()
    np.testing.assert_array_equal(rank_transform(t), rank_transform(curve[t]))


def test_aligned_ncc_scores_crops_and_tone_changes_above_distinct_pictures():
    """8 % crops at an arbitrary offset, gamma 0.6, contrast 0.6 and a 10 % crop of one picture
    score near 1 against it; distinct pictures score well below every variant."""
    from PIL import ImageEnhance

    rng = np.random.default_rng(1)
    pics = [_field(rng) for _ in range(4)]
    base = pics[0]
    variants = [
        base.crop((10, 22, 10 + 368, 22 + 368)),  # 8 % cut, off-centre
        base.crop((0, 40, 360, 400)),  # 10 % cut, corner
        base.point([round(255 * (v / 255) ** 0.6) for v in range(256)] * 3),
        ImageEnhance.Contrast(base).enhance(0.6),
    ]
    thumbs = np.stack([thumbnail(im, 32) for im in [base, *variants, *pics[1:]]])
    i = np.zeros(len(thumbs) - 1, np.int64)
    j = np.arange(1, len(thumbs))
    for rank in (True, False):
        s = aligned_ncc(thumbs, i, j, rank=rank)
        true, false = s[: len(variants)], s[len(variants) :]
        assert true.min() > 0.95, (rank, true)
        assert false.max() < true.min() - 0.1, (rank, true, false)
    # without the crop scales, the cropped copies lose most of their score
    s1 = aligned_ncc(thumbs, i[:2], j[:2], scales=(1.0,))
    assert (s1 < aligned_ncc(thumbs, i[:2], j[:2])).all()
    # symmetric: either row may be the crop
    np.testing.assert_allclose(aligned_ncc(thumbs, j, i), aligned_ncc(thumbs, i, j), atol=1e-6)


def test_thumbs_array_reads_arrow_buffers_with_nulls_and_slices():
    import pyarrow as pa

    rng = np.random.default_rng(2)
    t = rng.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    vals = [t[0].tobytes(), None, t[2].tobytes(), t[3].tobytes(), t[4].tobytes()]
    col = pa.chunked_array([pa.array(vals[:2], pa.binary()), pa.array(vals[2:], pa.binary())])
    got = thumbs_array(col)
    assert got.shape == (5, 8, 8)
    np.testing.assert_array_equal(got[[0, 2, 3, 4]], t[[0, 2, 3, 4]])
    assert not got[1].any()
    np.testing.assert_array_equal(thumbs_array(pa.array(vals, pa.binary()).slice(2)), t[2:])
    with pytest.raises(ValueError, match="square"):
        thumbs_array(pa.array([b"\x00" * 10], pa.binary()))


def test_ncc_verification_splits_hash_twins_and_needs_thumbnails():
    """Two rows with equal pHashes but unrelated thumbnails are merged without the NCC check and
    kept apart with it; a true crop pair stays merged."""
    rng = np.random.default_rng(3)
    a, b = _field(rng), _field(rng)
    crop = a.crop((16, 16, 384, 384))
    thumbs = np.stack([thumbnail(im, 32) for im in (a, crop, b)])
    h = np.array([7, 7, 7], np.uint64)
    ent = np.full(3, 5.0)
    off = phash_clusters(h, ent, PhashDedupConfig(verify_dhash_distance=-1))
    on = phash_clusters(
        h, ent, PhashDedupConfig(verify_dhash_distance=-1, verify_ncc=0.9), thumbs=thumbs
    )
    assert off.tolist() == [0, 0, 0]
    assert on.tolist() == [0, 0, 2]
    with pytest.raises(ValueError, match="thumb"):
        phash_clusters(h, ent, PhashDedupConfig(verify_ncc=0.9, verify_dhash_distance=-1))


@pytest.mark.parametrize(
    "field,value",
    [("verify_ncc", 1.5), ("ncc_scales", ()), ("ncc_scales", (0.4,)), ("ncc_step", 0.0)],
)
def test_ncc_config_is_validated(field, value):
    with pytest.raises(ValueError, match=field):
        PhashDedupConfig(**{field: value})
