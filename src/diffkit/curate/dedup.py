"""Exact dedup (stage 3) and pHash near-dup (stage 7): global stages that move only compact keys.

Exact: group by ``sha256_bytes``, then by ``sha256_pixels`` (the pixel hash also catches lossless
re-encodes and metadata-only changes), keep one deterministic representative per group.

pHash near-dup: 64-bit hashes are split into ``m`` bands; by the generalised pigeonhole principle a
pair at Hamming distance <= k agrees within ``floor(k / m)`` bits on at least one band (multi-index
hashing, Norouzi et al. 2012; ``m = k + 1`` is plain banding with exact band matches). Candidates
are verified with a popcount and merged with union-find. ``m`` is chosen to minimise the expected
number of candidate pairs for the given N, which keeps lookup cost near-linear in N. Rows whose
pixel entropy is below ``degenerate_entropy`` go to their own bucket with their own (strict)
threshold instead of colliding with everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from diffkit.curate.schema import SIDE_COLUMNS, alive, drop_rows, pa, set_column, vectors
from diffkit.curate.stage import Stage

# ------------------------------------------------------------------- representative priority


def priority_keys(table, source_priority: tuple[str, ...]) -> list[tuple]:
    """Deterministic representative priority (spec (e) stage 3): source priority, larger min side,
    higher aesthetic score (if present), longer alt text, smallest id. Lower tuple = preferred."""
    rank = {s: i for i, s in enumerate(source_priority)}
    src = table.column("source").to_pylist()
    w = table.column("width").to_pylist()
    h = table.column("height").to_pylist()
    alt = table.column("alt_text").to_pylist()
    ids = table.column("row_id").to_pylist()
    aes = (
        table.column("score_aesthetic").to_pylist()
        if "score_aesthetic" in table.schema.names
        else [0.0] * table.num_rows
    )
    return [
        (rank.get(s, len(rank)), -min(a or 0, b or 0), -(e or 0.0), -len(t or ""), i)
        for s, a, b, e, t, i in zip(src, w, h, aes, alt, ids)
    ]


def _key_table(table, extra: list[str], source_priority: tuple[str, ...]):
    t = table.filter(pa().array(alive(table)))
    pri = priority_keys(t, source_priority)
    cols = {"row_id": t.column("row_id"), **{c: t.column(c) for c in extra}}
    keys = pa().table(cols)
    # typed explicitly: a shard with no surviving rows must not give a null-typed column
    return keys.append_column("prio", pa().array([repr(p) for p in pri], pa().string())), pri


def _sorted_keys(key_tables):
    """Concatenate per-shard key tables and sort them by priority (global, deterministic)."""
    import ast

    keys = pa().concat_tables(list(key_tables))
    pri = [ast.literal_eval(p) for p in keys.column("prio").to_pylist()]
    order = sorted(range(keys.num_rows), key=lambda i: pri[i])
    return keys.take(pa().array(order, pa().int64()))


def _apply_decisions(table, decisions, stage: str, reason: str, cols: dict):
    d = {r["row_id"]: r for r in decisions.to_pylist()}
    ids = table.column("row_id").to_pylist()
    for col, typ in cols.items():
        table = set_column(table, col, [d[i][col] if i in d else None for i in ids], typ)
    drop = np.array([bool(d[i]["drop"]) if i in d else False for i in ids])
    table = drop_rows(table, drop, stage, reason)
    rep = [
        False if (i in d and d[i]["drop"]) else (prev if prev is not None else True)
        for i, prev in zip(
            ids,
            table.column("is_representative").to_pylist()
            if "is_representative" in table.schema.names
            else [None] * len(ids),
        )
    ]
    return set_column(table, "is_representative", rep, pa().bool_())


@dataclass(frozen=True, kw_only=True)
class ExactDedupConfig:
    """Exact duplicates by bytes, then by canonical pixels.

    Attributes:
        use_pixels: Also group by ``sha256_pixels`` (catches re-encodes with identical pixels).
        source_priority: Sources in order of preference for the representative.
    """

    use_pixels: bool = True
    source_priority: tuple[str, ...] = ()


class ExactDedup(Stage):
    name = "exact_dedup"
    kind = "global"

    def __init__(self, config: ExactDedupConfig | None = None) -> None:
        super().__init__(config or ExactDedupConfig())

    def emit_keys(self, table):
        return _key_table(table, ["sha256_bytes", "sha256_pixels"], self.config.source_priority)[0]

    def reduce(self, key_tables):
        keys = _sorted_keys(key_tables)
        ids = keys.column("row_id").to_pylist()
        hb = keys.column("sha256_bytes").to_pylist()
        hp = keys.column("sha256_pixels").to_pylist()
        seen_b: dict = {}
        seen_p: dict = {}
        drop, group = [], []
        for i in range(len(ids)):
            g = hp[i].hex()[:16] if hp[i] else hb[i].hex()[:16]
            if hb[i] in seen_b or (
                self.config.use_pixels and hp[i] is not None and hp[i] in seen_p
            ):
                drop.append(True)
            else:
                drop.append(False)
                seen_b[hb[i]] = i
                if hp[i] is not None:
                    seen_p[hp[i]] = i
            group.append(g)
        return pa().table({"row_id": ids, "exact_group": group, "drop": drop})

    def apply(self, table, decisions):
        return _apply_decisions(
            table, decisions, self.name, "exact_dup", {"exact_group": pa().string()}
        )


# ------------------------------------------------------------------- multi-index hashing


def _band_layout(m: int) -> list[tuple[int, int]]:
    """(shift, width) of m nearly equal bands covering 64 bits."""
    widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
    out, shift = [], 64
    for w in widths:
        shift -= w
        out.append((shift, w))
    return out


def _ball(width: int, r: int) -> int:
    return sum(math.comb(width, t) for t in range(r + 1))


def choose_bands(n: int, k: int) -> int:
    """Number of bands minimising expected work N*m*V(b, r) + N^2/2 * m*V(b, r) / 2^b."""
    best, best_m = None, k + 1
    for m in range(1, min(k + 1, 64) + 1):
        b = 64 // m
        r = k // m
        v = _ball(b, r)
        cost = n * m * v * (1 + 4 * n / 2 ** min(b, 62))
        if best is None or cost < best:
            best, best_m = cost, m
    return best_m


def _flip_masks(width: int, r: int) -> np.ndarray:
    from itertools import combinations

    masks = [0]
    for t in range(1, r + 1):
        for bits in combinations(range(width), t):
            masks.append(sum(1 << b for b in bits))
    return np.asarray(masks, np.uint64)


def near_pairs(
    hashes: np.ndarray, max_distance: int, n_bands: int | None = None, chunk: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming(hashes[i], hashes[j]) <= max_distance (exact, no misses).

    Multi-index hashing: ``m`` bands, each searched within radius ``floor(k/m)``; candidates are
    verified by popcount. Returns index arrays ``(i, j)`` sorted lexicographically.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n, k = len(h), int(max_distance)
    if k < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    m = n_bands or choose_bands(n, k)
    r = k // m
    found = []
    for shift, width in _band_layout(m):
        mask = np.uint64((1 << width) - 1)
        keys = (h >> np.uint64(shift)) & mask
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        table = width <= 24  # direct bucket table: probes are gathers, not binary searches
        if table:
            count = np.bincount(sk.astype(np.int64), minlength=1 << width)
            start = np.concatenate([[0], np.cumsum(count)[:-1]])
        for p in _flip_masks(width, r):
            for s in range(0, n, chunk):
                q = keys[s : s + chunk] ^ p
                if table:
                    qi = q.astype(np.int64)
                    cnt, lo = count[qi], start[qi]
                else:
                    lo = np.searchsorted(sk, q, "left")
                    cnt = np.searchsorted(sk, q, "right") - lo
                tot = int(cnt.sum())
                if tot == 0:
                    continue
                nz = np.flatnonzero(cnt)
                cnt, lo = cnt[nz], lo[nz]
                src = np.repeat(s + nz, cnt)
                off = np.arange(tot) - np.repeat(np.cumsum(cnt) - cnt, cnt)
                dst = order[np.repeat(lo, cnt) + off]
                keep = src < dst
                src, dst = src[keep], dst[keep]
                ok = np.bitwise_count(h[src] ^ h[dst]) <= k
                if ok.any():
                    found.append(src[ok].astype(np.int64) * n + dst[ok])
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    u = np.unique(np.concatenate(found))
    return u // n, u % n


def faiss_pairs(
    hashes: np.ndarray, max_distance: int, chunk: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray]:
    """All pairs ``i < j`` with Hamming distance <= max_distance, by faiss' exhaustive binary
    range search (``IndexBinaryFlat``: SIMD popcounts over packed codes; its radius is strict,
    hence ``max_distance + 1``). Exact like :func:`near_pairs`, O(N^2) popcounts but about 5x
    faster than the banded lookup at 10^5 hashes on one thread (benchmarks/results/curate.md).
    Queries run in chunks so the result lists stay bounded; the chunk of rows ``[s, s + c)`` is
    searched only against rows ``[s, N)`` (the upper triangle), which halves the popcounts."""
    from diffkit.curate.schema import require

    faiss = require("faiss", "the pHash lookup")
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    codes = h.view(np.uint8).reshape(n, 8)  # Hamming distance does not depend on bit order
    out = []
    for s in range(0, n, chunk):
        index = faiss.IndexBinaryFlat(64)
        index.add(codes[s:])
        lims, _, idx = index.range_search(codes[s : s + chunk], int(max_distance) + 1)
        src = s + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64))
        dst = s + idx.astype(np.int64)
        keep = src < dst
        out.append(src[keep].astype(np.int64) * n + dst[keep])
    u = np.unique(np.concatenate(out))
    return u // n, u % n


def faiss_cross_pairs(
    queries: np.ndarray, base: np.ndarray, max_distance: int, chunk: int = 1 << 15
) -> tuple[np.ndarray, np.ndarray]:
    """All (query q, base b) with Hamming(queries[q], base[b]) <= max_distance (faiss range
    search of the queries against an ``IndexBinaryFlat`` over ``base``)."""
    from diffkit.curate.schema import require

    faiss = require("faiss", "the pHash lookup")
    q = np.ascontiguousarray(queries, np.uint64)
    b = np.ascontiguousarray(base, np.uint64)
    if len(q) == 0 or len(b) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    index = faiss.IndexBinaryFlat(64)
    index.add(b.view(np.uint8).reshape(len(b), 8))
    qs, bs = [], []
    for s in range(0, len(q), chunk):
        part = q[s : s + chunk].view(np.uint8).reshape(-1, 8)
        lims, _, idx = index.range_search(part, int(max_distance) + 1)
        qs.append(s + np.repeat(np.arange(len(lims) - 1), np.diff(lims).astype(np.int64)))
        bs.append(idx.astype(np.int64))
    return np.concatenate(qs).astype(np.int64), np.concatenate(bs)


def brute_force_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 2048):
    """The O(N^2) baseline: every pairwise Hamming distance (for tests and the benchmark)."""
    h = np.asarray(hashes, np.uint64)
    n = len(h)
    out_i, out_j = [], []
    for s in range(0, n, chunk):
        d = np.bitwise_count(h[s : s + chunk, None] ^ h[None, :])
        ii, jj = np.nonzero(d <= max_distance)
        ii = ii + s
        keep = ii < jj
        out_i.append(ii[keep])
        out_j.append(jj[keep])
    if not out_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    o = np.lexsort((j, i))
    return i[o].astype(np.int64), j[o].astype(np.int64)


def union_find(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected components: root index (smallest member index) of every element."""
    parent = np.arange(n)

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in zip(i.tolist(), j.tolist()):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(x) for x in range(n)], np.int64)


