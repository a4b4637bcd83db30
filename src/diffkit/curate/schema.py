"""The record schema, stable ids and tombstone helpers shared by every curation stage.

One row per (image, text) pair; a dropped row is never deleted, it becomes a tombstone with
``status="drop"``, ``drop_stage`` and ``drop_reason`` (MONET, arXiv 2605.21272, keeps a raw -> final
funnel; we keep the rows so ``rows in == kept + dropped`` holds at every stage).
"""

from __future__ import annotations

import hashlib
from typing import Any

PIPELINE_VERSION = "diffkit-curate/1"
INSTALL_HINT = "pip install 'diffkit[curate]'"

# Input columns: `source_key` is required; either `image` (bytes) or `uri` must be present.
INPUT_COLUMNS = ("source", "source_key", "url", "uri", "license", "license_url", "alt_text")

# Reason codes (a row error is recorded as "error:<stage>:<ExceptionName>").
REASONS = (
    "decode_error",
    "truncated",
    "decompression_bomb",
    "zero_bytes",
    "wrong_mime",
    "min_side",
    "min_area",
    "aspect",
    "min_bytes",
    "low_entropy",
    "near_uniform",
    "alt_text_rule",
    "exact_dup",
    "blocked_domain",
    "license",
    "takedown",
    "phash_dup",
    "emb_dup",
    "nsfw",
    "unsafe_text",
    "caption_failed",
)


def pa():
    """pyarrow, imported lazily with an install hint."""
    try:
        import pyarrow
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"diffkit.curate needs pyarrow: {INSTALL_HINT}") from e
    return pyarrow


def require(module: str, what: str):
    """Import an optional dependency or raise an ImportError naming the extra to install."""
    import importlib
    import logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{what} needs the `{module}` package: {INSTALL_HINT}") from e


def stable_id(source: str, source_key: str) -> str:
    """A stable 128-bit id of (source, source_key) (blake2b-128; the spec names xxh128, which is not
    installed here: any stable 128-bit hash of the pair serves the same purpose)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(source.encode("utf-8", "surrogateescape"))
    h.update(b"\x00")
    h.update(source_key.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def vectors(column, dtype="float32"):
    """An Arrow list / fixed-size-list column of equal-length vectors as an ``(n, d)`` numpy
    array, through the flat values buffer (no per-row Python objects: ``to_pylist`` was ~150x
    slower at 10^5 x 512). Null rows are an error."""
    import numpy as np

    P = pa()
    col = column.combine_chunks() if isinstance(column, P.ChunkedArray) else column
    n = len(col)
    if col.null_count:
        raise ValueError(f"vectors: {col.null_count} null row(s) in an embedding column")
    if n == 0:
        return np.zeros((0, 0), dtype)
    if P.types.is_fixed_size_list(col.type):
        d = col.type.list_size
        flat = col.flatten()
    else:
        lens = np.asarray(col.value_lengths().to_numpy(zero_copy_only=False))
        d = int(lens[0])
        if (lens != d).any():
            raise ValueError("vectors: rows of different lengths in an embedding column")
        flat = col.flatten()
    return np.asarray(flat.to_numpy(zero_copy_only=False), dtype).reshape(n, d)


def alive(table) -> Any:
    """Boolean numpy mask of rows still kept."""
    import numpy as np

    return np.asarray(table.column("status").to_numpy(zero_copy_only=False) == "keep")


def set_column(table, name: str, values, type=None):
    """Replace or append column ``name``."""
    arr = (
        values if isinstance(values, (pa().Array, pa().ChunkedArray)) else pa().array(values, type)
    )
    i = table.schema.get_field_index(name)
    if i >= 0:
        return table.set_column(i, name, arr)
    return table.append_column(name, arr)


def drop_rows(table, mask, stage: str, reasons) -> Any:
    """Tombstone rows where ``mask`` is true and the row is still kept.

    ``reasons`` is one string or a per-row sequence. Already-dropped rows keep their first reason.
    """
    import numpy as np

    mask = np.asarray(mask, bool) & alive(table)
    if not mask.any():
        return table
    n = table.num_rows
    reasons = [reasons] * n if isinstance(reasons, str) else list(reasons)
    status = table.column("status").to_pylist()
    dstage = table.column("drop_stage").to_pylist()
    dreason = table.column("drop_reason").to_pylist()
    for i in np.flatnonzero(mask):
        status[i], dstage[i], dreason[i] = "drop", stage, reasons[i]
    table = set_column(table, "status", status, pa().string())
    table = set_column(table, "drop_stage", dstage, pa().string())
    return set_column(table, "drop_reason", dreason, pa().string())


def is_error_reason(reason: str | None) -> bool:
    return bool(reason) and reason.startswith("error:")


def error_reason(stage: str, exc: BaseException) -> str:
    return f"error:{stage}:{type(exc).__name__}"


# Heavy per-row columns (the NCC thumbnail, 3 KB in colour; the crop-window hashes) that only
# the near-duplicate reduce reads: ingest writes them and its shards are their only copy; every
# later step drops them from its input (drop_side, in the executor) and a global stage that lists
# them in ``reads_side`` gets them joined into its key tables before the reduce (join_side), so
# work/ holds one copy, not one per stage.
SIDE_COLUMNS = ("thumb", "phash_crops", "dhash_crops")


def drop_side(table):
    """``table`` without the store-once side columns."""
    return table.drop_columns([c for c in SIDE_COLUMNS if c in table.column_names])


def join_side(table, columns, ingest_shard):
    """``table`` (with ``row_id``) plus the side ``columns`` read from ``ingest_shard`` (the
    ingest stage's output file of the same shard), matched by ``row_id``; columns the table
    already has, or ingest did not write, are left as they are."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    have = set(pq.read_schema(ingest_shard).names)
    want = [c for c in columns if c in SIDE_COLUMNS and c in have and c not in table.column_names]
    if not want:
        return table
    side = pq.read_table(ingest_shard, columns=["row_id", *want])
    pos = pc.index_in(table.column("row_id"), value_set=side.column("row_id"))
    if pos.null_count:
        raise RuntimeError(f"{ingest_shard}: {pos.null_count} rows are missing from ingest's shard")
    for c in want:
        table = table.append_column(c, side.column(c).take(pos))
    return table
