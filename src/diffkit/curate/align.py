"""Aligned-thumbnail verification of near-duplicate candidates (issue 19 item 4).

Recall comes from the candidate search (pHash within a generous radius, plus the pHash of crop
windows, see :mod:`diffkit.curate.dedup`); precision comes from this check. Each row carries a
small grayscale thumbnail of the whole image (``thumb``, ``size`` x ``size`` uint8, taken at ingest
by area averaging). A candidate pair ``(a, b)`` scores the best normalised cross-correlation (NCC)
between ``b``'s thumbnail and a window of ``a``'s thumbnail resampled to the same grid, over window
scales ``s`` (share of each side) and offsets on a grid of ``step``, and the same with the roles
swapped (``a`` may be the crop of ``b``). NCC (Lewis 1995, "Fast normalized cross-correlation")
is invariant to affine intensity changes, so brightness and contrast cost nothing; ``rank=True``
first replaces every thumbnail pixel by its rank within its image (histogram equalisation), which
makes the score invariant to any monotone tone curve (gamma) as well, at the price of treating
two flat images with the same layout as alike.

``smooth=True`` passes both sides through the same 3-tap binomial low-pass ([1, 2, 1] / 4 along
each axis) before the NCC. Why: a thumbnail averages each 1/size-wide box of its image, so detail
finer than a thumbnail pixel is aliased differently by the two grids. The window of ``a`` is
resampled off ``a``'s grid by linear interpolation (an extra low-pass of up to one pixel), ``b``
is not; on textured pictures (the bundled photos) the best window of a 5-10 % crop then scores
0.86-0.89 although the crop's exact window of the original scores 1.000 (measured on the
generated corpus, seed 0, benchmarks/results/curate.md). Low-passing both sides alike removes the
band where the two grids disagree; it is folded into the resampling matrices (``B @ R``), so it
costs nothing.

Colour thumbnails ((S, S, 3), ingest's default) are scored as one signal: each channel's mean is
removed and the three channels share one norm, so a brightness or contrast change applied to all
channels still costs nothing, while an object recoloured to the same luminance (a hard negative
of the generated corpus, invisible in grayscale: NCC 0.98 against its sibling) no longer matches.

Cost. Searched window by window, a pair costs one small matrix product per window (71 windows
at the defaults: size 32, scales 1 ... 0.85, step 1/32), about 5 Mflop per channel and direction.
:func:`aligned_ncc` factors the search instead (:func:`_row_terms`): the row-resampled ``R_y a``
and the column-resampled ``b R_x`` of every thumbnail, and the norm of each of its windows, are
computed once per row and shared by all the row's candidate pairs; a window pair is then one
dot product. On the generated corpus (938 rows, 4,142 candidate pairs, colour) this is 5.6x
faster than the window-by-window search and equal to it within 6e-7 (tests check it against the
definition).
"""

from __future__ import annotations

import numpy as np


def thumbnail(rgb, size: int, colour: bool = False) -> np.ndarray:
    """``size`` x ``size`` thumbnail (uint8) of a PIL RGB image by area averaging of the whole
    image (aspect ratio not kept: crops that cut each side by the same share keep their window
    geometry): grayscale (S, S), or with ``colour`` RGB (S, S, 3)."""
    from PIL import Image

    return np.asarray(
        (rgb if colour else rgb.convert("L")).resize((size, size), Image.BOX), np.uint8
    )


def window_offsets(scale: float, step: float) -> np.ndarray:
    """Offsets (share of the side) of windows of side ``scale``: 0, step, ..., and 1 - scale."""
    if scale >= 1.0:
        return np.zeros(1)
    free = 1.0 - scale
    offs = np.arange(0.0, free + 1e-9, step)
    if free - offs[-1] > 1e-9:
        offs = np.append(offs, free)
    return offs


def resample_matrix(size: int, scale: float, offset: float) -> np.ndarray:
    """(size, size) linear-interpolation matrix R: ``R @ x`` samples the window
    ``[offset, offset + scale]`` (share of the side) of a length-``size`` signal at ``size``
    pixel centres."""
    pos = (offset + scale * (np.arange(size) + 0.5) / size) * size - 0.5
    pos = np.clip(pos, 0.0, size - 1.0)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    w = pos - i0
    r = np.zeros((size, size))
    np.add.at(r, (np.arange(size), i0), 1.0 - w)
    np.add.at(r, (np.arange(size), i1), w)
    return r


