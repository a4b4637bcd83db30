"""Reading the input as users hold it: one Arrow table of rows, no image decoding.

Accepted inputs (spec (e) stage 1; issue 19 item 1):

* a folder of images (recursive, sorted), with ``<stem>.txt`` alt texts and an optional
  ``metadata.parquet`` / ``metadata.jsonl`` joined on a ``path`` (or ``uri``) column;
* a folder plus a metadata table (``InputConfig.metadata``, ``--metadata``): a JSONL, CSV or Parquet
  file whose ``path`` column is relative to the folder; only the listed rows are curated;
* a Parquet file, a JSONL or CSV file, or a folder of Parquet shards, with image bytes in an
  ``image`` column (binary, or a ``{bytes, path}`` struct as Hugging Face ``datasets`` writes it)
  or a ``path`` column relative to the table's folder;
* a WebDataset ``.tar`` or a folder of them (samples grouped by key; ``.json`` fields and text
  members become columns, ``.txt`` is the caption).

Default column names are ``path``, ``caption``, ``url``, ``license``, ``id`` and ``source``
(``uri`` and ``alt_text`` are accepted too); ``InputConfig.columns`` maps them to other names.
Every input column passes through to the outputs under its own name and type (a user column that
collides with a column the pipeline writes is renamed ``input_<name>`` with a warning). Rows that
cannot be read are not skipped: they carry an ``input_error`` (``missing_path``, ``missing_file``,
``broken_symlink``, ``no_extension``) that the ingest stage turns into a drop reason. Tables,
columns and files that are present but unused are logged as warnings.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from diffkit.curate.schema import pa, stable_id

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
TABLE_EXTS = (".parquet", ".jsonl", ".csv")
ROLES = ("path", "caption", "url", "license", "id", "source", "image")
# accepted names per role when InputConfig.columns does not name one (first match wins)
DEFAULT_NAMES = {
    "path": ("path", "uri"),
    "caption": ("caption", "alt_text"),
    "url": ("url",),
    "license": ("license",),
    "id": ("id", "source_key"),
    "source": ("source",),
    "image": ("image",),
}
# columns the reader itself produces; a user column of the same name that plays this role is
# consumed (it is the same data), any other user column of a reserved name is renamed
INTERNAL = (
    "row_id", "source", "source_key", "url", "uri", "license", "license_url", "alt_text",
    "alt_text_valid", "image", "input_error",
)  # fmt: skip
_ROLE_INTERNAL = {"url": "url", "license": "license", "source": "source", "caption": "alt_text",
                  "path": "uri", "id": "source_key", "image": "image"}  # fmt: skip
RESERVED = INTERNAL + (
    "image_ref", "status", "drop_stage", "drop_reason", "mime", "bytes_len", "width", "height",
    "sha256_bytes", "sha256_pixels", "phash", "dhash", "hash_entropy", "uniform_share", "phash_crops", "dhash_crops", "thumb", "exact_group", "domain",
    "license_spdx", "phash_cluster", "emb_cluster", "emb_nn_sim", "emb_dup_of",
    "is_representative", "dup_cluster", "config_fingerprint", "pipeline_version",
)  # fmt: skip
RESERVED_PREFIXES = ("score_", "emb_", "caption_")


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    """How to read the input.

    Attributes:
        metadata: A JSONL, CSV or Parquet table listing the rows; its ``path`` column is relative
            to the input folder ('' = none: every image in the folder is a row).
        columns: ``{role: column}`` overriding the default column names; roles: path, caption,
            url, license, id, source, image (e.g. ``{caption: text, path: file_name}``).
    """

    metadata: str = ""
    columns: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = sorted(set(self.columns) - set(ROLES))
        if unknown:
            raise ValueError(f"input.columns has unknown role(s) {unknown}; options: {ROLES}")
        for k, v in self.columns.items():
            if not isinstance(v, str) or not v:
                raise ValueError(f"input.columns.{k} must be a column name, got {v!r}")


# ------------------------------------------------------------------------------------ helpers
def _decode_text(v) -> tuple[str, bool]:
    if v is None:
        return "", True
    if isinstance(v, str):
        return v, True
    if not isinstance(v, (bytes, bytearray, memoryview)):
        return str(v), True
    try:
        return bytes(v).decode("utf-8"), True
    except UnicodeDecodeError:
        return bytes(v).decode("utf-8", errors="replace"), False


def _str(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", errors="replace")
    return str(v)


def read_table_file(path: Path):
    """A JSONL, CSV or Parquet file as an Arrow table (types as the file or the reader give)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if suffix == ".jsonl":
        import pyarrow.json as pj

        if path.stat().st_size == 0:
            return pa().table({})
        return pj.read_json(path)
    if suffix == ".csv":
        import pyarrow.csv as pc

        return pc.read_csv(path)
    raise ValueError(f"metadata table {path} must be .jsonl, .csv or .parquet")


