"""Preference-pair loaders: Pick-a-Pic v2 parquet, HPDv3 JSON, and a generic JSONL/parquet format.

Every loader returns ``(pairs, stats)``: a list of :class:`PreferencePair` oriented winner-first and
a :class:`LoadStats` that counts what was dropped and why. Bad rows (a missing image file, empty or
undecodable bytes, a malformed record, a negative or non-finite weight) are skipped and counted.
Whole-input problems (a file in another format than asked for, a parquet file without the needed
columns, a JSON file that does not parse, no usable pair at all) raise :class:`DataError` with a
one-line message naming the file.

* **Pick-a-Pic v2** (``yuvalkirstain/pickapic_v2`` parquet shards): columns ``caption``, ``jpg_0``,
  ``jpg_1`` (JPEG bytes), ``label_0`` in {0, 0.5, 1}. Ties (0.5) are dropped; the winner is
  ``jpg_0`` if ``label_0 == 1`` else ``jpg_1`` (Diffusion-DPO, arXiv 2311.12908; Linear-DPO's
  code). No "pickapic" substring is required in the path.
* **HPDv3** (``MizzenAI/HPDv3`` ``train.json``): records ``prompt, path1, path2, model1, model2,
  choice_dist``; the pair is swapped when ``choice_dist[0] < choice_dist[1]``; optional filters on
  the generating models (both sides) and on the image resolution (Linear-DPO keeps 1024x1024 pairs
  from flux, kolors, sd3, hunyuan and real images).
* **generic**: JSONL or parquet with ``prompt, chosen, rejected`` (a path relative to the file, an
  absolute path, or raw bytes) and optional ``weight`` and ``source``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

Format = Literal["auto", "pickapic", "hpdv3", "generic"]
HPDV3_LINEAR_DPO_MODELS = ("flux", "kolors", "sd3", "hunyuan", "real_images")
ImageSource = bytes | str


@dataclass(frozen=True)
class PreferencePair:
    """One preference: ``chosen`` is preferred over ``rejected`` for ``prompt``."""

    prompt: str
    chosen: ImageSource
    rejected: ImageSource
    weight: float = 1.0
    source: str = ""


@dataclass
class LoadStats:
    """Counts of a loading pass: rows read, pairs kept, and drops by reason."""

    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    def as_dict(self) -> dict:
        return {
            "rows": self.rows,
            "kept": self.kept,
            **{f"dropped_{k}": v for k, v in sorted(self.dropped.items())},
        }


class ImageError(ValueError):
    """An image that is missing or cannot be decoded."""


class DataError(ValueError):
    """A data file that cannot be used as asked (wrong format, missing columns, no usable pair)."""


def _weight(value, stats: LoadStats) -> float | None:
    """A pair weight: missing -> 1; 0 stays 0; negative, non-finite or non-numeric -> None."""
    if value is None:
        return 1.0
    try:
        w = float(value)
    except (TypeError, ValueError):
        w = float("nan")
    if not math.isfinite(w) or w < 0:
        stats.drop("bad_weight")
        return None
    return w


def _parquet_columns(path: Path, needed: tuple[str, ...], what: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError on non-parquet input
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__})") from e
    missing = [c for c in needed if c not in names]
    if missing:
        raise DataError(
            f"{path}: {what} parquet needs columns {list(needed)}; missing {missing} "
            f"(has {names[:12]}{' ...' if len(names) > 12 else ''})"
        )


def open_image(src: ImageSource):
    """A PIL image from bytes or a path; :class:`ImageError` if missing or undecodable."""
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(src, (bytes, bytearray, memoryview)):
            if len(src) == 0:
                raise ImageError("empty image bytes")
            img = Image.open(io.BytesIO(bytes(src)))
        else:
            if not src or not Path(src).is_file():
                raise ImageError(f"image file not found: {src!r}")
            img = Image.open(src)
        img.load()
        return img
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ImageError(f"cannot decode image: {e}") from e


def decode_image(
    src: ImageSource,
    size: int,
    *,
    crop: tuple[float, float] | None = None,
    flip: bool = False,
    return_meta: bool = False,
):
    """(3, size, size) float tensor in [-1, 1]: RGB, resize the short side to ``size``, crop.

    Args:
        crop: ``None`` for a center crop, or (fy, fx) in [0, 1]: the crop's top-left corner as a
            fraction of the free room (a random crop when the fractions are drawn at random).
        flip: mirror left-right after cropping.
        return_meta: also return ``(orig_h, orig_w, crop_top, crop_left)``, SDXL's size and crop
            conditioning (in the resized image's pixels for the crop, as diffusers' SDXL scripts).
    """
    import numpy as np
    from PIL import Image

    img = open_image(src).convert("RGB")
    w0, h0 = img.size
    s = size / min(w0, h0)
    img = img.resize((max(size, round(w0 * s)), max(size, round(h0 * s))), Image.BICUBIC)
    w, h = img.size
    if crop is None:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top, left = round(crop[0] * (h - size)), round(crop[1] * (w - size))
    img = img.crop((left, top, left + size, top + size))
    if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    x = arr / 127.5 - 1.0
    if return_meta:
        return x, (h0, w0, top, left)
    return x


# ----------------------------------------------------------------------------- Pick-a-Pic v2
def load_pickapic(paths: str | Path | list) -> tuple[list[PreferencePair], LoadStats]:
    """Read Pick-a-Pic v2 parquet shards (files or folders of ``*.parquet``)."""
    import pyarrow.parquet as pq

    stats, pairs = LoadStats(), []
    columns = ("caption", "jpg_0", "jpg_1", "label_0")
    for f in _expand(paths, "*.parquet"):
        _parquet_columns(f, columns, "Pick-a-Pic v2")
        table = pq.read_table(f, columns=list(columns))
        for row in table.to_pylist():
            stats.rows += 1
            label = row.get("label_0")
            if label is None:
                stats.drop("no_label")
                continue
            if label not in (0, 0.0, 1, 1.0):
                stats.drop("tie")
                continue
            w, lo = (row["jpg_0"], row["jpg_1"]) if label == 1 else (row["jpg_1"], row["jpg_0"])
            if not w or not lo:
                stats.drop("missing_image")
                continue
            pairs.append(PreferencePair(row.get("caption") or "", w, lo, source=str(f)))
            stats.kept += 1
    return pairs, stats


# ----------------------------------------------------------------------------- HPDv3
def load_hpdv3(
    json_path: str | Path,
    image_root: str | Path | None = None,
    *,
    models: tuple[str, ...] | None = HPDV3_LINEAR_DPO_MODELS,
    resolution: tuple[int, int] | None = None,
) -> tuple[list[PreferencePair], LoadStats]:
    """Read an HPDv3 JSON list; orient by ``choice_dist``; filter by models and resolution.

    Args:
        json_path: ``train.json`` / ``test.json``.
        image_root: folder the ``path1``/``path2`` entries are relative to (default: the JSON's).
        models: keep pairs whose ``model1`` and ``model2`` are both in this set (None: keep all).
        resolution: keep pairs whose two images are exactly (width, height) (None: no check).
    """
    json_path = Path(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    stats, pairs = LoadStats(), []
    try:
        records = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{json_path}: not an HPDv3 JSON file ({e})") from e
    if not isinstance(records, list):
        raise DataError(
            f"{json_path}: an HPDv3 file is a JSON list of records, got {type(records).__name__}"
        )
    for rec in records:
        stats.rows += 1
        try:
            prompt, p1, p2 = rec["prompt"], rec["path1"], rec["path2"]
            m1, m2 = rec.get("model1", ""), rec.get("model2", "")
            dist = rec.get("choice_dist") or [1.0, 0.0]
            if len(dist) != 2:
                raise TypeError("choice_dist")
        except (KeyError, TypeError, AttributeError):
            stats.drop("malformed")
            continue
        if models is not None and not (m1 in models and m2 in models):
            stats.drop("model_filter")
            continue
        if dist[0] < dist[1]:
            p1, p2 = p2, p1
        a, b = str(root / p1), str(root / p2)
        if resolution is not None:
            try:
                sizes = {open_image(a).size, open_image(b).size}
            except ImageError:
                stats.drop("bad_image")
                continue
            if sizes != {tuple(resolution)}:
                stats.drop("resolution_filter")
                continue
        weight = _weight(rec.get("confidence"), stats)
        if weight is None:
            continue
        pairs.append(PreferencePair(prompt, a, b, weight, source="hpdv3"))
        stats.kept += 1
    return pairs, stats


# ----------------------------------------------------------------------------- generic
def load_generic(path: str | Path) -> tuple[list[PreferencePair], LoadStats]:
    """JSONL or parquet rows ``prompt, chosen, rejected[, weight, source]``."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        _parquet_columns(path, ("prompt", "chosen", "rejected"), "generic")
        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        try:
            text = path.read_text()
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not a JSONL text file ({e.reason})") from e
        for line in text.splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    rows.append(None)
    stats, pairs = LoadStats(), []
    for row in rows:
        stats.rows += 1
        if not isinstance(row, dict) or not {"prompt", "chosen", "rejected"} <= set(row):
            stats.drop("malformed")
            continue
        srcs = []
        for key in ("chosen", "rejected"):
            v = row[key]
            if isinstance(v, str) and not Path(v).is_absolute():
                v = str(path.parent / v)
            srcs.append(v)
        if not srcs[0] or not srcs[1]:
            stats.drop("missing_image")
            continue
        weight = _weight(row.get("weight"), stats)
        if weight is None:
            continue
        pairs.append(
            PreferencePair(
                str(row["prompt"]),
                srcs[0],
                srcs[1],
                weight,
                str(row.get("source", "") or ""),
            )
        )
        stats.kept += 1
    return pairs, stats


def _expand(paths, pattern: str) -> list[Path]:
    items = paths if isinstance(paths, (list, tuple)) else [paths]
    out: list[Path] = []
    for p in map(Path, items):
        if not p.exists():
            raise DataError(f"{p}: no such data file or folder")
        out.extend(sorted(p.glob(pattern)) if p.is_dir() else [p])
    if not out:
        raise DataError(f"no {pattern} data files in {', '.join(map(str, items))}")
    return out


def detect_format(path: str | Path) -> Format:
    """The format of one data path: .json -> HPDv3; parquet with ``jpg_0`` -> Pick-a-Pic (a folder:
    its first parquet shard); anything else -> generic."""
    first = _expand(path, "*.parquet")[0]
    if first.suffix == ".json":
        return "hpdv3"
    if first.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(first).names
        except Exception as e:
            raise DataError(f"{first}: not a readable parquet file ({type(e).__name__})") from e
        return "pickapic" if "jpg_0" in names else "generic"
    return "generic"


def _check_format(path: Path, format: Format) -> None:
    """A one-line error when a file plainly is not in ``format`` (e.g. a JSON file as Pick-a-Pic)."""
    first = _expand(path, "*.parquet")[0]
    suffix = first.suffix
    if format == "pickapic" and suffix != ".parquet":
        raise DataError(f"{first}: data_format=pickapic needs parquet shards, got a {suffix} file")
    if format == "hpdv3" and suffix != ".json":
        raise DataError(f"{first}: data_format=hpdv3 needs the HPDv3 JSON file, got {suffix}")
    if format == "generic" and suffix == ".json":
        raise DataError(f"{first}: data_format=generic reads JSONL or parquet, got a .json file")


def load_pairs(
    path: str | Path | list, format: Format = "auto", **kwargs
) -> tuple[list[PreferencePair], LoadStats]:
    """Read one path or a list of paths (each may have its own format under "auto").

    "auto": .json -> HPDv3; parquet with ``jpg_0`` -> Pick-a-Pic; otherwise generic. ``kwargs``
    go to the HPDv3 loader (``models``, ``resolution``, ``image_root``) and are ignored by the
    other formats. Raises :class:`DataError` when no usable pair is left.
    """
    if format not in ("auto", "pickapic", "hpdv3", "generic"):
        raise ValueError(
            f"format={format!r} is not supported; use auto, pickapic, hpdv3 or generic"
        )
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    pairs: list[PreferencePair] = []
    stats = LoadStats()
    for p in paths:
        fmt = detect_format(p) if format == "auto" else format
        _check_format(p, fmt)
        if fmt == "pickapic":
            got, st = load_pickapic(p)
        elif fmt == "hpdv3":
            got, st = load_hpdv3(p, **kwargs)
        else:
            got, st = load_generic(p)
        pairs += got
        stats.rows += st.rows
        stats.kept += st.kept
        stats.dropped.update(st.dropped)
    if not pairs:
        raise DataError(
            f"no usable preference pairs in {', '.join(map(str, paths))} "
            f"({json.dumps(stats.as_dict())})"
        )
    return pairs, stats