@dataclass(frozen=True, kw_only=True)
class PhashDedupConfig:
    """pHash near-duplicate removal.

    Attributes:
        max_distance: pHash Hamming threshold k (of 64 bits) for a candidate pair; calibrated on
            the generated corpus (see docs/curate.md and benchmarks/results/curate.md).
        verify_dhash_distance: Verification: a candidate pair is merged only if its dHash Hamming
            distance is at most this as well (-1 disables). pHash and dHash err differently
            (DCT vs gradient signs), so the pair test rejects look-alike scenes.
        lookup: ``faiss`` (exhaustive binary range search, ``IndexBinaryFlat``; fastest up to a
            few 10^5 rows) or ``bands`` (multi-index hashing, near-linear in N for large runs).
            Both are exact and give identical pairs.
        n_bands: Number of bands m for the ``bands`` lookup; 0 picks m for the data size.
        crop_max_distance: Crop-robust search: a row ``j`` is also a candidate duplicate of row
            ``i`` when the pHash of one of ``i``'s sub-windows (``phash_crops``, see
            IngestConfig.crop_scales) is within this distance of ``j``'s full pHash; -1 disables.
            Off here; the local recipe sets 16 with ``verify_ncc`` (with the dHash check alone it
            cost precision: 0.98/0.94/0.85 on three seeds,
            benchmarks/results/curate_crops_experiment.md).
        crop_verify_dhash_distance: ... verified by the same window's dHash against ``j``'s.
        verify_ncc: Aligned-thumbnail verification (:func:`diffkit.curate.align.aligned_ncc`):
            every candidate pair (full-hash and crop-window) is merged only if the best NCC of
            the two ``thumb`` columns over the aligned windows is at least this; -1 disables
            (here; the local recipe ships 0.92, calibrated in benchmarks/results/curate.md).
        ncc_scales: Window scales (share of each side) searched by the NCC verification.
        ncc_step: Offset grid of the NCC windows (share of the side).
        ncc_rank: Rank-transform the thumbnails first (invariant to gamma and any tone curve).
        ncc_smooth: Low-pass both thumbnails alike ([1, 2, 1] / 4 per axis) before the NCC, so
            that the resampled window and the other thumbnail carry the same detail (on textured
            pictures the unsmoothed score of an exact crop window drops to 0.86-0.89; see
            :mod:`diffkit.curate.align`).
        degenerate_entropy: Rows whose pixel entropy is below this go to the degenerate bucket.
        degenerate_max_distance: Threshold used inside the degenerate bucket.
        source_priority: Sources in order of preference for the representative.
    """

    max_distance: int = 12
    verify_dhash_distance: int = 8
    lookup: Literal["faiss", "bands"] = "faiss"
    n_bands: int = 0
    crop_max_distance: int = -1
    crop_verify_dhash_distance: int = 8
    verify_ncc: float = -1.0
    ncc_scales: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85)
    ncc_step: float = 1 / 32
    ncc_rank: bool = False
    ncc_smooth: bool = True
    degenerate_entropy: float = 2.5
    degenerate_max_distance: int = 0
    source_priority: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 <= self.max_distance <= 32:
            raise ValueError(f"max_distance must be in [0, 32], got {self.max_distance}")
        if self.lookup not in ("faiss", "bands"):
            raise ValueError(f"lookup={self.lookup!r}; options: faiss, bands")
        if not (self.verify_ncc == -1 or -1 <= self.verify_ncc <= 1):
            raise ValueError(f"verify_ncc must be -1 (off) or in [-1, 1], got {self.verify_ncc}")
        if not self.ncc_scales or any(not 0.5 <= s <= 1.0 for s in self.ncc_scales):
            raise ValueError(
                f"ncc_scales must be non-empty, each in [0.5, 1], got {self.ncc_scales}"
            )
        if not 0 < self.ncc_step <= 0.5:
            raise ValueError(f"ncc_step must be in (0, 0.5], got {self.ncc_step}")
        if not 0 <= self.n_bands <= 64:
            raise ValueError(f"n_bands must be in [0, 64], got {self.n_bands}")
        if self.degenerate_max_distance < 0:
            raise ValueError(
                f"degenerate_max_distance must be >= 0, got {self.degenerate_max_distance}"
            )


