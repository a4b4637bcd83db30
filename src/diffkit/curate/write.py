"""Writers (stage 11): Parquet ``kept/`` and ``dropped/`` datasets, size-capped WebDataset tars
(``webdataset.ShardWriter``), a manifest and a dataset card (``README.md``).

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
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from diffkit.core.io import atomic_write_bytes, atomic_write_json, sha256_file
from diffkit.curate.images import image_bytes
from diffkit.curate.schema import PIPELINE_VERSION, alive, pa, require, set_column, vectors
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
        webdataset: Write size-capped ``wds/shard-NNNNNN.tar`` (``webdataset.ShardWriter``)
            with ``{key}.<ext>`` original bytes and ``{key}.json`` metadata of the kept rows.
        embeddings_in_tar: Also store ``{key}.npy`` image embeddings in the tars.
        faiss_index: Write ``index.faiss`` + ``index_ids.json`` over kept image embeddings.
        ivf_min_rows: Use IVF-PQ instead of a flat index from this many kept rows.
        wds_max_bytes: A WebDataset shard is closed once it holds this many bytes of members.
        wds_max_count: ... or this many samples.
    """

    parquet: bool = True
    compression: Literal["zstd", "snappy", "none"] = "zstd"
    webdataset: bool = True
    embeddings_in_tar: bool = False
    faiss_index: bool = False
    ivf_min_rows: int = 100_000
    wds_max_bytes: int = 1_000_000_000
    wds_max_count: int = 100_000

    def __post_init__(self):
        if self.wds_max_bytes < 1 or self.wds_max_count < 1:
            raise ValueError(
                f"wds_max_bytes and wds_max_count must be >= 1, got "
                f"{self.wds_max_bytes}, {self.wds_max_count}"
            )
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


