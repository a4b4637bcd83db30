"""Aligned-thumbnail NCC verification (diffkit.curate.align; issue 19 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from diffkit.curate.align import (
    aligned_ncc,
    binomial_matrix,
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


def _direct_ncc(thumbs, i, j, scales, step, refine, smooth):
    """The definition, window by window: resample each window of one side explicitly, take its
    NCC with the other side (channels share one norm), keep the best over scales and grid
    offsets (first maximum), then over the 8 half-step neighbours of that window; both ways."""
    x = np.asarray(thumbs, np.float64)
    x = x[:, None] if x.ndim == 3 else np.moveaxis(x, 3, 1)
    size = x.shape[-1]
    low = binomial_matrix(size) if smooth else np.eye(size)

    def std(w):  # a flat window (no variance) has NCC 0 with anything
        w = w - w.mean(axis=(-2, -1), keepdims=True)
        n = np.sqrt((w * w).sum())
        return w / n if n > 1e-6 else 0.0 * w

    def ncc(a, b_std, s, oy, ox):
        ry, rx = low @ resample_matrix(size, s, oy), low @ resample_matrix(size, s, ox)
        return float((std(ry @ a @ rx.T) * b_std).sum())

    def one_way(a, b):
        b_std = std(low @ b @ low.T)
        best, arg = -1.0, None
        for s in scales:
            offs = window_offsets(s, step)
            for oy in offs:
                for ox in offs:
                    v = ncc(a, b_std, s, oy, ox)
                    if v > best:
                        best, arg = v, (s, oy, ox)
        if refine:
            s, oy, ox = arg
            h = step / 2
            for dy in (-h, 0.0, h):
                for dx in (-h, 0.0, h):
                    y, z = np.clip(oy + dy, 0.0, 1.0 - s), np.clip(ox + dx, 0.0, 1.0 - s)
                    best = max(best, ncc(a, b_std, s, y, z))
        return best

    return np.array([max(one_way(x[p], x[q]), one_way(x[q], x[p])) for p, q in zip(i, j)])


@pytest.mark.parametrize("colour,smooth,refine", [(True, True, True), (False, False, True),
                                                  (True, False, False)])  # fmt: skip
def test_aligned_ncc_equals_the_window_by_window_definition(colour, smooth, refine):
    """The factored computation (per-row transforms, one dot product per window pair, pairs in
    row-bounded groups) scores what the direct definition scores, for crops, tone changes,
    distinct pictures and a flat image, whatever the group size."""
    from PIL import Image, ImageEnhance

    rng = np.random.default_rng(6)
    pics = [_field(rng) for _ in range(3)]
    ims = [*pics, pics[0].crop((12, 30, 372, 390)), ImageEnhance.Contrast(pics[1]).enhance(0.5),
           pics[2].crop((0, 0, 380, 380)), Image.new("RGB", (400, 400), (90, 120, 30))]  # fmt: skip
    thumbs = np.stack([thumbnail(im, 16, colour=colour) for im in ims])
    i, j = np.triu_indices(len(ims), 1)
    kw = dict(scales=(1.0, 0.9), step=1 / 16, refine=refine, smooth=smooth)
    want = _direct_ncc(thumbs, i, j, **kw)
    for budget in (2, 4, 64):
        got = aligned_ncc(thumbs, i, j, row_budget=budget, **kw)
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert want[np.flatnonzero((i == 0) & (j == 3))] > 0.9  # the crop is found
    assert aligned_ncc(thumbs, i[:0], j[:0]).shape == (0,)
    with pytest.raises(ValueError, match="row_budget"):
        aligned_ncc(thumbs, i, j, row_budget=1)


def _textured(rng, n=400):
    """A smooth field plus detail about 4 px wide, much finer than a 32-px thumbnail's pixel
    (12.5 px): the case where the two thumbnail grids alias differently."""
    from PIL import Image

    fine = rng.integers(0, 256, (n // 4, n // 4, 3), dtype=np.uint8)
    fine = np.asarray(Image.fromarray(fine).resize((n, n), Image.NEAREST), np.float32)
    x = 0.2 * np.asarray(_field(rng, n), np.float32) + 0.8 * fine
    return Image.fromarray(x.astype(np.uint8))


def test_binomial_matrix_smooths_and_keeps_constants():
    b = binomial_matrix(8)
    np.testing.assert_allclose(b.sum(axis=1), 1.0)
    np.testing.assert_allclose(b[3, 2:5], [0.25, 0.5, 0.25])
    np.testing.assert_allclose(b[0, :2], [0.75, 0.25])  # edge replicated


def test_smoothing_recovers_crops_of_textured_pictures():
    """On detail finer than a thumbnail pixel, a crop's best unsmoothed window loses to the
    aliasing of the two grids; low-passing both sides alike restores it, and a distinct
    textured picture stays far below."""
    rng = np.random.default_rng(4)
    base, other = _textured(rng), _textured(rng)
    crops = [base.crop((13, 27, 13 + 364, 27 + 364)), base.crop((40, 0, 400, 360))]  # 9 %, 10 %
    thumbs = np.stack([thumbnail(im, 32, colour=True) for im in [base, *crops, other]])
    i, j = np.zeros(3, np.int64), np.arange(1, 4)
    plain = aligned_ncc(thumbs, i, j, smooth=False)
    smooth = aligned_ncc(thumbs, i, j, smooth=True)
    assert (smooth[:2] > plain[:2] + 0.05).all(), (plain, smooth)
    assert smooth[:2].min() > 0.94, smooth
    assert smooth[2] < 0.5, smooth


def test_colour_thumbnails_tell_apart_a_same_luminance_recolouring():
    """An object recoloured to (nearly) the same luminance is invisible to grayscale NCC and
    visible to colour NCC; brightness and contrast changes of all channels cost nothing."""
    from PIL import ImageDraw, ImageEnhance

    rng = np.random.default_rng(5)
    base = _field(rng)
    a, b = base.copy(), base.copy()
    # PIL luminance 0.299 R + 0.587 G + 0.114 B: 124.2 vs 124.1
    ImageDraw.Draw(a).rectangle((100, 100, 300, 300), fill=(200, 100, 50))
    ImageDraw.Draw(b).rectangle((100, 100, 300, 300), fill=(20, 170, 167))
    ga, gb = np.asarray(a.convert("L"), float), np.asarray(b.convert("L"), float)
    assert np.abs(ga - gb).max() <= 2
    tone = [ImageEnhance.Contrast(ImageEnhance.Brightness(a).enhance(1.15)).enhance(0.7)]
    ims = [a, b, *tone]
    i, j = np.zeros(2, np.int64), np.arange(1, 3)
    gray = aligned_ncc(np.stack([thumbnail(im, 32) for im in ims]), i, j, smooth=True)
    col = aligned_ncc(np.stack([thumbnail(im, 32, colour=True) for im in ims]), i, j, smooth=True)
    assert gray[0] > 0.99, gray
    assert col[0] < 0.85, col
    assert col[1] > 0.98, col


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
    # colour: S*S*3 bytes per row come back as (N, S, S, 3)
    c = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    got = thumbs_array(pa.array([c[0].tobytes(), None, c[1].tobytes()], pa.binary()))
    assert got.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(got[[0, 2]], c)
    assert not got[1].any()


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
