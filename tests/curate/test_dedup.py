from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from diffkit.curate.dedup import (
    ExactDedup,
    PhashDedupConfig,
    brute_force_pairs,
    choose_bands,
    faiss_pairs,
    near_pairs,
    phash_clusters,
    union_find,
)
from diffkit.curate.semdedup import SemDedupConfig, semdedup


def _hashes(n, n_near, k, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) * np.uint64(2) + rng.integers(
        0, 2, n
    ).astype(np.uint64)
    for _ in range(n_near):  # plant near pairs at distance 0..k+2
        i, j = rng.integers(n, size=2)
        bits = rng.choice(64, size=int(rng.integers(0, k + 3)), replace=False)
        h[j] = h[i] ^ np.uint64(sum(1 << int(b) for b in bits))
    return h


@pytest.mark.parametrize("k,bands", [(0, None), (3, None), (6, None), (8, 9), (8, 3), (10, None)])
def test_multi_index_lookup_equals_brute_force(k, bands):
    h = _hashes(3000, 300, k)
    a = near_pairs(h, k, bands)
    b = brute_force_pairs(h, k)
    f = faiss_pairs(h, k, chunk=700)  # several query chunks
    assert len(b[0]) > 50
    for got in (a, f):
        np.testing.assert_array_equal(got[0], b[0])
        np.testing.assert_array_equal(got[1], b[1])