class Write(Stage):
    """The sink: per shard it writes ``kept/part-<shard>.parquet`` and
    ``dropped/part-<shard>.parquet``; :meth:`finalize` writes the size-capped WebDataset shards,
    the manifest and the FAISS index."""

    name = "write"
    kind = "sink"

    def __init__(self, config: WriteConfig | None = None) -> None:
        super().__init__(config or WriteConfig())
        self.out_dir: Path | None = None

    @staticmethod
    def _prepare(table, fingerprint: str, dup_clusters: str | None):
        """Output rows of one shard: dup_cluster joined, provenance added, internal columns
        dropped. Returns (table, row indices of the kept rows)."""
        if dup_clusters:
            table = _join_dup_cluster(table, dup_clusters)
        n = table.num_rows
        table = table.drop_columns([x for x in INTERNAL_ONLY if x in table.column_names])
        table = set_column(table, "config_fingerprint", [fingerprint] * n, pa().string())
        table = set_column(table, "pipeline_version", [PIPELINE_VERSION] * n, pa().string())
        return table, np.flatnonzero(alive(table))

    def write_shard(
        self, table, shard: str, out_dir: Path, fingerprint: str, dup_clusters: str | None = None
    ) -> dict:
        """``kept/part-<shard>.parquet`` and ``dropped/part-<shard>.parquet``."""
        c = self.config
        table, kept_idx = self._prepare(table, fingerprint, dup_clusters)
        keep = np.zeros(table.num_rows, bool)
        keep[kept_idx] = True
        files = {}
        if c.parquet:
            for name, m in (("kept", keep), ("dropped", ~keep)):
                t = table.filter(pa().array(m))
                p = out_dir / name / f"part-{shard}.parquet"
                atomic_write_bytes(p, _parquet_bytes(t, c.compression))
                files[str(p.relative_to(out_dir))] = t.num_rows
        return files

    def write_webdataset(
        self, out_dir: Path, inputs: list[str], fingerprint: str, dup_clusters: str | None = None
    ) -> dict:
        """Size-capped WebDataset shards of the kept rows with ``webdataset.ShardWriter``:
        ``wds/shard-NNNNNN.tar`` with ``{key}.<ext>`` (original bytes, read by reference),
        ``{key}.json`` (every output column) and optionally ``{key}.npy``. A shard is closed
        once it holds ``wds_max_bytes`` (so it exceeds the cap by at most one sample) or
        ``wds_max_count`` samples. Members are sorted, mtime 0, owner '' (byte-deterministic);
        each tar is written as ``*.tar.tmp``, fsync'd and renamed. Returns {path: rows}."""
        wds = require("webdataset", "the WebDataset writer")
        c = self.config
        d = out_dir / "wds"
        d.mkdir(parents=True, exist_ok=True)
        for old in list(d.glob("*.tar")) + list(d.glob("*.tmp")):
            old.unlink()
        files: dict[str, int] = {}
        streams: dict[str, object] = {}

        def opener(fname):
            streams[fname] = open(fname + ".tmp", "wb")  # noqa: SIM115 - closed in post()
            return streams[fname]

        def post(fname):
            f = streams.pop(fname)
            f.flush()
            os.fsync(f.fileno())
            f.close()
            os.replace(fname + ".tmp", fname)

        import pyarrow.parquet as pq

        writer = wds.ShardWriter(
            str(d / "shard-%06d.tar"), maxcount=c.wds_max_count, maxsize=c.wds_max_bytes,
            opener=opener, post=post, verbose=0, mtime=0, user="", group="", mode=0o644,
            encoder=False,
        )  # fmt: skip
        try:
            for in_path in inputs:
                full = pq.read_table(in_path)
                table, kept_idx = self._prepare(full, fingerprint, dup_clusters)
                kept = table.take(pa().array(kept_idx, pa().int64()))
                emb_col = _emb_column(kept)
                rows = kept.to_pylist()
                images = image_bytes(full, kept_idx)
                embs = vectors(kept.column(emb_col)) if (emb_col and c.embeddings_in_tar) else None  # fmt: skip
                for j, (row, img) in enumerate(zip(rows, images)):
                    key = row["row_id"]
                    if img is None:
                        raise OSError(f"image of row {key} is no longer readable")
                    meta = {
                        k: (v.hex() if isinstance(v, bytes) else v)
                        for k, v in row.items()
                        if not k.startswith("emb_") or k in ("emb_cluster", "emb_nn_sim")
                    }
                    sample = {
                        "__key__": key,
                        _EXT.get(row.get("mime"), "bin"): img,
                        "json": json.dumps(meta, sort_keys=True, default=str).encode(),
                    }
                    if embs is not None:
                        b = io.BytesIO()
                        np.save(b, np.asarray(embs[j], np.float16))
                        sample["npy"] = b.getvalue()
                    writer.write(sample)
                    rel = str(Path(writer.fname).relative_to(out_dir))
                    files[rel] = files.get(rel, 0) + 1
        finally:
            writer.close()
        return files

    def finalize(
        self,
        out_dir: Path,
        shard_files: list[dict],
        fingerprint: str,
        n_in: int,
        inputs: list[str] = (),
        dup_clusters: str | None = None,
    ) -> Path:
        """Write the WebDataset shards, the optional FAISS index and ``manifest.json`` (sorted;
        no timestamps)."""
        import pyarrow.parquet as pq

        shard_files = list(shard_files)
        if self.config.webdataset:
            shard_files.append(self.write_webdataset(out_dir, inputs, fingerprint, dup_clusters))

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
                x = vectors(t.column(col))
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


