"""Writers (stage 11): Parquet ``kept/`` and ``dropped/`` datasets, WebDataset tars and a manifest.

Every file is written to a temporary name, fsync'd and renamed (tars as ``*.tar.tmp``), so a kill
leaves no torn output. Tars are byte-deterministic (sorted members, mtime 0, uid 0), which is what
makes a resumed run's manifest byte-identical to an uninterrupted one. The manifest lists every
output file with its SHA-256 and row count. An optional FAISS index over the kept rows' image
embeddings mirrors MONET's retrieval index (flat inner product below ``ivf_min_rows`` rows,
IVF-PQ above).
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from diffkit.core.io import atomic_write_bytes, atomic_write_json, sha256_file
from diffkit.curate.images import image_bytes
from diffkit.curate.schema import PIPELINE_VERSION, alive, pa, require, set_column
from diffkit.curate.stage import Stage

INTERNAL_ONLY = ("image", "image_ref")  # never written: bytes go to the tars only
_EXT = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/gif": "gif"}
META_SKIP = ("image", "caption_meta")


@dataclass(frozen=True, kw_only=True)
class WriteConfig:
    """Outputs.

    Attributes:
        parquet: Write ``kept/`` and ``dropped/`` Parquet datasets (all columns except ``image``).
        compression: Parquet codec (``zstd``, ``snappy``, ``none``).
        webdataset: Write ``wds/shard-*.tar`` with ``{key}.<ext>`` original bytes and
            ``{key}.json`` captions + metadata for the kept rows.
        embeddings_in_tar: Also store ``{key}.npy`` image embeddings in the tars.
        faiss_index: Write ``index.faiss`` + ``index_ids.json`` over kept image embeddings.
        ivf_min_rows: Use IVF-PQ instead of a flat index from this many kept rows.
    """

    parquet: bool = True
    compression: Literal["zstd", "snappy", "none"] = "zstd"
    webdataset: bool = True
    embeddings_in_tar: bool = False
    faiss_index: bool = False
    ivf_min_rows: int = 100_000

    def __post_init__(self):
        if self.compression not in ("zstd", "snappy", "none"):
            raise ValueError(f"compression={self.compression!r}; options: zstd, snappy, none")


def _parquet_bytes(table, compression: str) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression=None if compression == "none" else compression)
    return buf.getvalue()


def _emb_column(table) -> str | None:
    for c in table.schema.names:
        if (
            c.startswith("emb_")
            and not c.startswith("emb_text_")
            and c not in ("emb_cluster", "emb_nn_sim")
        ):
            return c
    return None


def _join_dup_cluster(table, path: str):
    import pyarrow.parquet as pq

    d = pq.read_table(path)
    lab = dict(zip(d.column("row_id").to_pylist(), d.column("dup_cluster").to_pylist()))
    vals = [lab.get(r) for r in table.column("row_id").to_pylist()]
    return set_column(table, "dup_cluster", vals, pa().string())


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """Deterministic tar written as ``path.tmp``, fsync'd, then renamed."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    tmp = path.with_name(path.name + ".tmp")
    atomic_write_bytes(tmp, buf.getvalue())
    tmp.replace(path)
    return path