def _file_error(p: Path) -> str | None:
    if p.is_symlink() and not p.exists():
        return "broken_symlink"
    if not p.is_file():
        return "missing_file"
    return None


class _Rows:
    """Internal columns as lists plus the passthrough table(s), assembled by :func:`_finish`."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {c: [] for c in INTERNAL if c != "row_id"}
        self.passthrough: list = []  # Arrow tables, one per input chunk, rows aligned

    def add(self, **kw) -> None:
        text, ok = _decode_text(kw.pop("alt_text", None))
        self.cols["alt_text"].append(text)
        self.cols["alt_text_valid"].append(ok)
        for c in ("source", "source_key", "url", "uri", "license", "license_url"):
            self.cols[c].append(_str(kw.pop(c, "")))
        self.cols["image"].append(kw.pop("image", None))
        self.cols["input_error"].append(kw.pop("input_error", None))
        if kw:  # pragma: no cover - programming error
            raise TypeError(f"unknown row fields {sorted(kw)}")

    @property
    def n(self) -> int:
        return len(self.cols["source"])


def _resolve_roles(names: list[str], cfg: InputConfig, where: str) -> dict[str, str]:
    """Role -> column name present in ``names``; a mapped column that is absent is an error."""
    roles = {}
    for role in ROLES:
        if role in cfg.columns:
            if cfg.columns[role] not in names:
                raise ValueError(
                    f"input.columns.{role}={cfg.columns[role]!r} is not a column of {where}; "
                    f"columns: {names}"
                )
            roles[role] = cfg.columns[role]
        else:
            hit = next((c for c in DEFAULT_NAMES[role] if c in names), None)
            if hit is not None:
                roles[role] = hit
    return roles


def _warn_missing_roles(roles: dict, names: list[str], where: str) -> None:
    for role in ("caption", "license"):
        if role not in roles:
            log.warning(
                "%s has no %s column (looked for %s); columns: %s. Map one with "
                "--column %s=NAME (input.columns.%s)",
                where, role, list(DEFAULT_NAMES[role]), names, role, role,
            )  # fmt: skip


def _passthrough(table, roles: dict[str, str]):
    """The user's columns to carry through: all of them except those that *are* internal
    columns (a ``url`` column used as the url); reserved names are renamed ``input_<name>``."""
    keep, names = [], []
    for c in table.column_names:
        role = next((r for r, col in roles.items() if col == c), None)
        if role == "image" or (role is not None and _ROLE_INTERNAL[role] == c):
            continue  # e.g. `url` as url, `alt_text` as caption: the internal column is this column
        if c in RESERVED or c.startswith(RESERVED_PREFIXES):
            log.warning("input column %r collides with a pipeline column: kept as 'input_%s'", c, c)
            names.append(f"input_{c}")
        else:
            names.append(c)
        keep.append(c)
    return table.select(keep).rename_columns(names)


def _image_bytes(v):
    """Bytes from a binary cell or a ``{bytes, path}`` struct (Hugging Face ``Image`` feature)."""
    if isinstance(v, dict):
        return v.get("bytes"), v.get("path")
    return v, None


def _rows_from_table(rows: _Rows, table, base: Path, cfg: InputConfig, source: str, where: str):
    """Append the rows of a metadata/input table; returns the set of resolved image paths."""
    names = table.column_names
    roles = _resolve_roles(names, cfg, where)
    if "path" not in roles and "image" not in roles:
        raise ValueError(
            f"{where} has neither image bytes nor a path column (looked for "
            f"{list(DEFAULT_NAMES['image'])} and {list(DEFAULT_NAMES['path'])}); columns: "
            f"{names}. Map one with --column path=NAME"
        )
    _warn_missing_roles(roles, names, where)
    get = {r: table.column(c).to_pylist() for r, c in roles.items() if r != "image"}
    images = table.column(roles["image"]).to_pylist() if "image" in roles else None
    n = table.num_rows
    ids = get.get("id")
    if ids is not None and len(set(map(_str, ids))) != n:
        dup = next(k for k, v in Counter(map(_str, ids)).items() if v > 1)
        raise ValueError(f"{where}: column {roles['id']!r} is not unique (e.g. {dup!r})")
    paths = get.get("path")
    seen: Counter = Counter()
    listed = set()
    for i in range(n):
        data, inner_path = _image_bytes(images[i]) if images is not None else (None, None)
        rel = paths[i] if paths is not None else inner_path
        err, uri = None, ""
        if data is None:
            if rel in (None, ""):
                err = "missing_path"
            else:
                p = Path(rel) if Path(rel).is_absolute() else base / rel
                uri = str(p)
                listed.add(p.resolve() if p.exists() else p)
                err = _file_error(p)
        if ids is not None:
            key = _str(ids[i])
        elif rel not in (None, ""):
            seen[rel] += 1
            key = rel if seen[rel] == 1 else f"{rel}#{seen[rel] - 1}"
        else:
            key = f"row{i}"
        rows.add(
            source=get["source"][i] if "source" in get else source, source_key=key,
            url=get.get("url", [""] * n)[i], uri=uri, license=get.get("license", [""] * n)[i],
            alt_text=get.get("caption", [None] * n)[i], image=data, input_error=err,
        )  # fmt: skip
    rows.passthrough.append(_passthrough(table, roles))
    return listed


def _list_folder(root: Path) -> tuple[list[Path], list[Path], list[Path], Counter]:
    """(images, extensionless files, broken symlinks, other suffixes) under ``root``."""
    images, noext, broken, other = [], [], [], Counter()
    for p in sorted(root.rglob("*")):
        if p.name.startswith("."):
            continue
        if p.is_symlink() and not p.exists():
            broken.append(p)
        elif not p.is_file():
            continue
        elif p.suffix.lower() in IMAGE_EXTS:
            images.append(p)
        elif p.suffix == "":
            noext.append(p)
        elif p.suffix.lower() not in (".txt",) + TABLE_EXTS:
            other[p.suffix.lower()] += 1
    return images, noext, broken, other


def _read_folder(root: Path, cfg: InputConfig) -> _Rows:
    rows = _Rows()
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in TABLE_EXTS)
    meta = Path(cfg.metadata) if cfg.metadata else None
    auto = False
    if meta is None:
        meta = next((root / f"metadata{e}" for e in TABLE_EXTS if (root / f"metadata{e}").is_file()), None)  # fmt: skip
        auto = meta is not None
    for t in tables:  # loud only when no table is used at all (the pairs.jsonl case)
        if meta is None or t.resolve() != meta.resolve():
            log.log(
                logging.WARNING if meta is None else logging.INFO,
                "%s looks like a metadata table but is not used; pass --metadata %s", t, t,
            )  # fmt: skip
    images, noext, broken, other = _list_folder(root)
    if other:
        log.warning(
            "%s: %d file(s) skipped as not images: %s", root, sum(other.values()),
            ", ".join(f"{k} x{v}" for k, v in sorted(other.items())),
        )  # fmt: skip
    listed: set = set()
    if meta is not None:
        if not meta.is_file():
            raise FileNotFoundError(f"metadata table not found: {meta}")
        table = read_table_file(meta)
        listed = _rows_from_table(rows, table, root, cfg, root.name, str(meta))
    if meta is not None and not auto:
        unlisted = [p for p in images if p.resolve() not in listed]
        if unlisted:
            log.warning(
                "%d image(s) in %s are not listed in %s and are not curated (e.g. %s)",
                len(unlisted), root, meta, unlisted[0].relative_to(root),
            )  # fmt: skip
        return rows
    n_table = rows.n
    extra = [p for p in images if p.resolve() not in listed]
    for p in extra + noext + broken:
        rel = p.relative_to(root).as_posix()
        txt = p.with_suffix(".txt") if p.suffix else None
        alt = txt.read_bytes() if txt is not None and txt.is_file() else None
        err = "broken_symlink" if p in broken else ("no_extension" if p in noext else None)
        rows.add(source=root.name, source_key=rel, uri=str(p), alt_text=alt, input_error=err)
    if rows.passthrough and rows.n > n_table:  # folder rows have no table columns: nulls
        pt = rows.passthrough[0]
        idx = list(range(n_table)) + [None] * (rows.n - n_table)
        rows.passthrough = [pt.take(pa().array(idx, pa().int64()))]
    return rows


def _read_tars(tars: list[Path], cfg: InputConfig, source: str) -> _Rows:
    """WebDataset samples: members grouped by key (path up to the first dot of the basename)."""
    samples: list[dict] = []
    for t in tars:
        with tarfile.open(t) as tf:
            cur: dict | None = None
            for m in tf:
                if not m.isfile():
                    continue
                d, _, base = m.name.rpartition("/")
                key, _, ext = base.partition(".")
                key = f"{d}/{key}" if d else key
                if cur is None or cur["__key__"] != key:
                    cur = {"__key__": key, "__shard__": t.stem, "members": {}}
                    samples.append(cur)
                cur["members"][ext.lower()] = tf.extractfile(m).read()
    recs = []
    for s in samples:
        rec = {"__key__": s["__key__"], "__shard__": s["__shard__"]}
        img_ext = next((e for e in s["members"] if "." + e.split(".")[-1] in IMAGE_EXTS), None)
        for e, data in s["members"].items():
            if e == img_ext:
                continue
            if e == "json":
                try:
                    obj = json.loads(data)
                except ValueError:
                    obj = {}
                rec.update(obj if isinstance(obj, dict) else {"json": obj})
            else:
                rec[e] = _decode_text(data)[0]
        rec["image"] = s["members"].get(img_ext) if img_ext else None
        recs.append(rec)
    table = pa().Table.from_pylist(recs) if recs else pa().table({"__key__": pa().array([], pa().string())})  # fmt: skip
    cols = dict(cfg.columns)
    if (
        "caption" not in cols
        and "caption" not in table.column_names
        and "txt" in table.column_names
    ):
        cols["caption"] = "txt"
    cols.setdefault("id", "__key__")
    cfg2 = InputConfig(metadata="", columns=cols)
    rows = _Rows()
    _rows_from_table(rows, table, tars[0].parent, cfg2, source, f"webdataset {tars[0].parent}")
    for i, data in enumerate(rows.cols["image"]):
        if data is None and rows.cols["input_error"][i] == "missing_path":
            rows.cols["input_error"][i] = "missing_file"  # a sample without an image member
    return rows


def _finish(rows: _Rows):
    P = pa()
    c = rows.cols
    ids = [stable_id(s, k) for s, k in zip(c["source"], c["source_key"])]
    if len(set(ids)) != len(ids):
        dup = next(k for i, k in zip(ids, c["source_key"]) if ids.count(i) > 1)
        raise ValueError(f"duplicate (source, source_key) in input, e.g. source_key={dup!r}")
    table = P.table(
        {
            "row_id": ids,
            **{k: P.array(c[k], P.string()) for k in ("source", "source_key", "url", "uri")},
            **{k: P.array(c[k], P.string()) for k in ("license", "license_url", "alt_text")},
            "alt_text_valid": P.array(c["alt_text_valid"], P.bool_()),
            "image": P.array(c["image"], P.binary()),
            "input_error": P.array(c["input_error"], P.string()),
        }
    )
    if rows.passthrough:
        extra = P.concat_tables(
            [t for t in rows.passthrough], promote_options="permissive"
        ).combine_chunks()
        for name in extra.column_names:
            table = table.append_column(name, extra.column(name))
    order = np.argsort(np.asarray(ids), kind="stable")
    return table.take(P.array(order))


def read_input(path: str | Path, config: InputConfig | None = None):
    """Load the input listing as one Arrow table (no image decoding); see the module docstring.

    A missing path, table or mapped column is a configuration error raised before any work.
    """
    cfg = config or InputConfig()
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"curate input not found: {path}")
    if cfg.metadata and not path.is_dir():
        raise ValueError(f"--metadata needs --input to be the folder its paths are relative to: {path}")  # fmt: skip
    if path.is_dir():
        has_images = any(p.suffix.lower() in IMAGE_EXTS for p in path.rglob("*") if p.is_file())
        tars = sorted(path.glob("*.tar"))
        shards = sorted(path.glob("*.parquet"))
        if cfg.metadata or has_images:
            rows = _read_folder(path, cfg)
        elif tars:
            rows = _read_tars(tars, cfg, path.name)
        elif shards:
            rows = _Rows()
            for s in shards:
                _rows_from_table(rows, read_table_file(s), path, cfg, path.name, str(s))
            _prefix_keys_by_shard(rows, shards)
        else:
            raise ValueError(
                f"curate input {path} holds no images, WebDataset .tar files or .parquet shards"
            )
    elif path.suffix.lower() == ".tar":
        rows = _read_tars([path], cfg, path.stem)
    elif path.suffix.lower() in TABLE_EXTS:
        rows = _Rows()
        _rows_from_table(rows, read_table_file(path), path.parent, cfg, path.stem, str(path))
    else:
        raise ValueError(
            f"curate input {path} must be a folder, a .tar, or a .parquet/.jsonl/.csv table"
        )
    if rows.n == 0:
        raise ValueError(f"curate input {path} has no rows")
    return _finish(rows)


def _prefix_keys_by_shard(rows: _Rows, shards: list[Path]) -> None:
    """Row-number keys (``row<i>``) are only unique within one shard: prefix the shard name."""
    keys = rows.cols["source_key"]
    k = 0
    for s, t in zip(shards, rows.passthrough):
        for i in range(k, k + t.num_rows):
            if keys[i].startswith("row") and keys[i][3:].isdigit():
                keys[i] = f"{s.stem}:{keys[i]}"
        k += t.num_rows