def write_card(out_dir: str | Path, summary: dict) -> Path:
    """``README.md`` dataset card of a finished run: the funnel per stage, drop reasons, the
    licence mix and resolution of the kept rows, duplicate clusters, the columns, and how to
    load the outputs (``datasets`` Parquet loader, ``webdataset``)."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    man = json.loads((out / "manifest.json").read_text())

    def read(folder, cols):
        parts = sorted((out / folder).glob("*.parquet"))
        names = set(pq.read_schema(parts[0]).names) if parts else set()
        if not parts:
            return None
        return pa().concat_tables(
            [pq.read_table(p, columns=[c for c in cols if c in names]) for p in parts]
        )

    kept = read("kept", ["license_spdx", "license", "width", "height", "dup_cluster", "row_id"])
    dropped = read("dropped", ["drop_reason", "dup_cluster"])
    lines = [
        "# Curated image-text dataset",
        "",
        f"Curated with `diffkit curate` ({man['pipeline_version']}, config fingerprint "
        f"`{man['config_fingerprint']}`): **{summary['rows_in']}** rows in, "
        f"**{summary['kept']}** kept, **{summary['dropped']}** dropped "
        "(every dropped row is kept in `dropped/` with its reason).",
        "",
        "## Funnel",
        "",
        "| stage | in | kept | dropped | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for st in summary["stages"]:
        reasons = ", ".join(f"{k} {v}" for k, v in st["dropped_by_reason"].items()) or "-"
        lines.append(
            f"| {st['stage']} | {st['rows_in']} | {st['kept']} | {st['dropped']} | {reasons} |"
        )

    def counts(table, col, title, head):
        if table is None or col not in table.column_names or not table.num_rows:
            return []
        from collections import Counter

        c = Counter(v if v not in (None, "") else "(none)" for v in table.column(col).to_pylist())
        rows = [f"| {k} | {v} |" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]
        return ["", f"## {title}", "", f"| {head} | rows |", "|---|---:|", *rows]

    lines += counts(dropped, "drop_reason", "Drop reasons", "reason")
    lic = "license_spdx" if kept is not None and "license_spdx" in kept.column_names else "license"
    lines += counts(kept, lic, "Licence mix (kept rows)", "licence")
    if kept is not None and kept.num_rows and "width" in kept.column_names:
        w = np.asarray(kept.column("width").to_numpy(), float)
        h = np.asarray(kept.column("height").to_numpy(), float)
        ms, ar = np.minimum(w, h), np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)
        q = lambda x: " / ".join(f"{v:.0f}" if v >= 10 else f"{v:.2f}" for v in np.percentile(x, [5, 50, 95]))  # noqa: E731 # fmt: skip
        lines += ["", "## Resolution (kept rows; 5th / 50th / 95th percentile)", "",
                  f"- shorter side: {q(ms)} px", f"- aspect ratio (long / short): {q(ar)}"]  # fmt: skip
    clusters = [
        t.column("dup_cluster").to_pylist()
        for t in (kept, dropped)
        if t is not None and "dup_cluster" in t.column_names
    ]
    labels = [v for col in clusters for v in col if v is not None]
    lines += [
        "",
        "## Duplicates",
        "",
        f"{len(set(labels))} duplicate clusters covering {len(labels)} rows (`dup_cluster`; "
        "exact and near duplicates of one image share a label, singletons have none).",
    ]
    wds = sorted(e["path"] for e in man["files"] if e["path"].startswith("wds/"))
    schema = pq.read_schema(sorted((out / "kept").glob("*.parquet"))[0]) if kept is not None else None  # fmt: skip
    if schema is not None:
        lines += ["", "## Columns", "", ", ".join(f"`{n}`" for n in schema.names)]
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("parquet", data_files={"train": "kept/*.parquet"})',
        "```",
    ]
    if wds:
        lines += [
            "",
            f"WebDataset: {len(wds)} shard(s), `wds/shard-000000.tar` ... (`<key>.<ext>` image, "
            "`<key>.json` metadata):",
            "",
            "```python",
            "import glob, webdataset as wds",
            'ds = wds.WebDataset(sorted(glob.glob("wds/*.tar")), shardshuffle=False)',
            "```",
        ]
    p = out / "README.md"
    atomic_write_bytes(p, ("\n".join(lines) + "\n").encode())
    return p
