"""The ingest/decode stage (reading the input is :mod:`diffkit.curate.sources`).

Decode follows spec (e) stage 1: Pillow with ``MAX_IMAGE_PIXELS`` set and truncated images
refused, EXIF transpose, sizes, SHA-256 of the bytes and of the canonical pixels (RGB8, alpha
composited on white, with a ``w,h`` header), 8x8 DCT pHash and dHash (imagehash) and a pixel
entropy that flags degenerate (blank, solid) images. Every failure is a tombstone with a reason.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from diffkit.curate.align import thumbnail
from diffkit.curate.schema import drop_rows, error_reason, pa, require, set_column
from diffkit.curate.sources import IMAGE_EXTS, read_input  # noqa: F401  (re-exported)
from diffkit.curate.stage import Stage

log = logging.getLogger(__name__)

_EXT_MIME = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class IngestConfig:
    """Decode guards and hashing.

    Attributes:
        max_pixels: Decompression-bomb guard: images whose header claims more pixels are dropped
            (``decompression_bomb``) before any pixel is decoded.
        max_bytes: Files larger than this many bytes are dropped unread (``max_bytes``).
        hash_size: Side of the pHash/dHash grid (8 gives the spec's 64-bit hashes).
        crop_scales: Scales of the sub-window pHash/dHash pairs stored per row for crop-robust
            near-dup search (``phash_crops``/``dhash_crops``): for each scale s, 9 windows of
            side s anchored at the corners, edge midpoints and centre; () disables (the
            default: see PhashDedupConfig.crop_max_distance).
        thumb_size: Side of the thumbnail stored per row (``thumb``: ``thumb_size**2`` bytes,
            times 3 in colour) for the aligned-NCC verification of near-duplicate candidates
            (:mod:`diffkit.curate.align`, PhashDedupConfig.verify_ncc); 0 stores none.
        thumb_colour: Store the thumbnail in RGB (default) instead of grayscale: the NCC then
            tells apart objects recoloured to the same luminance.
        mime_mismatch: What to do when the file extension disagrees with the decoded format:
            ``fix`` records the true MIME type, ``drop`` tombstones the row (``wrong_mime``).
    """

    max_pixels: int = 64_000_000
    max_bytes: int = 64_000_000
    hash_size: int = 8
    crop_scales: tuple[float, ...] = ()
    thumb_size: int = 32
    thumb_colour: bool = True
    mime_mismatch: Literal["fix", "drop"] = "fix"

    def __post_init__(self):
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.hash_size != 8:
            raise ValueError(f"hash_size must be 8 (64-bit uint64 hashes), got {self.hash_size}")
        if any(not 0.5 <= s < 1.0 for s in self.crop_scales):
            raise ValueError(f"crop_scales must lie in [0.5, 1), got {self.crop_scales}")
        if self.thumb_size != 0 and not 8 <= self.thumb_size <= 128:
            raise ValueError(f"thumb_size must be 0 or in [8, 128], got {self.thumb_size}")
        if self.mime_mismatch not in ("fix", "drop"):
            raise ValueError(f"mime_mismatch must be 'fix' or 'drop', got {self.mime_mismatch!r}")


def looks_truncated(data: bytes) -> bool:
    """True when ``data`` starts like a JPEG, PNG, GIF or WebP file but its end marker is missing
    (JPEG EOI ``FFD9``, PNG ``IEND``, GIF trailer ``;``, or fewer bytes than the RIFF header
    declares). Used to tell a cut-off download from a corrupt file when Pillow fails, because
    Pillow reports a JPEG cut inside its headers as a generic decode error."""
    tail = data[-64:].rstrip(b"\x00")
    if data[:3] == b"\xff\xd8\xff":
        return not tail.endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in tail
    if data[:4] == b"GIF8":
        return not tail.endswith(b";")
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 8:
        return int.from_bytes(data[4:8], "little") + 8 > len(data)
    return False


class DecodeFailure(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _bits_to_u64(bits: np.ndarray) -> int:
    v = 0
    for b in bits.flatten():
        v = (v << 1) | int(bool(b))
    return v


def canonical_rgb(img):
    """RGB8 after compositing any alpha on white (what ``sha256_pixels`` hashes)."""
    from PIL import Image

    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def pixel_entropy(gray32: np.ndarray) -> float:
    """Shannon entropy (bits, max 6) of a 64-bin histogram of the 32x32 grayscale thumbnail."""
    hist = np.bincount((gray32.astype(np.int64) >> 2).ravel(), minlength=64).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def uniform_share(rgb64: np.ndarray, tol: int = 8) -> float:
    """Share of pixels of a 64x64 RGB thumbnail within ``tol`` levels (every channel) of the
    median colour: ~1.0 for blank and solid images (with or without sensor noise), well below 1
    for any picture with a visible shape, however flat its colours (issue 19 item 2: a
    histogram-entropy floor also dropped flat-colour illustrations)."""
    a = rgb64.reshape(-1, 3).astype(np.int16)
    med = np.median(a, axis=0)
    return float((np.abs(a - med).max(axis=1) <= tol).mean())


def crop_hashes(rgb, scales, hash_size: int = 8) -> tuple[list[int], list[int]]:
    """pHash and dHash of 9 windows per scale (offsets 0, 1/2, 1 of the free margin in x and y).

    A copy cut by up to (1 - s) of its width and height lies near one of these windows of the
    original, so ``pHash(window of A) ~ pHash(B)`` where the full hashes differ (issue 19
    item 4). Computed on a copy whose shorter side is at most 256 px (hashes are taken at
    32x32 and 9x8 anyway)."""
    import imagehash
    from PIL import Image

    w, h = rgb.size
    if min(w, h) > 256:
        f = 256 / min(w, h)
        rgb = rgb.resize((max(1, round(w * f)), max(1, round(h * f))), Image.BILINEAR)
        w, h = rgb.size
    ph, dh = [], []
    for s in scales:
        cw, ch = w * s, h * s
        for fy in (0.0, 0.5, 1.0):
            for fx in (0.0, 0.5, 1.0):
                x0, y0 = fx * (w - cw), fy * (h - ch)
                c = rgb.crop((round(x0), round(y0), round(x0 + cw), round(y0 + ch)))
                ph.append(_bits_to_u64(imagehash.phash(c, hash_size=hash_size).hash))
                dh.append(_bits_to_u64(imagehash.dhash(c, hash_size=hash_size).hash))
    return ph, dh


def decode_image(data: bytes, ext: str, cfg: IngestConfig) -> dict:
    """Decode one file; raise :class:`DecodeFailure` with a reason code on any problem."""
    from PIL import Image, ImageFile, ImageOps

    imagehash = require("imagehash", "curate ingest")
    if len(data) == 0:
        raise DecodeFailure("zero_bytes")
    if len(data) > cfg.max_bytes:
        raise DecodeFailure("max_bytes")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    old = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = cfg.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data))
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise DecodeFailure("decompression_bomb") from e
            except Exception as e:
                head = data[:64].lstrip().lower()
                reason = (
                    "wrong_mime" if head[:1] in (b"<", b"{") or head.isascii() else "decode_error"
                )
                if reason == "decode_error" and looks_truncated(data):
                    reason = "truncated"
                raise DecodeFailure(reason) from e
            w0, h0 = img.size
            if w0 * h0 > cfg.max_pixels:
                raise DecodeFailure("decompression_bomb")
            fmt = (img.format or "").lower()
            mime = Image.MIME.get(img.format or "", f"image/{fmt}")
            try:
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise DecodeFailure("decompression_bomb") from e
            except Exception as e:
                cut = "truncat" in str(e).lower() or looks_truncated(data)
                raise DecodeFailure("truncated" if cut else "decode_error") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old
    if ext and _EXT_MIME.get(ext.lower(), mime) != mime and cfg.mime_mismatch == "drop":
        raise DecodeFailure("wrong_mime")
    img = ImageOps.exif_transpose(img)
    rgb = canonical_rgb(img)
    w, h = rgb.size
    px = hashlib.sha256(f"{w},{h};".encode() + rgb.tobytes()).digest()
    ph = imagehash.phash(rgb, hash_size=cfg.hash_size)
    dh = imagehash.dhash(rgb, hash_size=cfg.hash_size)
    gray32 = np.asarray(rgb.convert("L").resize((32, 32), Image.BILINEAR))
    pc, dc = crop_hashes(rgb, cfg.crop_scales, cfg.hash_size)
    return {
        "thumb": thumbnail(rgb, cfg.thumb_size, cfg.thumb_colour).tobytes()
        if cfg.thumb_size
        else None,
        "phash_crops": pc,
        "dhash_crops": dc,
        "mime": mime,
        "width": w,
        "height": h,
        "sha256_pixels": px,
        "phash": _bits_to_u64(ph.hash),
        "dhash": _bits_to_u64(dh.hash),
        "hash_entropy": pixel_entropy(gray32),
        "uniform_share": uniform_share(np.asarray(rgb.resize((64, 64), Image.BILINEAR))),
    }


class Ingest(Stage):
    """Stage 1: decode, guard, measure and hash every row (CPU)."""

    name = "ingest"
    version = "3"  # 2: the thumb column; 3: colour thumbnails

    def __init__(self, config: IngestConfig | None = None) -> None:
        super().__init__(config or IngestConfig())

    def process(self, table):
        n = table.num_rows
        images = table.column("image").to_pylist()
        uris = table.column("uri").to_pylist()
        input_errors = (
            table.column("input_error").to_pylist()
            if "input_error" in table.column_names
            else [None] * n
        )
        out = {
            "mime": [""] * n,
            "bytes_len": [0] * n,
            "width": [0] * n,
            "height": [0] * n,
            "sha256_bytes": [None] * n,
            "sha256_pixels": [None] * n,
            "phash": [0] * n,
            "dhash": [0] * n,
            "hash_entropy": [0.0] * n,
            "uniform_share": [0.0] * n,
            "phash_crops": [None] * n,
            "dhash_crops": [None] * n,
            "thumb": [None] * n,
        }
        reasons = [""] * n
        for i in range(n):
            if input_errors[i]:  # missing_file, broken_symlink, ... found by the reader
                reasons[i] = input_errors[i]
                continue
            try:
                data = images[i]
                if data is None:
                    data = Path(uris[i]).read_bytes() if uris[i] else b""
                out["bytes_len"][i] = len(data)
                out["sha256_bytes"][i] = hashlib.sha256(data).digest()
                ext = Path(uris[i]).suffix if uris[i] else ""
                for k, v in decode_image(data, ext, self.config).items():
                    out[k][i] = v
            except DecodeFailure as e:
                reasons[i] = e.reason
            except FileNotFoundError:
                reasons[i] = "missing_file"
            except Exception as e:  # a bad row never fails the run
                reasons[i] = error_reason(self.name, e)
                log.debug("ingest row %d failed", i, exc_info=True)
        P = pa()
        if "image_ref" in table.column_names:  # the bytes stay where they are (file or input
            table = table.drop_columns(["image"])  # shard); later stages read them by reference
        if "input_error" in table.column_names:
            table = table.drop_columns(["input_error"])
        types = {
            "mime": P.string(),
            "bytes_len": P.int32(),
            "width": P.int32(),
            "height": P.int32(),
            "sha256_bytes": P.binary(32),
            "sha256_pixels": P.binary(32),
            "phash": P.uint64(),
            "dhash": P.uint64(),
            "hash_entropy": P.float32(),
            "uniform_share": P.float32(),
            "phash_crops": P.list_(P.uint64()),
            "dhash_crops": P.list_(P.uint64()),
            "thumb": P.binary(),
        }
        for k, t in types.items():
            table = set_column(table, k, out[k], t)
        bad = np.array([bool(r) for r in reasons])
        table = drop_rows(table, bad, self.name, reasons)
        valid = np.asarray(table.column("alt_text_valid").to_pylist(), bool)
        return drop_rows(table, ~valid, self.name, "alt_text_encoding")


def hamming(a, b) -> np.ndarray:
    """Bitwise Hamming distance between uint64 arrays."""
    x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    return np.bitwise_count(x).astype(np.int64)