def binomial_matrix(size: int) -> np.ndarray:
    """(size, size) matrix of the 3-tap binomial low-pass [1, 2, 1] / 4 with edge replication:
    ``B @ x`` smooths a length-``size`` signal (rows sum to 1)."""
    b = np.zeros((size, size))
    k = np.arange(size)
    np.add.at(b, (k, np.maximum(k - 1, 0)), 0.25)
    np.add.at(b, (k, k), 0.5)
    np.add.at(b, (k, np.minimum(k + 1, size - 1)), 0.25)
    return b


def _standardise(x: np.ndarray) -> np.ndarray:
    """(..., C, S, S): every channel's mean removed, unit L2 norm over the channels and pixels
    together (a flat image maps to zeros)."""
    x = x - x.mean(axis=(-2, -1), keepdims=True)
    n = np.sqrt((x * x).sum(axis=(-3, -2, -1), keepdims=True))
    return x / np.maximum(n, 1e-6)


def rank_transform(thumbs: np.ndarray) -> np.ndarray:
    """Every pixel replaced by its mean rank within its own thumbnail (ties share a rank),
    scaled to [0, 1]: invariant to any increasing tone curve."""
    t = np.asarray(thumbs)
    flat = t.reshape(len(t), -1)
    out = np.empty(flat.shape, np.float32)
    for k, row in enumerate(flat):
        counts = np.bincount(row, minlength=256)
        cum = np.cumsum(counts)
        mid = (cum - counts / 2.0) / len(row)
        out[k] = mid[row]
    return out.reshape(t.shape)


def _scale_windows(size: int, scale: float, step: float, low: np.ndarray, refine: bool):
    """The windows searched at one scale: the offset grid (:func:`window_offsets`) and, with
    ``refine``, every grid offset moved by -step/2, 0 and +step/2 (clipped to the free margin).

    Returns ``(r, grid, nbr)``: ``r`` (O, S, S) float32 resampling matrices (low-pass folded in)
    of every offset in the union, sorted; ``grid`` (O_g,) the positions of the grid offsets in
    it; ``nbr`` (O_g, 3) the positions of each grid offset's three refined neighbours."""
    offs = window_offsets(scale, step)
    cand = offs[:, None] + (np.array([-step / 2, 0.0, step / 2]) if refine else np.zeros(1))
    cand = np.clip(cand, 0.0, 1.0 - scale)
    union = np.unique(cand)
    r = np.stack([low @ resample_matrix(size, scale, o) for o in union]).astype(np.float32)
    return r, np.searchsorted(union, offs), np.searchsorted(union, cand)


def _row_terms(x, xs, r):
    """Per-row factors of the windowed NCC at one scale (the pair-independent part).

    For a window ``W = R_y a R_x^T`` of ``a`` and a standardised ``b`` (zero mean per channel,
    unit norm), ``NCC = <W, b> / ||W - mean(W)||``. The numerator factors through the rows:
    ``<R_y a R_x^T, b> = <R_y a, b R_x>``, so with ``T_y = R_y a`` and ``U_x = b R_x`` (each
    computed once per row) every window pair of a candidate pair is one entry of ``T U^T``. The
    denominator depends on ``a`` alone: ``||W||^2 = <T_y^T T_y, R_x^T R_x>`` and
    ``sum(W) = (1^T R_y) a (R_x^T 1)``, so it is a per-row (O, O) table.

    Args:
        x: (n, C, S, S) float32 tensor, thumbnails with each channel's mean removed (the
            resampling rows sum to 1, so this changes no NCC and keeps the variance term exact).
        xs: (n, C, S, S) float32 tensor, the low-passed standardised thumbnails (the ``b`` role).
        r: (O, S, S) float32 tensor of window matrices.

    Returns:
        ``(t, u, den)``: ``t`` and ``u`` (n, O, C*S*S) (``T_y`` and ``U_x`` flattened), ``den``
        (n, O, O) the norm of each (y, x) window of the row's centred thumbnail.
    """
    import torch

    n, c, s, _ = x.shape
    o = r.shape[0]
    # one GEMM each: (O*S, S) @ (S, n*C*S) and (n*C*S, S) @ (S, O*S)
    t = (r.reshape(o * s, s) @ x.permute(2, 0, 1, 3).reshape(s, -1)).reshape(o, s, n, c, s)
    t = t.permute(2, 0, 3, 1, 4).contiguous()  # (n, O, C, S, S): T_y
    u = (xs.reshape(-1, s) @ r.permute(1, 0, 2).reshape(s, o * s)).reshape(n, c, s, o, s)
    u = u.permute(0, 3, 1, 2, 4).reshape(n, o, -1).contiguous()  # (n, O, C*S*S): U_x
    tk = t.reshape(n * o, c * s, s)
    m = torch.bmm(tk.transpose(1, 2), tk).reshape(n, o, s * s)  # sum_c T_y^T T_y
    q = torch.bmm(r.transpose(1, 2), r).reshape(o, s * s)  # R_x^T R_x
    sumsq = m @ q.T  # (n, Oy, Ox): ||W||^2
    colsum = r.sum(1)  # (O, S): 1^T R
    wsum = colsum @ x @ colsum.T  # (n, C, Oy, Ox): sum(W) per channel
    den2 = sumsq - (wsum * wsum).sum(1) / (s * s)
    return t.reshape(n, o, -1), u, den2.clamp_min(0.0).sqrt()