def phash_clusters(
    hashes, entropy, cfg: PhashDedupConfig, dhashes=None, crops=None, dcrops=None, thumbs=None
) -> np.ndarray:
    """Cluster root per row (rows assumed sorted by priority, so a root is its representative).

    Candidate pairs come from the pHash lookup (and, with ``crops`` and
    ``cfg.crop_max_distance >= 0``, from crop-window hashes); with ``dhashes`` and
    ``cfg.verify_dhash_distance >= 0`` they are verified on dHash, and with ``thumbs``
    ((N, S, S) uint8) and ``cfg.verify_ncc >= 0`` on the aligned-thumbnail NCC, before
    union-find. The degenerate bucket (low entropy) uses only its own strict pHash radius."""
    roots = np.arange(len(hashes))
    for idx, i, j, score in bucket_pairs(hashes, entropy, cfg, dhashes, crops, dcrops, thumbs):
        if score is not None:
            i, j = i[score >= cfg.verify_ncc], j[score >= cfg.verify_ncc]
        roots[idx] = idx[union_find(len(idx), i, j)]
    return roots


def bucket_pairs(hashes, entropy, cfg: PhashDedupConfig, dhashes=None, crops=None, dcrops=None,
                 thumbs=None):  # fmt: skip
    """Per entropy bucket (main, then degenerate) with at least 2 rows: ``(idx, i, j, score)``,
    the bucket's row indices, its candidate pairs (indices into ``idx``, after the dHash checks)
    and their aligned-NCC scores (None unless the main bucket is NCC-verified). Exposed so that
    threshold sweeps score every candidate once (diffkit.curate.evaluate.ncc_sweep)."""
    h = np.asarray(hashes, np.uint64)
    dh = None if dhashes is None else np.asarray(dhashes, np.uint64)
    ent = np.asarray(entropy, np.float64)
    for sel, k, main in (
        (ent >= cfg.degenerate_entropy, cfg.max_distance, True),
        (ent < cfg.degenerate_entropy, cfg.degenerate_max_distance, False),
    ):
        idx = np.flatnonzero(sel)
        if len(idx) < 2:
            continue
        if cfg.lookup == "faiss":
            i, j = faiss_pairs(h[idx], k)
        else:
            i, j = near_pairs(h[idx], k, cfg.n_bands or None)
        if dh is not None and cfg.verify_dhash_distance >= 0:
            ok = np.bitwise_count(dh[idx][i] ^ dh[idx][j]) <= cfg.verify_dhash_distance
            i, j = i[ok], j[ok]
        if crops is not None and main and cfg.crop_max_distance >= 0:
            ci, cj = _crop_pairs(np.asarray(crops)[idx], np.asarray(dcrops)[idx], h[idx],
                                 None if dh is None else dh[idx], cfg)  # fmt: skip
            i, j = np.concatenate([i, ci]), np.concatenate([j, cj])
        score = None
        if main and cfg.verify_ncc >= 0:
            from diffkit.curate.align import aligned_ncc

            if thumbs is None:
                raise ValueError("verify_ncc needs thumbnails: set ingest.thumb_size > 0")
            lo, hi = np.minimum(i, j), np.maximum(i, j)
            u = np.unique(lo * len(idx) + hi)
            i, j = u // len(idx), u % len(idx)
            t = np.asarray(thumbs)[idx]
            score = aligned_ncc(
                t, i, j, cfg.ncc_scales, cfg.ncc_step, cfg.ncc_rank, smooth=cfg.ncc_smooth
            )
        yield idx, i, j, score


