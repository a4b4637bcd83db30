"""Input and output locations through fsspec: local paths, ``memory://``, ``s3://``, ``gs://``...

The pipeline computes in a local run folder, because its ``work/`` shards must sit on a
filesystem that every worker sees (a local disk on one machine, a shared mount on a cluster).
Around that folder:

* a remote **input** (a folder, a table or a ``.tar``) and a remote ``--metadata`` table are
  staged into ``<run folder>/work/input/`` through fsspec; a file is fetched only when its local
  copy is missing or differs in size, so a resumed run does not fetch again;
* a remote **output** folder receives the finished outputs (everything but ``work/``) after the
  run; the local run folder is then a cache folder named after the URL
  (:func:`local_run_dir`), so rerunning the same command resumes.

Object stores need their fsspec package (``s3fs`` for ``s3://``, ``gcsfs`` for ``gs://``) and
its usual credentials; nothing here is store-specific.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

STAGED_INPUT = ("work", "input")  # inside the run folder


def is_remote(path: str | os.PathLike) -> bool:
    """True for an fsspec URL other than a local file (``file://`` counts as local)."""
    s = str(path)
    if "://" not in s:
        return False
    return s.split("://", 1)[0].lower() not in ("file", "local")


def _fs(url: str):
    import fsspec

    return fsspec.core.url_to_fs(url)


def local_path(path: str | os.PathLike) -> Path:
    """A local path for ``path`` (``file://`` stripped); raises for a remote URL."""
    if is_remote(path):
        raise ValueError(f"{path} is a remote URL, not a local path")
    s = str(path)
    return Path(s.split("://", 1)[1] if "://" in s else s)


def local_run_dir(url: str, base: str | os.PathLike | None = None) -> Path:
    """The local run folder used for a remote output URL: ``<base>/<hash of the URL>``
    (``base`` defaults to ``$DIFFKIT_CACHE/curate`` or ``<tmp>/diffkit-curate``)."""
    if base is None:
        cache = os.environ.get("DIFFKIT_CACHE")
        base = Path(cache) / "curate" if cache else Path(tempfile.gettempdir()) / "diffkit-curate"
    return Path(base) / hashlib.sha256(str(url).encode()).hexdigest()[:16]


def _fetch(fs, src: str, dst: Path, size: int | None) -> bool:
    if dst.is_file() and size is not None and dst.stat().st_size == size:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    fs.get_file(src, str(tmp))
    tmp.replace(dst)
    return True


def stage(url: str, dest: Path) -> Path:
    """Copy the file or folder at ``url`` under ``dest``; returns the local path to use instead
    of ``url`` (``dest/<name>``). Files already there with the same size are kept."""
    fs, root = _fs(url)
    root = root.rstrip("/")
    if not fs.exists(root):
        raise FileNotFoundError(f"curate input not found: {url}")
    name = Path(root).name or "input"
    target = dest / name
    fetched = 0
    if fs.isdir(root):
        target.mkdir(parents=True, exist_ok=True)
        for f, info in sorted(fs.find(root, detail=True).items()):
            if info.get("type") == "directory":
                continue
            rel = f.rstrip("/")[len(root) :].lstrip("/")
            fetched += _fetch(fs, f, target / rel, info.get("size"))
    else:
        fetched += _fetch(fs, root, target, fs.info(root).get("size"))
    log.info("staged %s -> %s (%d files fetched)", url, target, fetched)
    return target


def publish(local: Path, url: str, skip: tuple[str, ...] = ("work",)) -> int:
    """Upload every file under ``local`` (but the top-level folders in ``skip``) to the folder
    ``url``; returns the number of files written."""
    fs, root = _fs(url)
    root = root.rstrip("/")
    n = 0
    for p in sorted(local.rglob("*")):
        rel = p.relative_to(local)
        if not p.is_file() or rel.parts[0] in skip:
            continue
        dst = f"{root}/{rel.as_posix()}"
        fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(p), dst)
        n += 1
    log.info("published %d files from %s to %s", n, local, url)
    return n