def _rows(x, flat_index):
    """``x`` (n, O, D) gathered at flat (n * O) positions: (*flat_index.shape, D)."""
    return (
        x.reshape(-1, x.shape[-1])
        .index_select(0, flat_index.reshape(-1))
        .reshape(*flat_index.shape, x.shape[-1])
    )


def _pair_scores(terms, ga, gb, plan, refine: bool):
    """Best NCC of window ``(y, x)`` of row ``ga[p]`` against row ``gb[p]`` over every scale's
    grid, then (``refine``) the 3 x 3 half-step neighbourhood of the single best window: the
    search of the direct definition, with ties to the first (scale, y, x)."""
    import torch

    p = len(ga)
    best = torch.full((p,), -1.0)
    arg = np.zeros((p, 3), np.int64)  # scale index, y, x (grid positions)
    for k, ((t, u, den), (_, grid, _)) in enumerate(zip(terms, plan)):
        g = torch.from_numpy(grid)
        a, b = torch.from_numpy(ga)[:, None], torch.from_numpy(gb)[:, None]
        tg, ug = _rows(t, a * t.shape[1] + g), _rows(u, b * u.shape[1] + g)  # (P, O_g, D)
        dg = den[a[:, :, None], g[None, :, None], g[None, None, :]]
        ncc = torch.where(dg > _FLAT, torch.bmm(tg, ug.transpose(1, 2)) / dg, 0.0).reshape(p, -1)
        flat = ncc.numpy()
        kk = flat.argmax(1)  # first maximum, as the direct search
        v = torch.from_numpy(flat[np.arange(p), kk])
        better = v > best
        best = torch.where(better, v, best)
        better = better.numpy()
        arg[better] = np.stack([np.full(p, k), kk // len(grid), kk % len(grid)], 1)[better]
    if not refine:
        return best
    for k, ((t, u, den), (_, _, nbr)) in enumerate(zip(terms, plan)):
        sel = np.flatnonzero(arg[:, 0] == k)
        if len(sel) == 0:
            continue
        ny, nx = torch.from_numpy(nbr[arg[sel, 1]]), torch.from_numpy(nbr[arg[sel, 2]])  # (q, 3)
        a, b = torch.from_numpy(ga[sel])[:, None], torch.from_numpy(gb[sel])[:, None]
        num = torch.bmm(
            _rows(t, a * t.shape[1] + ny), _rows(u, b * u.shape[1] + nx).transpose(1, 2)
        )
        d = den[a[:, :, None], ny[:, :, None], nx[:, None, :]]
        v = torch.where(d > _FLAT, num / d, 0.0).amax((1, 2))
        best[sel] = torch.maximum(best[sel], v)
    return best


_PAIR_CHUNK = 256  # pairs scored at once
_FLAT = 1e-2  # window norms (grey levels, centred) below this are flat: NCC 0


def _row_groups(i: np.ndarray, j: np.ndarray, n: int, budget: int):
    """Pair order and group bounds such that each group touches at most ``budget`` distinct rows
    (so the per-row factors of a group fit in memory) and neighbouring pairs share rows: pairs
    are sorted by the reverse Cuthill-McKee rank of their first row in the candidate graph."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import reverse_cuthill_mckee

    g = sp.coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n)).tocsr()
    perm = reverse_cuthill_mckee((g + g.T).tocsr(), symmetric_mode=True)
    rank = np.empty(n, np.int64)
    rank[perm] = np.arange(n)
    order = np.lexsort((np.maximum(rank[i], rank[j]), np.minimum(rank[i], rank[j])))
    bounds, seen = [0], set()
    for p, (a, b) in enumerate(zip(i[order].tolist(), j[order].tolist())):
        new = (a not in seen) + (b not in seen and b != a)
        if len(seen) + new > budget:
            bounds.append(p)
            seen = set()
        seen.update((a, b))
    bounds.append(len(order))
    return order, bounds


def aligned_ncc(
    thumbs: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    scales: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85),
    step: float = 1 / 32,
    rank: bool = False,
    refine: bool = True,
    smooth: bool = False,
    row_budget: int = 128,
) -> np.ndarray:
    """Best NCC of each pair ``(thumbs[i[p]], thumbs[j[p]])`` over aligned windows, either way
    round (see the module docstring); ``refine`` re-searches each pair's best window at half the
    offset step; ``smooth`` low-passes both sides alike first. ``thumbs``: (N, S, S) grayscale
    or (N, S, S, C) colour, uint8. Returns float32 in [-1, 1].

    Computed through per-row factors (:func:`_row_terms`): the transforms of a thumbnail are
    shared by all its candidate pairs, and each window pair costs one dot product. Pairs are
    processed in groups touching at most ``row_budget`` rows (memory: about
    ``row_budget * 2 * sum(O) * C * S^2 * 4`` bytes, 90 MB at the defaults)."""
    import torch

    t = np.asarray(thumbs)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if t.ndim not in (3, 4) or t.shape[1] != t.shape[2]:
        raise ValueError(f"thumbs must be (N, S, S) or (N, S, S, C), got shape {t.shape}")
    if row_budget < 2:
        raise ValueError(f"row_budget must be >= 2, got {row_budget}")
    out = np.full(len(i), -1.0, np.float32)
    if len(i) == 0:
        return out
    size = t.shape[1]
    t = t[:, None] if t.ndim == 3 else np.moveaxis(t, 3, 1)  # (N, C, S, S)
    low = binomial_matrix(size) if smooth else np.eye(size)
    plan = [_scale_windows(size, s, step, low, refine) for s in scales]
    mats = [torch.from_numpy(r) for r, _, _ in plan]
    lo32 = low.astype(np.float32)
    order, bounds = _row_groups(i, j, len(t), row_budget)
    for g0, g1 in zip(bounds[:-1], bounds[1:]):
        sel = order[g0:g1]
        rows, inv = np.unique(np.concatenate([i[sel], j[sel]]), return_inverse=True)
        a_loc, b_loc = inv[: len(sel)], inv[len(sel) :]
        x = rank_transform(t[rows]) if rank else t[rows].astype(np.float32)
        xs = torch.from_numpy(np.ascontiguousarray(_standardise(lo32 @ x @ lo32.T)))
        x = torch.from_numpy(np.ascontiguousarray(x - x.mean(axis=(-2, -1), keepdims=True)))
        terms = [_row_terms(x, xs, r) for r in mats]
        for c0 in range(0, len(sel), _PAIR_CHUNK):  # bounds the gathered (P, O, D) blocks
            a, b = a_loc[c0 : c0 + _PAIR_CHUNK], b_loc[c0 : c0 + _PAIR_CHUNK]
            out[sel[c0 : c0 + _PAIR_CHUNK]] = torch.maximum(
                _pair_scores(terms, a, b, plan, refine), _pair_scores(terms, b, a, plan, refine)
            ).numpy()
    return out


def thumbs_array(column) -> np.ndarray:
    """(N, S, S) grayscale or (N, S, S, 3) colour uint8 thumbnails from an Arrow binary column of
    ``thumb`` values (S*S or S*S*3 bytes each; 3*S*S is never a square, so the length tells),
    read from the Arrow buffers (no Python objects per row). Null rows give all-zero thumbnails
    (NCC 0 with anything, so they never pass the verification)."""
    from diffkit.curate.schema import pa

    arr = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    arr = arr.cast(pa().binary())
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32)[arr.offset : arr.offset + n + 1]
    sizes = np.diff(offsets)
    valid = sizes > 0
    if not valid.any():
        raise ValueError("no thumbnails in the thumb column (ingest.thumb_size = 0?)")
    nbytes = int(sizes[valid][0])
    for c in (1, 3):
        side = int(round(float(np.sqrt(nbytes / c))))
        if side * side * c == nbytes:
            break
    else:
        raise ValueError(f"thumb values must be square: S*S or S*S*3 bytes, got {nbytes}")
    if (sizes[valid] != nbytes).any():
        raise ValueError(f"thumb values must all be square and equal in size, got {set(sizes)}")
    data = np.frombuffer(arr.buffers()[2], np.uint8)
    out = np.zeros((n, nbytes), np.uint8)
    starts = offsets[:-1][valid]
    out[valid] = data[starts[:, None] + np.arange(nbytes)[None]]
    return out.reshape((n, side, side) if c == 1 else (n, side, side, c))