def _crop_pairs(crops, dcrops, h, dh, cfg: PhashDedupConfig):
    """(i, j): a sub-window of row i matches row j's full pHash (and its dHash, if given)."""
    n, m = crops.shape if crops.ndim == 2 else (len(crops), 0)
    if m == 0 or n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    q, j = faiss_cross_pairs(crops.reshape(-1), h, cfg.crop_max_distance)
    i = q // m
    keep = i != j
    if dh is not None and cfg.crop_verify_dhash_distance >= 0:
        keep &= np.bitwise_count(dcrops.reshape(-1)[q] ^ dh[j]) <= cfg.crop_verify_dhash_distance
    return i[keep], j[keep]


class PhashDedup(Stage):
    name = "phash_dedup"
    version = "2"  # 2: NCC verification; thumb and crop-hash columns dropped after use
    kind = "global"
    reads_side = SIDE_COLUMNS  # stored once in ingest's shards, joined into the keys for the reduce

    def __init__(self, config: PhashDedupConfig | None = None) -> None:
        super().__init__(config or PhashDedupConfig())

    def emit_keys(self, table):
        # in a pipeline the side columns (thumb, crop hashes) are joined in by the driver before
        # the reduce (schema.join_side); a table that carries them (direct use) passes them on
        cols = ["phash", "dhash", "hash_entropy"]
        cols += [c for c in ("phash_crops", "dhash_crops") if c in table.column_names]
        if self.config.verify_ncc >= 0 and "thumb" in table.column_names:
            cols.append("thumb")
        return _key_table(table, cols, self.config.source_priority)[0]

    def reduce(self, key_tables):
        keys = _sorted_keys(key_tables)
        has_crops = "phash_crops" in keys.column_names and keys.num_rows
        thumbs = None
        if self.config.verify_ncc >= 0 and keys.num_rows > 1:
            from diffkit.curate.align import thumbs_array

            if "thumb" not in keys.column_names:
                raise ValueError(
                    "phash_dedup.verify_ncc needs the thumb column (ingest.thumb_size > 0)"
                )
            thumbs = thumbs_array(keys.column("thumb"))
        roots = phash_clusters(
            keys.column("phash").to_numpy(),
            keys.column("hash_entropy").to_numpy(),
            self.config,
            keys.column("dhash").to_numpy(),
            vectors(keys.column("phash_crops"), np.uint64) if has_crops else None,
            vectors(keys.column("dhash_crops"), np.uint64) if has_crops else None,
            thumbs,
        )
        ids = keys.column("row_id").to_pylist()
        cluster = [int(ids[r][:15], 16) for r in roots]
        drop = roots != np.arange(len(roots))
        return pa().table({"row_id": ids, "phash_cluster": cluster, "drop": drop})

    def apply(self, table, decisions):
        table = _apply_decisions(
            table, decisions, self.name, "phash_dup", {"phash_cluster": pa().int64()}
        )
        # consumed here: later stages and the outputs carry only the 64-bit hashes
        return table.drop_columns([c for c in SIDE_COLUMNS if c in table.column_names])
