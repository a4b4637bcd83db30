"""Multi-VLM recaptioning (stage 10) with quality checks and fusion.

Several captioners run side by side and each writes ``caption_<name>``; ``caption_original`` is
the alt text (MONET ships ``caption_original`` beside four VLM captions and samples one per
training example, i.e. no fusion). Each caption gets a QC status: ``ok``, ``empty``, ``refusal``,
``repetition`` (share of repeated word 3-grams above a limit), ``truncated`` (finish reason
``length``) or ``misaligned`` (CLIP score below ``min_alignment``). Fusion ``none`` keeps all
captions; ``select`` picks, per length tier (short < 30 tokens, medium, long > 120), the passing
caption with the highest alignment (ties: captioner order); with ``none`` the fused column holds
the first passing caption. A row where no caption passes QC is dropped as ``caption_failed``, so
no kept row has a null ``caption_fused``. Images are resized to ``max_pixels``
on the CPU before any captioner sees them (the VLM actors never decode full-size images).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from diffkit.curate.annotate import load_pil
from diffkit.curate.images import image_bytes
from diffkit.curate.plugins import get_plugin
from diffkit.curate.schema import alive, drop_rows, error_reason, pa, set_column
from diffkit.curate.stage import Resources, Stage

log = logging.getLogger(__name__)

REFUSALS = (
    r"\bi(?:'m| am) sorry\b",
    r"\bi can(?:not|'t) (?:help|assist|describe)\b",
    r"\bas an ai\b",
    r"\bunable to (?:see|view|describe)\b",
)


@dataclass(frozen=True, kw_only=True)
class CaptionerSpec:
    """One captioner.

    Attributes:
        name: Column suffix (``caption_<name>``); letters, digits and underscores.
        kind: Plugin: ``template`` (offline stand-in), ``blip`` (transformers BLIP from ``path``),
            ``faulty`` (test fake VLM with injected faults) or an entry-point plugin name.
        path: Local weights folder for model-backed captioners.
        max_new_tokens: Generation limit for model-backed captioners.
    """

    name: str = "template"
    kind: str = "template"
    path: str = ""
    max_new_tokens: int = 30

    def __post_init__(self):
        if not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"captioner name {self.name!r} must match [a-z0-9_]+")
        get_plugin("captioner", self.kind)


@dataclass(frozen=True, kw_only=True)
class RecaptionConfig:
    """Recaptioning survivors.

    Attributes:
        captioners: Captioners run side by side (see CaptionerSpec).
        fusion: ``none`` (keep all captions, MONET style) or ``select`` (best passing caption).
        alignment: ``none`` (no alignment score; ties go to captioner order) or ``clip`` (CLIP
            score from the CLIPModel folder ``alignment_model_path``).
        alignment_model_path: Local CLIPModel folder for ``alignment: clip``.
        min_alignment: Captions whose CLIP score is below this fail QC (``misaligned``).
        max_repeat_ratio: Largest allowed share of repeated word 3-grams.
        max_pixels: Images are downscaled to at most this many pixels before captioning.
        include_original: Treat the alt text as the ``original`` captioner in fusion.
        batch_size: Images per captioner call.
        concurrency: Unused since RayExecutor runs every stage in one actor pool (its `workers`).
        gpus: GPUs per actor on Ray.
        refusal_patterns: Regexes (case-insensitive) that mark a caption as a refusal.
    """

    captioners: tuple[CaptionerSpec, ...] = (CaptionerSpec(),)
    fusion: Literal["none", "select"] = "select"
    alignment: Literal["none", "clip"] = "none"
    alignment_model_path: str = ""
    min_alignment: float = -1.0
    max_repeat_ratio: float = 0.5
    max_pixels: int = 384 * 384
    include_original: bool = True
    batch_size: int = 16
    concurrency: int = 1
    gpus: float = 0.0
    refusal_patterns: tuple[str, ...] = field(default=REFUSALS)

    def __post_init__(self):
        if not self.captioners:
            raise ValueError("captioners must list at least one captioner")
        names = [c.name for c in self.captioners]
        if len(set(names)) != len(names) or "original" in names:
            raise ValueError(f"captioner names must be unique and not 'original', got {names}")
        if self.fusion not in ("none", "select"):
            raise ValueError(f"fusion={self.fusion!r}; options: none, select")
        if self.alignment not in ("none", "clip"):
            raise ValueError(f"alignment={self.alignment!r}; options: none, clip")
        if self.alignment == "clip" and not self.alignment_model_path:
            raise ValueError(
                "alignment='clip' needs alignment_model_path (a local CLIPModel folder)"
            )
        if self.max_pixels < 64:
            raise ValueError(f"max_pixels must be >= 64, got {self.max_pixels}")


def caption_status(text: str, finish: str, cfg: RecaptionConfig) -> str:
    """QC status of one caption (before alignment)."""
    t = (text or "").strip()
    if not t:
        return "empty"
    if any(re.search(p, t, re.I) for p in cfg.refusal_patterns):
        return "refusal"
    words = t.lower().split()
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) >= 3 and 1 - len(set(grams)) / len(grams) > cfg.max_repeat_ratio:
        return "repetition"
    if finish == "length":
        return "truncated"
    return "ok"


def tier(n_tokens: int) -> str:
    return "short" if n_tokens < 30 else ("long" if n_tokens > 120 else "medium")


def _resize(img, max_pixels: int):
    w, h = img.size
    if w * h <= max_pixels:
        return img
    s = (max_pixels / (w * h)) ** 0.5
    return img.resize((max(1, int(w * s)), max(1, int(h * s))))


class Recaption(Stage):
    name = "recaption"
    uses_model = True

    def __init__(self, config: RecaptionConfig | None = None) -> None:
        super().__init__(config or RecaptionConfig())
        self.plugins = []
        for spec in self.config.captioners:
            cls = get_plugin("captioner", spec.kind)
            kw = {"max_new_tokens": spec.max_new_tokens} if spec.kind == "blip" else {}
            self.plugins.append((spec, cls(spec.path, **kw)))
        self.aligner = None
        if self.config.alignment == "clip":
            self.aligner = get_plugin("embedder", "clip")(self.config.alignment_model_path)
        self.attempt = 0

    def model_revision(self) -> str:
        revs = [f"{s.name}={p.revision()}" for s, p in self.plugins]
        return "+".join(revs + ([self.aligner.revision()] if self.aligner else []))

    @property
    def resources(self) -> Resources:
        return Resources(gpus=self.config.gpus, concurrency=self.config.concurrency)

    def setup(self, ctx=None) -> None:
        self.attempt = ctx.attempt if ctx is not None else 0
        for _, p in self.plugins:
            p.attempt = self.attempt
            p.setup()
        if self.aligner:
            self.aligner.setup()
        self._ready = True

    def _run(self, plugin, ids, images, alts):
        if hasattr(plugin, "caption_ids"):
            return plugin.caption_ids(ids, images, alts)
        return plugin.caption(images, alts)

    def process(self, table):
        c = self.config
        n = table.num_rows
        idx = np.flatnonzero(alive(table)).tolist()
        data = dict(zip(idx, image_bytes(table, idx)))
        ids = table.column("row_id").to_pylist()
        alts = table.column("alt_text").to_pylist()
        caps = {s.name: [None] * n for s, _ in self.plugins}
        fin = {s.name: [""] * n for s, _ in self.plugins}
        failed: dict[int, str] = {}
        self.latency_ms = {}
        imgs = {}
        for i in idx:
            try:
                imgs[i] = _resize(load_pil(data[i]), c.max_pixels)
            except Exception as e:
                failed[i] = error_reason(self.name, e)
        todo = [i for i in idx if i in imgs]
        for spec, plug in self.plugins:
            t0 = time.perf_counter()
            for s in range(0, len(todo), c.batch_size):
                part = todo[s : s + c.batch_size]
                try:
                    res = self._run(
                        plug,
                        [ids[i] for i in part],
                        [imgs[i] for i in part],
                        [alts[i] for i in part],
                    )
                except Exception:
                    res = []
                    for i in part:
                        try:
                            res.append(self._run(plug, [ids[i]], [imgs[i]], [alts[i]])[0])
                        except Exception as e:
                            failed.setdefault(i, error_reason(self.name, e))
                            res.append((None, "error"))
                for i, (text, f) in zip(part, res):
                    caps[spec.name][i], fin[spec.name][i] = text, f
            self.latency_ms[spec.name] = 1000 * (time.perf_counter() - t0) / max(1, len(todo))
        names = [s.name for s, _ in self.plugins]
        align = {nm: [None] * n for nm in names + ["original"]}
        if self.aligner is not None and todo:
            ie = self.aligner.embed_images([imgs[i] for i in todo])
            for nm in names + ["original"]:
                texts = [(caps[nm][i] if nm != "original" else alts[i]) or "" for i in todo]
                te = self.aligner.embed_texts(texts)
                for j, i in enumerate(todo):
                    align[nm][i] = float(ie[j] @ te[j])
        meta, fused, method = [None] * n, [None] * n, [None] * n
        tiers = {t: [None] * n for t in ("short", "medium", "long")}
        revs = {s.name: p.revision() for s, p in self.plugins}
        for i in todo:
            if i in failed:
                continue
            entries = []
            cands = ([("original", alts[i] or "", "stop")] if c.include_original else []) + [
                (nm, caps[nm][i] or "", fin[nm][i]) for nm in names
            ]
            for order, (nm, text, f) in enumerate(cands):
                st = caption_status(text, f, c)
                a = align[nm][i]
                if st == "ok" and a is not None and a < c.min_alignment:
                    st = "misaligned"
                ntok = len(text.split())
                if nm != "original":
                    entries.append(
                        {
                            "captioner": nm,
                            "model_rev": revs[nm],
                            "prompt_id": "default",
                            "n_tokens": ntok,
                            "finish_reason": f,
                            "status": st,
                        }
                    )
                if st == "ok":
                    score = a if a is not None else 0.0
                    cur = tiers[tier(ntok)][i]
                    if cur is None or score > cur[1] or (score == cur[1] and order < cur[2]):
                        tiers[tier(ntok)][i] = (text, score, order, nm)
            meta[i] = entries
            best = [t[i] for t in tiers.values() if t[i] is not None]
            if not best:
                method[i] = f"{c.fusion}:none_passed"
                failed[i] = "caption_failed"
            elif c.fusion == "select":
                b = max(best, key=lambda t: (t[1], -t[2]))
                fused[i], method[i] = b[0], f"select:{b[3]}"
            else:  # all captions are kept; caption_fused is the first passing one in order
                b = min(best, key=lambda t: t[2])
                fused[i], method[i] = b[0], f"none:{b[3]}"
        for nm in names:
            table = set_column(table, f"caption_{nm}", caps[nm], pa().string())
        table = set_column(table, "caption_original", alts, pa().string())
        meta_type = pa().list_(
            pa().struct(
                [
                    ("captioner", pa().string()),
                    ("model_rev", pa().string()),
                    ("prompt_id", pa().string()),
                    ("n_tokens", pa().int32()),
                    ("finish_reason", pa().string()),
                    ("status", pa().string()),
                ]
            )
        )
        table = set_column(table, "caption_meta", meta, meta_type)
        table = set_column(table, "caption_fused", fused, pa().string())
        table = set_column(table, "caption_fused_method", method, pa().string())
        for t, vals in tiers.items():
            table = set_column(
                table, f"caption_{t}", [v[0] if v else None for v in vals], pa().string()
            )
        if failed:
            mask = np.zeros(n, bool)
            reasons = [""] * n
            for i, r in failed.items():
                mask[i], reasons[i] = True, r
            table = drop_rows(table, mask, self.name, reasons)
        return table
