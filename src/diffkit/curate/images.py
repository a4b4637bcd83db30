"""Image bytes by reference: stored once, read where needed (issue 19 item 3).

After ingest a row carries no image bytes, only ``image_ref``: ``file:<path>`` for an image that
is a file (read in place, never copied) or ``blob:<input shard>#<row>`` for bytes that arrived
inline (Parquet/WebDataset input), which the pipeline stores exactly once, in its input shard.
Model stages and the writers resolve references here; a table that still has an ``image``
column (a stage used on its own) is read from that column.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

_BLOBS: OrderedDict[str, list] = OrderedDict()
_MAX_CACHED = 4


def blob_ref(shard_path: str | Path, row: int) -> str:
    return f"blob:{shard_path}#{row}"


def file_ref(path: str | Path) -> str:
    return f"file:{path}"


def _blob(path: str) -> list:
    if path not in _BLOBS:
        import pyarrow.parquet as pq

        _BLOBS[path] = pq.read_table(path, columns=["image"]).column("image").to_pylist()
        while len(_BLOBS) > _MAX_CACHED:
            _BLOBS.popitem(last=False)
    _BLOBS.move_to_end(path)
    return _BLOBS[path]


def read_ref(ref: str | None) -> bytes | None:
    """The bytes an ``image_ref`` points to (None for a null reference)."""
    if not ref:
        return None
    if ref.startswith("file:"):
        return Path(ref[5:]).read_bytes()
    if ref.startswith("blob:"):
        path, _, row = ref[5:].rpartition("#")
        return _blob(path)[int(row)]
    raise ValueError(f"unknown image reference {ref!r}")


def image_bytes(table, rows=None) -> list:
    """Image bytes of ``rows`` (indices; default all) of a stage table, from ``image`` if the
    table has that column, else from ``image_ref``. Unreadable rows give None."""
    idx = range(table.num_rows) if rows is None else rows
    if "image" in table.column_names:
        col = table.column("image")
        return [col[int(i)].as_py() for i in idx]
    refs = table.column("image_ref")
    out = []
    for i in idx:
        try:
            out.append(read_ref(refs[int(i)].as_py()))
        except OSError:
            out.append(None)
    return out
