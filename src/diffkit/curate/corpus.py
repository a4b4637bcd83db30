"""Seeded test corpus with planted ground truth (spec section (f)); no download.

Base images are procedural scenes (gradients, noise textures, stripes, shapes, rendered text) and
random crops with colour changes of the photos bundled in scikit-image's wheel and scikit-learn's
two sample photos. Planted on top: exact duplicates (byte copies; same pixels in different bytes:
PNG <-> lossless WebP and PNG with changed metadata), graded near-duplicates (resize, JPEG
quality, crop, rotation, brightness/contrast, gamma, contrast, text overlay, letterbox padding, border, colour
shift; flips as a separate family), hard negatives that must not be merged (same template with a
moved or recoloured object, sequential frames), degenerate and corrupt files (solid colours,
1xN strips, tiny images incl. scikit-image's 25x25 LFW faces, truncated JPEGs, zero-byte files,
wrong extensions, a decompression-bomb header), blocked domains, disallowed licences, proxy-unsafe
images (a planted marker) and junk captions. ``ground_truth.parquet`` records every row's family,
role, transform and expected outcome.
"""

from __future__ import annotations

import io
import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffkit.core.io import atomic_dir
from diffkit.curate.plugins import plant_marker
from diffkit.curate.schema import pa

log = logging.getLogger(__name__)