class Write(Stage):
    """The sink: per shard it writes ``kept/part-<shard>.parquet``, ``dropped/part-<shard>.parquet``
    and ``wds/shard-<shard>.tar``; :meth:`finalize` writes the manifest and the FAISS index."""

    name = "write"
    kind = "sink"

    def __init__(self, config: WriteConfig | None = None) -> None:
        super().__init__(config or WriteConfig())
        self.out_dir: Path | None = None

    def write_shard(
        self, table, shard: str, out_dir: Path, fingerprint: str, dup_clusters: str | None = None
    ) -> dict:
        c = self.config
        if dup_clusters:
            table = _join_dup_cluster(table, dup_clusters)
        images = table  # image bytes are read by reference, only for the tars
        table = table.drop_columns([x for x in INTERNAL_ONLY if x in table.column_names])
        table = set_column(
            table, "config_fingerprint", [fingerprint] * table.num_rows, pa().string()
        )
        table = set_column(
            table, "pipeline_version", [PIPELINE_VERSION] * table.num_rows, pa().string()
        )
        keep = alive(table)
        kept_idx = np.flatnonzero(keep)
        kept = table.filter(pa().array(keep))
        dropped = table.filter(pa().array(~keep))
        files = {}
        if c.parquet:
            for name, t in (("kept", kept), ("dropped", dropped)):
                p = out_dir / name / f"part-{shard}.parquet"
                atomic_write_bytes(p, _parquet_bytes(t, c.compression))
                files[str(p.relative_to(out_dir))] = t.num_rows
        if c.webdataset:
            members = []
            emb_col = _emb_column(kept)
            rows = kept.to_pylist()
            images = image_bytes(images, kept_idx)
            embs = kept.column(emb_col).to_pylist() if (emb_col and c.embeddings_in_tar) else None
            for j, (row, img) in enumerate(zip(rows, images)):
                key = row["row_id"]
                if img is None:
                    raise OSError(f"image of row {key} is no longer readable")
                meta = {
                    k: (v.hex() if isinstance(v, bytes) else v)
                    for k, v in row.items()
                    if not k.startswith("emb_") or k in ("emb_cluster", "emb_nn_sim")
                }
                members.append((f"{key}.{_EXT.get(row.get('mime'), 'bin')}", img))
                members.append(
                    (f"{key}.json", json.dumps(meta, sort_keys=True, default=str).encode())
                )
                if embs is not None:
                    b = io.BytesIO()
                    np.save(b, np.asarray(embs[j], np.float16))
                    members.append((f"{key}.npy", b.getvalue()))
            p = out_dir / "wds" / f"shard-{shard}.tar"
            write_tar(p, members)
            files[str(p.relative_to(out_dir))] = kept.num_rows
        return files

    def finalize(self, out_dir: Path, shard_files: list[dict], fingerprint: str, n_in: int) -> Path:
        """Write ``manifest.json`` (sorted; no timestamps) and the optional FAISS index."""
        import pyarrow.parquet as pq

        entries, kept_n, dropped_n = [], 0, 0
        for files in shard_files:
            for rel, rows in files.items():
                entries.append({"path": rel, "rows": rows, "sha256": sha256_file(out_dir / rel)})
                kept_n += rows if rel.startswith("kept/") else 0
                dropped_n += rows if rel.startswith("dropped/") else 0
        entries.sort(key=lambda e: e["path"])
        if self.config.faiss_index and self.config.parquet:
            faiss = require("faiss", "the FAISS index writer")
            parts = sorted((out_dir / "kept").glob("part-*.parquet"))
            t = pa().concat_tables([pq.read_table(p) for p in parts]) if parts else None
            col = _emb_column(t) if t is not None else None
            if col and t.num_rows:
                x = np.asarray(t.column(col).to_pylist(), np.float32)
                if len(x) >= self.config.ivf_min_rows:
                    nlist = int(4 * np.sqrt(len(x)))
                    index = faiss.index_factory(
                        x.shape[1],
                        f"IVF{nlist},PQ{max(1, x.shape[1] // 8)}",
                        faiss.METRIC_INNER_PRODUCT,
                    )
                    index.train(x)
                else:
                    index = faiss.IndexFlatIP(x.shape[1])
                index.add(x)
                atomic_write_bytes(out_dir / "index.faiss", faiss.serialize_index(index).tobytes())
                atomic_write_json(out_dir / "index_ids.json", t.column("row_id").to_pylist())
                for rel in ("index.faiss", "index_ids.json"):
                    entries.append(
                        {"path": rel, "rows": len(x), "sha256": sha256_file(out_dir / rel)}
                    )
        manifest = {
            "pipeline_version": PIPELINE_VERSION,
            "config_fingerprint": fingerprint,
            "rows_in": n_in,
            "kept": kept_n,
            "dropped": dropped_n,
            "files": entries,
        }
        return atomic_write_json(out_dir / "manifest.json", manifest)
