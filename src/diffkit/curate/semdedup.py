"""Embedding near-dup (stage 8), SemDeDup-style (Abbas et al. 2023, arXiv 2303.09540).

Fit k-means (faiss, cosine via L2-normalised vectors) on a ``fit_fraction`` sample, assign every
row to its nearest centroid (and optionally its second nearest), then walk rows in representative
priority order: a row is kept unless an already-kept row of its cluster(s) has cosine >= tau.
Every row gets ``emb_cluster`` and ``emb_nn_sim`` (max cosine to any other row of its cluster,
MONET's ``sscd_nn`` analogue), so users can re-threshold later without recomputing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffkit.curate.dedup import _apply_decisions, _key_table, _sorted_keys
from diffkit.curate.schema import pa, require, vectors
from diffkit.curate.stage import Stage


@dataclass(frozen=True, kw_only=True)
class SemDedupConfig:
    """Semantic (embedding) near-duplicate removal.

    Attributes:
        column: Embedding column to use ('' = the first ``emb_*`` image column).
        threshold: Cosine tau at or above which a row is a duplicate of a kept row (1 - epsilon
            in SemDeDup; 0.5-0.75 for copy-detection embeddings like SSCD).
        n_clusters: k-means clusters; 0 = auto, min(max(1000, N/50k), N/40), at least 1 (N/40
            keeps >= 39 points per centroid, faiss's minimum for a stable fit).
        fit_fraction: Fraction of rows used to fit k-means (all rows are assigned).
        neighbor_centroid: Also compare with kept rows of the second-nearest cluster.
        niter: k-means iterations.
        seed: k-means and sampling seed.
        source_priority: Sources in order of preference for the representative.
    """

    column: str = ""
    threshold: float = 0.95
    n_clusters: int = 0
    fit_fraction: float = 1.0
    neighbor_centroid: bool = True
    niter: int = 20
    seed: int = 0
    source_priority: tuple[str, ...] = ()

    def __post_init__(self):
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {self.threshold}")
        if self.n_clusters < 0:
            raise ValueError(f"n_clusters must be >= 0, got {self.n_clusters}")
        if not 0.0 < self.fit_fraction <= 1.0:
            raise ValueError(f"fit_fraction must be in (0, 1], got {self.fit_fraction}")


def semdedup(emb: np.ndarray, cfg: SemDedupConfig):
    """Rows assumed sorted by priority. Returns (cluster, nn_sim, drop, dup_of) arrays, where
    ``dup_of`` is the index of the kept row a dropped row duplicates (-1 if kept)."""
    faiss = require("faiss", "embedding dedup")
    faiss.omp_set_num_threads(1)  # deterministic k-means
    x = np.ascontiguousarray(emb, np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, d = x.shape
    if n == 0:
        return (
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, bool),
            np.zeros(0, np.int64),
        )
    k = cfg.n_clusters or min(max(1000, n // 50_000), max(1, n // 40))
    k = max(1, min(k, n))
    rng = np.random.default_rng(cfg.seed)
    m = max(k, int(round(cfg.fit_fraction * n)))
    sample = x[np.sort(rng.choice(n, size=m, replace=False))] if m < n else x
    if k > 1:
        km = faiss.Kmeans(d, k, niter=cfg.niter, seed=cfg.seed, spherical=True, verbose=False)
        km.train(sample)
        _, assign = km.index.search(x, min(2, k))
    else:
        assign = np.zeros((n, 1), np.int64)
    primary = assign[:, 0].astype(np.int64)
    second = (
        assign[:, 1].astype(np.int64) if assign.shape[1] > 1 and cfg.neighbor_centroid else None
    )
    nn = np.full(n, -1.0, np.float32)
    for c in np.unique(primary):
        idx = np.flatnonzero(primary == c)
        if len(idx) > 1:
            s = x[idx] @ x[idx].T
            np.fill_diagonal(s, -np.inf)
            nn[idx] = s.max(1)
    kept: dict[int, list[int]] = {}
    drop = np.zeros(n, bool)
    dup_of = np.full(n, -1, np.int64)
    for i in range(n):
        cands = kept.get(int(primary[i]), [])
        if second is not None:
            cands = cands + kept.get(int(second[i]), [])
        if cands:
            sims = x[cands] @ x[i]
            j = int(np.argmax(sims))
            if float(sims[j]) >= cfg.threshold:
                drop[i], dup_of[i] = True, cands[j]
                continue
        kept.setdefault(int(primary[i]), []).append(i)
    return primary, nn, drop, dup_of


class SemDedup(Stage):
    name = "emb_dedup"
    kind = "global"

    def __init__(self, config: SemDedupConfig | None = None) -> None:
        super().__init__(config or SemDedupConfig())

    def _column(self, table) -> str:
        if self.config.column:
            if self.config.column not in table.schema.names:
                raise ValueError(f"emb_dedup column {self.config.column!r} not in the data")
            return self.config.column
        cols = [
            c
            for c in table.schema.names
            if c.startswith("emb_")
            and not c.startswith("emb_text_")
            and c not in ("emb_cluster", "emb_nn_sim")
        ]
        if not cols:
            raise ValueError("emb_dedup needs an embedding column: add the `embed` stage before it")
        return cols[0]

    def emit_keys(self, table):
        col = self._column(table)
        keys = _key_table(table, [col], self.config.source_priority)[0]
        return keys.rename_columns(["emb" if c == col else c for c in keys.column_names])

    def reduce(self, key_tables):
        keys = _sorted_keys(key_tables)
        ids = keys.column("row_id").to_pylist()
        if not ids:
            return pa().table(
                {
                    "row_id": pa().array([], pa().string()),
                    "emb_cluster": pa().array([], pa().int64()),
                    "emb_nn_sim": pa().array([], pa().float32()),
                    "emb_dup_of": pa().array([], pa().string()),
                    "drop": pa().array([], pa().bool_()),
                }
            )
        emb = vectors(keys.column("emb"))
        cluster, nn, drop, dup_of = semdedup(emb, self.config)
        dup = [ids[j] if j >= 0 else None for j in dup_of]
        return pa().table(
            {
                "row_id": ids,
                "emb_cluster": cluster,
                "emb_nn_sim": nn,
                "emb_dup_of": pa().array(dup, pa().string()),
                "drop": drop,
            }
        )

    def apply(self, table, decisions):
        return _apply_decisions(
            table,
            decisions,
            self.name,
            "emb_dup",
            {
                "emb_cluster": pa().int64(),
                "emb_nn_sim": pa().float32(),
                "emb_dup_of": pa().string(),
            },
        )