BLOCKED_DOMAINS = ("gettyimages.com", "shutterstock.com", "dreamstime.com")
GOOD_LICENSES = ("cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "apache-2.0")
BAD_LICENSES = ("all-rights-reserved", "cc-by-nc-nd-4.0")
BLOCKLIST_TERMS = ("nsfw", "explicit")
NEAR_TRANSFORMS = {
    "resize": (0.3, 0.5, 0.7, 0.9),
    "jpeg": (20, 40, 60, 80, 95),
    "brightness": (-0.15, -0.08, 0.08, 0.15),
    "gamma": (0.6, 0.8, 1.25, 1.6),
    "contrast": (0.6, 0.8, 1.25, 1.5),
    "crop": (0.05, 0.1, 0.2, 0.3),
    "rotate": (1.0, 2.0, 3.0),
    "overlay": (1, 2),
    "padding": (0.05, 0.1, 0.15),
    "border": (4, 12),
    "colour_shift": (6, 12),
    "flip": (1,),
}
_CAPTION_WORDS = [
    "red",
    "blue",
    "green",
    "small",
    "large",
    "round",
    "square",
    "bright",
    "dark",
    "sunny",
    "quiet",
    "old",
    "new",
]
_CAPTION_NOUNS = [
    "house",
    "tree",
    "car",
    "cat",
    "dog",
    "boat",
    "street",
    "garden",
    "river",
    "mountain",
    "table",
    "chair",
]


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """What the generator plants.

    Attributes:
        n_base: Number of distinct base images (families); the corpus has about 4-5x as many rows.
        min_size: Smallest side of a base image in pixels.
        max_size: Largest side of a base image in pixels.
        photo_fraction: Share of bases cut from the bundled photos (the rest are procedural).
        near_per_base: Near-duplicate variants per base (transforms drawn at random).
        exact_fraction: Share of bases with an exact byte copy and a same-pixels re-encode.
        hard_negative_fraction: Share of procedural bases with a hard-negative sibling.
        unsafe_fraction: Share of extra rows carrying the proxy-unsafe marker.
        seed: Everything is drawn from this seed.
    """

    n_base: int = 400
    min_size: int = 256
    max_size: int = 384
    photo_fraction: float = 0.35
    near_per_base: int = 2
    exact_fraction: float = 0.2
    hard_negative_fraction: float = 0.3
    unsafe_fraction: float = 0.03
    seed: int = 0

    def __post_init__(self):
        if self.n_base < 4:
            raise ValueError(f"n_base must be >= 4, got {self.n_base}")
        if not 16 <= self.min_size <= self.max_size:
            raise ValueError(
                f"need 16 <= min_size <= max_size, got {self.min_size}, {self.max_size}"
            )
        for f in ("photo_fraction", "exact_fraction", "hard_negative_fraction", "unsafe_fraction"):
            if not 0 <= getattr(self, f) <= 1:
                raise ValueError(f"{f} must be in [0, 1], got {getattr(self, f)}")


_PHOTOS: list | None = None


def bundled_photos() -> list[np.ndarray]:
    """RGB uint8 photos shipped inside the scikit-image and scikit-learn wheels (no download)."""
    global _PHOTOS
    if _PHOTOS is None:
        from skimage import data
        from sklearn.datasets import load_sample_images

        names = ["astronaut", "coffee", "chelsea", "camera", "rocket", "hubble_deep_field",
                 "immunohistochemistry", "moon", "page", "text", "coins", "brick", "grass",
                 "gravel", "cell", "clock", "colorwheel", "retina", "cat", "motorcycle_left"]  # fmt: skip
        out = []
        for n in names:
            try:
                im = data.stereo_motorcycle()[0] if n == "motorcycle_left" else getattr(data, n)()
            except Exception:  # not bundled in this version
                continue
            im = np.asarray(im)
            if im.dtype != np.uint8:
                im = (255 * (im.astype(np.float64) / max(float(im.max()), 1e-9))).astype(np.uint8)
            if im.ndim == 2:
                im = np.stack([im] * 3, -1)
            out.append(im[..., :3])
        out += [np.asarray(im) for im in load_sample_images().images]
        _PHOTOS = out
    return _PHOTOS


def _procedural(rng: np.random.Generator, w: int, h: int, shapes=None):
    """A scene: background (gradient / noise / stripes) + shapes + optional text. Returns
    (image, shape list) so hard negatives can re-render the same template with changes."""
    from PIL import Image, ImageDraw

    kind = rng.integers(3)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    if kind == 0:
        a = rng.uniform(0, np.pi)
        t = np.cos(a) * xx + np.sin(a) * yy
        t = (t - t.min()) / max(np.ptp(t), 1e-9)
    elif kind == 1:
        small = rng.random((rng.integers(4, 12), rng.integers(4, 12)))
        t = (
            np.asarray(
                Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
            )
            / 255.0
        )
    else:
        f = rng.uniform(3, 15)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx + rng.uniform(0.3, 1) * yy))
    bg = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    if shapes is None:
        shapes = []
        for _ in range(rng.integers(3, 8)):
            kind_s = int(rng.integers(3))
            cx, cy = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9)
            r = rng.uniform(0.06, 0.22)
            col = tuple(int(v) for v in rng.integers(0, 256, 3))
            shapes.append([kind_s, cx, cy, r, col])
        if rng.random() < 0.4:
            shapes.append(
                [
                    3,
                    rng.uniform(0.1, 0.5),
                    rng.uniform(0.1, 0.8),
                    0,
                    tuple(int(v) for v in rng.integers(0, 256, 3)),
                ]
            )
    for kind_s, cx, cy, r, col in shapes:
        x, y, rr = cx * w, cy * h, r * min(w, h)
        if kind_s == 0:
            d.ellipse([x - rr, y - rr, x + rr, y + rr], fill=col)
        elif kind_s == 1:
            d.rectangle([x - rr, y - rr * 0.6, x + rr, y + rr * 0.6], fill=col)
        elif kind_s == 2:
            d.polygon([(x, y - rr), (x + rr, y + rr), (x - rr, y + rr)], fill=col)
        else:
            d.text((x, y), "SALE 50%", fill=col)
    return img, shapes


