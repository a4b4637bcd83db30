"""Preference-pair loaders: Pick-a-Pic v2 parquet, HPDv3 JSON, and a generic JSONL/parquet format.

Every loader returns ``(pairs, stats)``: a list of :class:`PreferencePair` oriented winner-first and
a :class:`LoadStats` that counts what was dropped and why. Bad rows (a missing image file, empty or
undecodable bytes, a malformed record) are skipped and counted, never a crash.

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


def decode_image(src: ImageSource, size: int) -> torch.Tensor:
    """(3, size, size) float tensor in [-1, 1]: RGB, resize the short side, center crop."""
    import numpy as np
    from PIL import Image

    img = open_image(src).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return arr / 127.5 - 1.0


# ----------------------------------------------------------------------------- Pick-a-Pic v2
def load_pickapic(paths: str | Path | list) -> tuple[list[PreferencePair], LoadStats]:
    """Read Pick-a-Pic v2 parquet shards (files or folders of ``*.parquet``)."""
    import pyarrow.parquet as pq

    stats, pairs = LoadStats(), []
    for f in _expand(paths, "*.parquet"):
        table = pq.read_table(f, columns=["caption", "jpg_0", "jpg_1", "label_0"])
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
    records = json.loads(json_path.read_text())
    for rec in records:
        stats.rows += 1
        try:
            prompt, p1, p2 = rec["prompt"], rec["path1"], rec["path2"]
            m1, m2 = rec.get("model1", ""), rec.get("model2", "")
            dist = rec.get("choice_dist", [1.0, 0.0])
        except (KeyError, TypeError):
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
        pairs.append(
            PreferencePair(prompt, a, b, float(rec.get("confidence", 1.0) or 1.0), source="hpdv3")
        )
        stats.kept += 1
    return pairs, stats


# ----------------------------------------------------------------------------- generic
def load_generic(path: str | Path) -> tuple[list[PreferencePair], LoadStats]:
    """JSONL or parquet rows ``prompt, chosen, rejected[, weight, source]``."""
    path = Path(path)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = []
        for line in path.read_text().splitlines():
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
        pairs.append(
            PreferencePair(
                str(row["prompt"]),
                srcs[0],
                srcs[1],
                float(row.get("weight", 1.0) or 1.0),
                str(row.get("source", "") or ""),
            )
        )
        stats.kept += 1
    return pairs, stats


def _expand(paths, pattern: str) -> list[Path]:
    items = paths if isinstance(paths, (list, tuple)) else [paths]
    out: list[Path] = []
    for p in map(Path, items):
        out.extend(sorted(p.glob(pattern)) if p.is_dir() else [p])
    if not out:
        raise FileNotFoundError(f"no data files found in {items}")
    return out


def load_pairs(
    path: str | Path | list, format: Format = "auto", **kwargs
) -> tuple[list[PreferencePair], LoadStats]:
    """Dispatch on ``format`` ("auto": .json -> HPDv3; parquet with ``jpg_0`` -> Pick-a-Pic;
    otherwise generic)."""
    if format == "auto":
        first = _expand(path, "*.parquet")[0]
        if first.suffix == ".json":
            format = "hpdv3"
        elif first.suffix == ".parquet":
            import pyarrow.parquet as pq

            names = pq.read_schema(first).names
            format = "pickapic" if "jpg_0" in names else "generic"
        else:
            format = "generic"
    if format == "pickapic":
        return load_pickapic(path, **kwargs)
    if format == "hpdv3":
        return load_hpdv3(path, **kwargs)
    if format == "generic":
        return load_generic(path, **kwargs)
    raise ValueError(f"format={format!r} is not supported; use auto, pickapic, hpdv3 or generic")
