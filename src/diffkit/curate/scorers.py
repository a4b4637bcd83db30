"""Quality scorers curators expect (issue 19 item 7), used like the safety scorers: each writes a
``score_<name>`` column and a :class:`~diffkit.curate.filters.PolicyConfig` threshold decides.

* ``sharpness`` – variance of the Laplacian of the grey image scaled to a 512-px longer side
  (Pech-Pacheco et al. 2000); low means blurry (``min_scores: {score_sharpness: t}``).
* ``overexposed`` / ``underexposed`` – share of pixels whose luma is >= 250 / <= 5
  (``max_scores``; reason ``exposure``).
* ``aesthetic`` – the LAION aesthetic-predictor shape: a stack of linear layers
  (``dims = [d, 1024, 128, 64, 16, 1]`` in the original) on L2-normalised CLIP image embeddings,
  loaded from a local folder holding a transformers ``CLIPModel`` and ``aesthetic_head.safetensors``
  + ``aesthetic_head.json``. Writes ``score_aesthetic``, which the dedup representative priority
  already prefers. :func:`save_aesthetic_head` writes a (random-init or trained) head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from diffkit.curate.plugins import CLIPEmbedder, Plugin, _dir_revision, _require_path


def _luma(im, max_side: int | None = None) -> np.ndarray:
    g = im.convert("L")
    if max_side and max(g.size) != max_side:
        s = max_side / max(g.size)
        g = g.resize((max(1, round(g.size[0] * s)), max(1, round(g.size[1] * s))))
    return np.asarray(g, np.float32)


def laplacian_variance(gray: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian over the interior pixels."""
    lap = gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:] - 4 * gray[1:-1, 1:-1]
    return float(lap.var()) if lap.size else 0.0


class SharpnessScorer(Plugin):
    """Variance of the Laplacian (no model); higher is sharper."""

    name = "sharpness"

    def score_images(self, images) -> np.ndarray:
        return np.asarray([laplacian_variance(_luma(im, 512)) for im in images], np.float32)


class OverexposedScorer(Plugin):
    """Share of pixels with luma >= 250 (no model)."""

    name = "overexposed"

    def score_images(self, images) -> np.ndarray:
        return np.asarray([(_luma(im) >= 250).mean() for im in images], np.float32)


class UnderexposedScorer(Plugin):
    """Share of pixels with luma <= 5 (no model)."""

    name = "underexposed"

    def score_images(self, images) -> np.ndarray:
        return np.asarray([(_luma(im) <= 5).mean() for im in images], np.float32)


def save_aesthetic_head(folder: str | Path, dims: list[int], seed: int = 0, weights=None) -> Path:
    """Write ``aesthetic_head.json`` + ``aesthetic_head.safetensors`` into ``folder``: the given
    ``weights`` ({"<i>.weight", "<i>.bias"} arrays), or a seeded random init (tests)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights is None:
        rng = np.random.default_rng(seed)
        weights = {}
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            weights[f"{i}.weight"] = (rng.normal(size=(b, a)) / np.sqrt(a)).astype(np.float32)
            weights[f"{i}.bias"] = np.zeros(b, np.float32)
    save_file(dict(weights), str(folder / "aesthetic_head.safetensors"))
    (folder / "aesthetic_head.json").write_text(json.dumps({"dims": list(dims)}))
    return folder


class AestheticScorer(Plugin):
    """LAION-style aesthetic predictor: linear stack on L2-normalised CLIP image embeddings."""

    name = "aesthetic"
    requires_weights = True

    def __init__(self, path: str = "", device: str = "cpu") -> None:
        super().__init__(_require_path(path, "AestheticScorer"), device)
        if not (Path(path) / "aesthetic_head.safetensors").is_file():
            raise ValueError(f"AestheticScorer: {path!r} has no aesthetic_head.safetensors")

    def revision(self) -> str:
        return _dir_revision(self.path)

    def setup(self) -> None:
        from safetensors.numpy import load_file

        self.clip = CLIPEmbedder(self.path, self.device)
        self.clip.setup()
        dims = json.loads((Path(self.path) / "aesthetic_head.json").read_text())["dims"]
        w = load_file(str(Path(self.path) / "aesthetic_head.safetensors"))
        self.layers = [(w[f"{i}.weight"], w[f"{i}.bias"]) for i in range(len(dims) - 1)]
        if self.layers[0][0].shape[1] != self.clip.dim:
            raise ValueError(
                f"aesthetic head expects {self.layers[0][0].shape[1]}-d embeddings, "
                f"the CLIP model gives {self.clip.dim}"
            )

    def score_embeddings(self, emb: np.ndarray) -> np.ndarray:
        x = np.asarray(emb, np.float32)
        for wt, b in self.layers:  # the LAION predictor has no activations between layers
            x = x @ wt.T + b
        return x[:, 0]

    def score_images(self, images) -> np.ndarray:
        return self.score_embeddings(self.clip.embed_images(images)).astype(np.float32)


SCORERS = {
    c.name: c for c in (SharpnessScorer, OverexposedScorer, UnderexposedScorer, AestheticScorer)
}