def _overlap(a, b) -> float:
    """Intersection of boxes ``(x0, y0, x1, y1)`` over the smaller box's area."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1)


def _photo_crop(rng, photos, w, h, used: dict | None = None, max_overlap: float = 0.25):
    """A random crop (30-60 % of the sides) of a bundled photo with a colour jitter, resized to
    ``w`` x ``h``. With ``used`` (photo index -> boxes cut so far), a crop overlaps every earlier
    crop of its photo by at most ``max_overlap`` of the smaller area (up to 50 tries): two bases
    cut from overlapping regions of one photo would be crop near-duplicates of each other, not
    the distinct images the ground truth says they are."""
    from PIL import Image

    for _ in range(50):
        k = int(rng.integers(len(photos)))
        src = photos[k]
        H, W = src.shape[:2]
        f = rng.uniform(0.3, 0.6)
        ch, cw = max(16, int(H * f)), max(16, int(W * f))
        y, x = int(rng.integers(0, H - ch + 1)), int(rng.integers(0, W - cw + 1))
        box = (x, y, x + cw, y + ch)
        if used is None or all(_overlap(box, b) <= max_overlap for b in used.get(k, [])):
            break
    if used is not None:
        used.setdefault(k, []).append(box)
    crop = src[y : y + ch, x : x + cw].astype(np.float32)
    crop = crop * rng.uniform(0.8, 1.2, 3)[None, None] + rng.uniform(-20, 20)
    return Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)


def _encode(img, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _near(img, transform: str, s, rng):
    from PIL import Image, ImageDraw, ImageEnhance, ImageOps

    w, h = img.size
    if transform == "resize":
        return (
            img.resize((max(8, int(w * s)), max(8, int(h * s))), Image.BILINEAR),
            "JPEG",
            {"quality": 90},
        )
    if transform == "jpeg":
        return img, "JPEG", {"quality": int(s)}
    if transform == "brightness":
        out = ImageEnhance.Brightness(img).enhance(1 + s)
        return ImageEnhance.Contrast(out).enhance(1 + s / 2), "JPEG", {"quality": 90}
    if transform == "gamma":
        lut = [round(255 * (v / 255) ** s) for v in range(256)]
        return img.point(lut * 3), "JPEG", {"quality": 90}
    if transform == "contrast":
        return ImageEnhance.Contrast(img).enhance(s), "JPEG", {"quality": 90}
    if transform == "crop":
        dx, dy = int(w * s), int(h * s)
        ox, oy = int(rng.integers(0, dx + 1)), int(rng.integers(0, dy + 1))
        return img.crop((ox, oy, w - (dx - ox), h - (dy - oy))), "JPEG", {"quality": 90}
    if transform == "rotate":
        return (
            img.rotate(
                float(s) * (1 if rng.random() < 0.5 else -1),
                resample=Image.BILINEAR,
                fillcolor=(0, 0, 0),
            ),
            "JPEG",
            {"quality": 90},
        )
    if transform == "overlay":
        out = img.copy()
        d = ImageDraw.Draw(out)
        for k in range(int(s)):
            d.text((8 + 40 * k, h - 20 - 12 * k), "(c) watermark", fill=(255, 255, 255))
        return out, "JPEG", {"quality": 90}
    if transform == "padding":
        p = int(max(w, h) * s)
        return ImageOps.expand(img, border=(0, p, 0, p), fill=(0, 0, 0)), "JPEG", {"quality": 90}
    if transform == "border":
        return ImageOps.expand(img, border=int(s), fill=(255, 255, 255)), "JPEG", {"quality": 90}
    if transform == "colour_shift":
        a = np.asarray(img.convert("HSV")).copy()
        a[..., 0] = (a[..., 0].astype(int) + int(s)) % 256
        return Image.fromarray(a, "HSV").convert("RGB"), "JPEG", {"quality": 90}
    if transform == "flip":
        return ImageOps.mirror(img), "JPEG", {"quality": 90}
    raise ValueError(f"unknown transform {transform!r}")


def _bomb_png() -> bytes:
    """A valid PNG signature + IHDR claiming 100000 x 100000 pixels (decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _caption(rng) -> str:
    return f"a {rng.choice(_CAPTION_WORDS)} {rng.choice(_CAPTION_NOUNS)} near a {rng.choice(_CAPTION_WORDS)} {rng.choice(_CAPTION_NOUNS)}"


def make_corpus(out_dir: str | Path, config: CorpusConfig | None = None) -> dict:
    """Write ``images/``, ``metadata.parquet`` and ``ground_truth.parquet`` into ``out_dir``
    (atomically); returns counts per role."""
    from PIL import Image, PngImagePlugin

    cfg = config or CorpusConfig()
    rng = np.random.default_rng(cfg.seed)
    photos = bundled_photos()
    rows, files = [], {}

    def add(data: bytes, ext: str, *, source, family, role, transform="", strength="", alt=None,
            url=None, license=None, expect="keep", reason="", related=-1):  # fmt: skip
        k = len(rows)
        key = f"{role}/{k:05d}.{ext}"
        files[key] = data
        rows.append({
            "uri": f"images/{key}", "source": source, "source_key": key,
            "url": url or f"https://img{k % 7}.{source}-mirror.org/{k:05d}.{ext}",
            "license": license if license is not None else GOOD_LICENSES[k % len(GOOD_LICENSES)],
            "alt_text": (alt if alt is not None else _caption(rng)).encode() if isinstance(alt, str) or alt is None else alt,
            "family": family, "role": role, "transform": transform, "strength": str(strength),
            "expect": expect, "expect_reason": reason, "related_family": related,
        })  # fmt: skip

    bases, photo_boxes = [], {}
    n_photo = int(round(cfg.n_base * cfg.photo_fraction))
    for b in range(cfg.n_base):
        w, h = (int(v) for v in rng.integers(cfg.min_size, cfg.max_size + 1, 2))
        if b < n_photo:
            img, shapes, src = _photo_crop(rng, photos, w, h, photo_boxes), None, "photos"
        else:
            seed = int(rng.integers(1 << 31))
            img, shapes = _procedural(np.random.default_rng(seed), w, h)
            src = "procedural"
        bases.append((img, shapes, src))
        fmt = "PNG" if b % 3 == 0 else "JPEG"
        data = _encode(img, fmt, **({} if fmt == "PNG" else {"quality": 92}))
        add(data, "png" if fmt == "PNG" else "jpg", source=src, family=b, role="base")
        base_data, base_fmt = data, fmt
        if rng.random() < cfg.exact_fraction:
            add(
                base_data,
                "png" if base_fmt == "PNG" else "jpg",
                source="mirror",
                family=b,
                role="exact_bytes",
                transform="copy",
                expect="drop",
                reason="exact_dup",
            )
            if base_fmt == "PNG":
                same = _encode(img, "WEBP", lossless=True)
                add(
                    same,
                    "webp",
                    source="mirror",
                    family=b,
                    role="exact_pixels",
                    transform="webp_lossless",
                    expect="drop",
                    reason="exact_dup",
                )
            info = PngImagePlugin.PngInfo()
            info.add_text("Comment", f"re-saved {b}")
            src_img = (
                Image.open(io.BytesIO(base_data)).convert("RGB") if base_fmt == "JPEG" else img
            )
            if base_fmt == "PNG":
                add(
                    _encode(src_img, "PNG", pnginfo=info),
                    "png",
                    source="mirror",
                    family=b,
                    role="exact_pixels",
                    transform="png_metadata",
                    expect="drop",
                    reason="exact_dup",
                )
        for _ in range(cfg.near_per_base):
            t = list(NEAR_TRANSFORMS)[int(rng.integers(len(NEAR_TRANSFORMS)))]
            s = NEAR_TRANSFORMS[t][int(rng.integers(len(NEAR_TRANSFORMS[t])))]
            out, fmt, kw = _near(img, t, s, rng)
            add(
                _encode(out, fmt, **kw),
                "jpg",
                source="mirror",
                family=b,
                role="flip" if t == "flip" else "near",
                transform=t,
                strength=s,
            )
        if shapes is not None and rng.random() < cfg.hard_negative_fraction:
            moved = [list(x) for x in shapes]
            j = int(rng.integers(len(moved)))
            if rng.random() < 0.5:
                moved[j][1] = (moved[j][1] + 0.45) % 0.8 + 0.1
                moved[j][2] = (moved[j][2] + 0.45) % 0.8 + 0.1
                moved[j][3] = max(moved[j][3], 0.18)
                t = "moved_object"
            else:
                moved[j][4] = tuple(255 - c for c in moved[j][4])
                moved[j][3] = max(moved[j][3], 0.2)
                t = "recoloured_object"
            hn = np.random.default_rng(int(rng.integers(1 << 31)))
            img2, _ = _procedural(hn, *img.size, shapes=moved)
            add(
                _encode(img2, "JPEG", quality=92),
                "jpg",
                source="procedural",
                family=cfg.n_base + b,
                role="hard_negative",
                transform=t,
                related=b,
            )
    fam = 2 * cfg.n_base
    # near-blank images of different colours and other degenerate rows
    for _ in range(6):
        col = tuple(int(v) for v in rng.integers(0, 256, 3))
        arr = np.clip(
            np.full((260, 300, 3), col, np.float32) + rng.normal(0, 1.0, (260, 300, 3)), 0, 255
        ).astype(np.uint8)
        add(
            _encode(Image.fromarray(arr), "PNG"),
            "png",
            source="procedural",
            family=fam,
            role="degenerate",
            transform="near_blank",
            expect="drop",
            reason="near_uniform",
        )
        fam += 1
    add(
        _encode(Image.new("RGB", (1, 300), (10, 200, 30)), "PNG"),
        "png",
        source="procedural",
        family=fam,
        role="degenerate",
        transform="strip",
        expect="drop",
        reason="min_side",
    )
    fam += 1
    from skimage import data as skdata

    faces = skdata.lfw_subset()
    for i in range(min(4, len(faces))):
        face = Image.fromarray((faces[i] * 255).astype(np.uint8)).convert("RGB")
        add(
            _encode(face, "PNG"),
            "png",
            source="lfw",
            family=fam,
            role="degenerate",
            transform="tiny_face",
            expect="drop",
            reason="min_side",
        )
        fam += 1
    # corrupt files
    jpg = _encode(bases[0][0], "JPEG", quality=92)
    add(
        jpg[: len(jpg) // 2],
        "jpg",
        source="mirror",
        family=fam,
        role="corrupt",
        transform="truncated",
        expect="drop",
        reason="truncated",
    )
    add(
        b"",
        "jpg",
        source="mirror",
        family=fam + 1,
        role="corrupt",
        transform="zero_bytes",
        expect="drop",
        reason="zero_bytes",
    )
    add(
        b"<html><body>404 Not Found</body></html>",
        "jpg",
        source="mirror",
        family=fam + 2,
        role="corrupt",
        transform="html_as_jpg",
        expect="drop",
        reason="wrong_mime",
    )
    add(
        _bomb_png(),
        "png",
        source="mirror",
        family=fam + 3,
        role="corrupt",
        transform="bomb_header",
        expect="drop",
        reason="decompression_bomb",
    )
    fam += 4

    # governance, safety and caption plants on fresh procedural images
    def fresh():
        w, h = (int(v) for v in rng.integers(cfg.min_size, cfg.max_size + 1, 2))
        return _procedural(np.random.default_rng(int(rng.integers(1 << 31))), w, h)[0]

    plants = [
        ("blocked", {"url": f"https://images.{d}/photo/{i}.jpg"}, "blocked_domain")
        for i, d in enumerate(BLOCKED_DOMAINS)
    ]
    plants += [("licence", {"license": lic}, "license") for lic in BAD_LICENSES]
    plants += [
        ("unsafe_text", {"alt": f"an {t} picture of a house"}, "unsafe_text")
        for t in BLOCKLIST_TERMS
    ]
    n_unsafe = max(2, int(round(cfg.unsafe_fraction * cfg.n_base)))
    plants += [("unsafe_marker", {"marker": True}, "nsfw") for _ in range(n_unsafe)]
    junk = [("", "keep", ""), ("IMG_0001.JPG", "drop", "alt_text_rule"), ("dog", "keep", ""),
            ("un chat sur un canapé rouge", "keep", ""), ("x" * 2500, "drop", "alt_text_rule"),
            ("fish &amp; chips &lt;3", "keep", ""), (b"\xff\xfe caption \xc3\x28", "drop", "alt_text_encoding")]  # fmt: skip
    for role, kw, reason in plants:
        img = fresh()
        if kw.pop("marker", False):
            img = plant_marker(img)
        add(
            _encode(img, "JPEG", quality=92),
            "jpg",
            source="web",
            family=fam,
            role=role,
            expect="drop",
            reason=reason,
            **kw,
        )
        fam += 1
    for alt, expect, reason in junk:
        add(
            _encode(fresh(), "JPEG", quality=92),
            "jpg",
            source="web",
            family=fam,
            role="caption",
            alt=alt,
            expect=expect,
            reason=reason,
        )
        fam += 1
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        for key, data in files.items():
            p = tmp / "images" / key
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        meta_cols = ["uri", "source", "source_key", "url", "license", "alt_text"]
        P = pa()
        import pyarrow.parquet as pq

        meta = P.table(
            {
                c: P.array([r[c] for r in rows], P.binary() if c == "alt_text" else P.string())
                for c in meta_cols
            }
        )
        pq.write_table(meta, tmp / "metadata.parquet")
        gt = P.Table.from_pylist([{k: v for k, v in r.items() if k != "alt_text"} for r in rows])
        pq.write_table(gt, tmp / "ground_truth.parquet")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["role"]] = counts.get(r["role"], 0) + 1
    return {"rows": len(rows), "roles": counts}
