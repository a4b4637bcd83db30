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

Cost per pair and channel: one small matrix product per window, about
``2 * sum_s n_off(s)^2 * size^3`` flops (``n_off(s)``: offsets per axis at scale ``s``, the
last one flush with the edge): with the defaults (size 32, scales 1 ... 0.85, step 1/32) 71
windows, about 5 Mflop per channel and direction.
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


def _one_way(a, b_std, scales, step, mats, refine: bool, low=None) -> np.ndarray:
    """Max over windows of ``a`` (one resampling-matrix stack per scale) of NCC with ``b``;
    with ``refine``, the best window of each pair is searched again at half the offset step
    (its 8 neighbours), which recovers most of what sub-pixel misalignment costs. ``low``: the
    low-pass matrix already folded into ``mats`` (applied to the refined windows too)."""
    size = a.shape[-1]
    best = np.full(len(a), -1.0, np.float32)
    arg = np.zeros((len(a), 3))  # scale, y offset, x offset of the best window
    for s, r in zip(scales, mats):  # r: (O, S, S)
        offs = window_offsets(s, step)
        t = np.matmul(r[None, :, None], a[:, None])  # (P, O, C, S, S): rows resampled
        rt = np.swapaxes(r, 1, 2)[None, None, :, None]  # (1, 1, O, 1, S, S)
        w = np.matmul(t[:, :, None], rt)  # (P, Oy, Ox, C, S, S)
        ncc = np.einsum("pyxcij,pcij->pyx", _standardise(w), b_std, optimize=True)
        flat = ncc.reshape(len(a), -1)
        k = flat.argmax(axis=1)
        v = flat[np.arange(len(a)), k]
        better = v > best
        best = np.where(better, v, best)
        arg[better] = np.stack([np.full(len(a), s), offs[k // len(offs)], offs[k % len(offs)]], 1)[
            better
        ]
    if not refine:
        return best
    h = step / 2
    for dy in (-h, 0.0, h):
        for dx in (-h, 0.0, h):
            if dy == 0.0 and dx == 0.0:
                continue
            oy = np.clip(arg[:, 1] + dy, 0.0, 1.0 - arg[:, 0])
            ox = np.clip(arg[:, 2] + dx, 0.0, 1.0 - arg[:, 0])
            ry = np.stack([resample_matrix(size, s, o) for s, o in zip(arg[:, 0], oy)])
            rx = np.stack([resample_matrix(size, s, o) for s, o in zip(arg[:, 0], ox)])
            if low is not None:
                ry, rx = low @ ry, low @ rx
            ry, rx = ry.astype(np.float32)[:, None], np.swapaxes(rx, 1, 2).astype(np.float32)
            w = np.matmul(np.matmul(ry, a), rx[:, None])  # (P, C, S, S)
            v = (_standardise(w) * b_std).sum(axis=(-3, -2, -1))
            best = np.maximum(best, v.astype(np.float32))
    return best


def aligned_ncc(
    thumbs: np.ndarray,
    i: np.ndarray,
    j: np.ndarray,
    scales: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85),
    step: float = 1 / 32,
    rank: bool = False,
    refine: bool = True,
    smooth: bool = False,
    chunk: int = 128,
) -> np.ndarray:
    """Best NCC of each pair ``(thumbs[i[p]], thumbs[j[p]])`` over aligned windows, either way
    round (see the module docstring); ``refine`` re-searches each pair's best window at half the
    offset step; ``smooth`` low-passes both sides alike first. ``thumbs``: (N, S, S) grayscale
    or (N, S, S, C) colour, uint8. Returns float32 in [-1, 1]."""
    t = np.asarray(thumbs)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    if t.ndim not in (3, 4) or t.shape[1] != t.shape[2]:
        raise ValueError(f"thumbs must be (N, S, S) or (N, S, S, C), got shape {t.shape}")
    size = t.shape[1]
    t = t[:, None] if t.ndim == 3 else np.moveaxis(t, 3, 1)  # (N, C, S, S)
    low = binomial_matrix(size) if smooth else np.eye(size)
    mats = [  # per scale (O, S, S): window resampling, then the low-pass
        np.stack([low @ resample_matrix(size, s, o) for o in window_offsets(s, step)]).astype(
            np.float32
        )
        for s in scales
    ]
    x = rank_transform(t) if rank else t.astype(np.float32)
    lo32 = low.astype(np.float32)
    out = np.empty(len(i), np.float32)
    for s in range(0, len(i), chunk):
        a, b = x[i[s : s + chunk]], x[j[s : s + chunk]]
        a_std, b_std = (
            _standardise(lo32 @ a @ lo32.T),
            _standardise(lo32 @ b @ lo32.T),
        )  # (P, C, S, S)
        lw = low if smooth else None
        out[s : s + chunk] = np.maximum(
            _one_way(a, b_std, scales, step, mats, refine, lw),
            _one_way(b, a_std, scales, step, mats, refine, lw),
        )
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