def test_choose_bands_grows_key_length_with_n():
    # tiny N: plain banding (m = k + 1, exact band matches); large N: fewer, longer bands
    assert [choose_bands(10, k) for k in (0, 4, 8)] == [1, 5, 9]
    assert choose_bands(1000, 12) > choose_bands(1_000_000, 12) >= 2
    # the chosen m is the argmin of the documented cost N*m*V(b, r) * (1 + 4N / 2^b)
    for n, k in ((1000, 8), (100_000, 12), (1_000_000, 6)):
        cost = {
            m: n * m * sum(math.comb(64 // m, t) for t in range(k // m + 1))
            * (1 + 4 * n / 2 ** min(64 // m, 62))
            for m in range(1, k + 2)
        }  # fmt: skip
        assert choose_bands(n, k) == min(cost, key=cost.get)


def test_union_find_roots_are_smallest_members():
    roots = union_find(6, np.array([3, 1, 4]), np.array([4, 2, 5]))
    assert roots.tolist() == [0, 1, 1, 3, 3, 3]


def test_degenerate_bucket_is_kept_apart():
    h = np.array([0b1111, 0b1111, 0b1110, 0b1111], np.uint64)
    ent = np.array([5.0, 5.0, 0.5, 0.5])
    cfg = PhashDedupConfig(max_distance=4, degenerate_entropy=2.5, verify_dhash_distance=-1)
    roots = phash_clusters(h, ent, cfg)
    assert roots.tolist() == [0, 0, 2, 3]  # degenerate rows: exact only, never merged with others


def _keys(rows):
    return pa.Table.from_pylist(rows)


def test_exact_dedup_representative_is_deterministic():
    from diffkit.curate.dedup import ExactDedupConfig

    st = ExactDedup(ExactDedupConfig(source_priority=("good",)))
    hb, hp = b"a" * 32, b"p" * 32
    base = dict(status="keep", drop_stage=None, drop_reason=None, sha256_pixels=hp, alt_text="x")
    rows = [
        dict(row_id="b", source="other", width=300, height=300, sha256_bytes=hb, **base),
        dict(row_id="a", source="other", width=100, height=100, sha256_bytes=b"z" * 32, **base),
        dict(row_id="c", source="good", width=50, height=50, sha256_bytes=hb, **base),
    ]
    t = _keys(rows)
    for split in ([t], [t.slice(0, 1), t.slice(1)], [t.slice(2), t.slice(0, 2)]):
        dec = st.reduce([st.emit_keys(x) for x in split])
        kept = sorted(
            i
            for i, d in zip(dec.column("row_id").to_pylist(), dec.column("drop").to_pylist())
            if not d
        )
        assert kept == ["c"]  # source priority beats size; same pixels -> one group
    out = st.apply(t, dec)
    assert out.column("drop_reason").to_pylist() == ["exact_dup", "exact_dup", None]


def test_semdedup_drops_near_copies_keeps_distinct():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    noisy = base[:10] + 0.01 * rng.normal(size=(10, 16)).astype(np.float32)
    x = np.concatenate([base, noisy])
    cluster, nn, drop, dup_of = semdedup(x, SemDedupConfig(threshold=0.99, n_clusters=3, seed=0))
    assert drop[:40].sum() == 0 and drop[40:].all()
    assert (dup_of[40:] == np.arange(10)).all()
    assert (nn[40:] > 0.99).all() and len(cluster) == 50


def test_shard_with_no_surviving_rows_does_not_break_the_reduce():
    """A shard whose rows were all dropped upstream emits an empty key table; its ``prio``
    column must keep the string type or ``concat_tables`` raises ArrowInvalid."""
    from diffkit.curate.dedup import PhashDedup

    base = dict(source="s", width=300, height=300, alt_text="x", sha256_pixels=b"p" * 32,
                sha256_bytes=b"b" * 32, phash=1, dhash=1, hash_entropy=5.0)  # fmt: skip
    live = _keys([dict(row_id="a", status="keep", drop_stage=None, drop_reason=None, **base)])
    dead = _keys([dict(row_id="b", status="drop", drop_stage="x", drop_reason="min_side", **base)])
    for st in (ExactDedup(), PhashDedup()):
        empty = st.emit_keys(dead)
        assert empty.num_rows == 0 and empty.schema.field("prio").type == pa.string()
        dec = st.reduce([empty, st.emit_keys(live), empty])
        assert dec.column("row_id").to_pylist() == ["a"]


@pytest.mark.parametrize("fixed", [True, False])
def test_vectors_reads_embeddings_without_python_rows(fixed):
    from diffkit.curate.schema import vectors

    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float16)
    typ = pa.list_(pa.float16(), 5) if fixed else pa.list_(pa.float16())
    col = pa.chunked_array([pa.array(x[:3].tolist(), typ), pa.array(x[3:].tolist(), typ)])
    got = vectors(col)
    assert got.dtype == np.float32 and got.shape == (7, 5)
    np.testing.assert_array_equal(got, x.astype(np.float32))
    with pytest.raises(ValueError, match="null"):
        vectors(pa.array([x[0].tolist(), None], typ))
    if not fixed:
        with pytest.raises(ValueError, match="different lengths"):
            vectors(pa.array([[1.0, 2.0], [1.0]], typ))


def test_sub_window_hashes_find_crops_that_full_hashes_miss():
    """8 % crops (asymmetric) of bundled photos: the full pHashes of some pairs are further
    apart than k = 12, but a sub-window hash of the original matches the crop (5 of these 6;
    the sixth fails the dHash verification)."""
    import io

    from diffkit.curate.corpus import _photo_crop, bundled_photos
    from diffkit.curate.ingest import IngestConfig, decode_image

    rng = np.random.default_rng(3)
    photos = bundled_photos()
    rows = []
    for _ in range(6):
        im = _photo_crop(rng, photos, 320, 288)
        w, h = im.size
        dx, dy = int(w * 0.08), int(h * 0.08)
        ox, oy = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        for x in (im, im.crop((ox, oy, w - (dx - ox), h - (dy - oy)))):
            b = io.BytesIO()
            x.save(b, "PNG")
            rows.append(decode_image(b.getvalue(), ".png", IngestConfig(crop_scales=(0.95, 0.9))))
    col = lambda k: np.asarray([r[k] for r in rows], np.uint64)  # noqa: E731
    args = (col("phash"), np.full(len(rows), 5.0))
    crops = (col("phash_crops"), col("dhash_crops"))
    pairs = lambda roots: [roots[2 * f] == roots[2 * f + 1] for f in range(6)]  # noqa: E731
    on = phash_clusters(*args, PhashDedupConfig(crop_max_distance=10), col("dhash"), *crops)
    off = phash_clusters(*args, PhashDedupConfig(crop_max_distance=-1), col("dhash"), *crops)
    assert sum(pairs(on)) >= 5 and sum(pairs(on)) > sum(pairs(off))
    assert len(set(on[::2].tolist())) == 6  # the six photos stay apart


def test_photo_bases_do_not_overlap_and_tone_transforms_are_planted():
    """Bases cut from one bundled photo overlap by at most a quarter of the smaller crop (so
    distinct families are not crop near-duplicates of each other), and the generator plants
    gamma and contrast variants (issue 19 item 4's targets)."""
    from diffkit.curate.corpus import NEAR_TRANSFORMS, _near, _overlap, _photo_crop, bundled_photos

    assert _overlap((0, 0, 10, 10), (5, 5, 15, 15)) == 0.25
    assert _overlap((0, 0, 10, 10), (2, 2, 6, 6)) == 1.0
    rng = np.random.default_rng(0)
    photos, used = bundled_photos(), {}
    for _ in range(30):
        _photo_crop(rng, photos, 64, 64, used)
    assert sum(len(v) for v in used.values()) == 30
    for boxes in used.values():
        for a in range(len(boxes)):
            for b in range(a):
                assert _overlap(boxes[a], boxes[b]) <= 0.25
    img = _photo_crop(rng, photos, 64, 48)
    for t in ("gamma", "contrast"):
        assert t in NEAR_TRANSFORMS
        out, fmt, _ = _near(img, t, NEAR_TRANSFORMS[t][0], rng)
        assert out.size == img.size and fmt == "JPEG"
        assert not np.array_equal(np.asarray(out), np.asarray(img))
