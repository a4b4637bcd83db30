"""Input and output paths through fsspec: memory:// in and out gives the local run's sets."""

from __future__ import annotations

import json
import uuid

import fsspec
import pyarrow.parquet as pq
import pytest

from diffkit.curate.evaluate import load_outputs
from diffkit.curate.locations import is_remote, local_path, local_run_dir, publish, stage
from diffkit.curate.pipeline import Pipeline

STAGES = "[ingest, prefilter, exact_dedup, governance, phash_dedup, write]"


def _sets(rows):
    keep = {r["row_id"] for r in rows if r["status"] == "keep"}
    drop = {(r["row_id"], r["drop_reason"]) for r in rows if r["status"] == "drop"}
    return keep, drop


def _memory_rows(url):
    fs = fsspec.filesystem("memory")
    root = url.split("://", 1)[1]
    rows = []
    for sub in ("kept", "dropped"):
        for f in sorted(fs.glob(f"{root}/{sub}/*.parquet")):
            with fs.open(f, "rb") as fh:
                rows += pq.read_table(fh).to_pylist()
    return rows


def test_is_remote_and_local_path(tmp_path):
    assert not is_remote(tmp_path) and not is_remote(f"file://{tmp_path}")
    assert is_remote("memory://x") and is_remote("s3://bucket/key") and is_remote("gs://b/k")
    assert local_path(f"file://{tmp_path}") == tmp_path
    with pytest.raises(ValueError, match="remote URL"):
        local_path("s3://bucket/key")
    assert local_run_dir("s3://a/b", tmp_path) == local_run_dir("s3://a/b", tmp_path)
    assert local_run_dir("s3://a/b", tmp_path) != local_run_dir("s3://a/c", tmp_path)


def test_stage_fetches_only_missing_or_changed_files(tmp_path):
    fs = fsspec.filesystem("memory")
    root = f"/stage-{uuid.uuid4().hex}"
    fs.pipe({f"{root}/d/a.txt": b"aaa", f"{root}/d/sub/b.txt": b"bb"})
    got = stage(f"memory://{root}/d", tmp_path)
    assert (got / "a.txt").read_bytes() == b"aaa" and (got / "sub" / "b.txt").read_bytes() == b"bb"
    mtime = (got / "a.txt").stat().st_mtime_ns
    fs.pipe({f"{root}/d/sub/b.txt": b"bbbb"})  # changed size: fetched again; a.txt kept
    stage(f"memory://{root}/d", tmp_path)
    assert (got / "sub" / "b.txt").read_bytes() == b"bbbb"
    assert (got / "a.txt").stat().st_mtime_ns == mtime
    with pytest.raises(FileNotFoundError, match="not found"):
        stage(f"memory://{root}/missing", tmp_path)


def test_publish_skips_work(tmp_path):
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "x.parquet").write_bytes(b"1")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "y").write_bytes(b"2")
    (tmp_path / "manifest.json").write_text("{}")
    url = f"memory://pub-{uuid.uuid4().hex}"
    assert publish(tmp_path, url) == 2
    fs = fsspec.filesystem("memory")
    root = url.split("://", 1)[1]
    assert sorted(f.rsplit("/", 2)[-2:][-1] for f in fs.find(root)) == ["manifest.json", "x.parquet"]  # fmt: skip


def test_memory_input_and_output_match_local(corpus, tmp_path, small_config):
    cfg = small_config(stages=STAGES, shard_size=40)
    local = Pipeline.from_config(cfg).run(corpus, tmp_path / "local")
    fs = fsspec.filesystem("memory")
    src = f"/in-{uuid.uuid4().hex}/{corpus.name}"  # same folder name: same `source` values
    for p in sorted(corpus.rglob("*")):
        if p.is_file():
            fs.pipe(f"{src}/{p.relative_to(corpus).as_posix()}", p.read_bytes())
    url = f"memory://out-{uuid.uuid4().hex}"
    remote = Pipeline.from_config(cfg).run(f"memory://{src}", url, local_dir=tmp_path / "run")
    assert (remote["kept"], remote["dropped"]) == (local["kept"], local["dropped"])
    assert _sets(_memory_rows(url)) == _sets(load_outputs(tmp_path / "local").to_pylist())
    root = url.split("://", 1)[1]
    with fs.open(f"{root}/manifest.json") as fh:
        assert json.load(fh)["kept"] == local["kept"]
    assert not fs.exists(f"{root}/work")  # intermediate shards stay local
    assert not (tmp_path / "run" / "work").exists()  # a clean run removes work/ (and the staging)


def test_cli_memory_out_publishes_outputs_and_report(corpus, tmp_path, monkeypatch, recipe):
    from diffkit.cli import main

    monkeypatch.setenv("DIFFKIT_CACHE", str(tmp_path / "cache"))
    url = f"memory://cli-{uuid.uuid4().hex}"
    args = ["curate", "run", "--config", str(recipe), "--input", f"file://{corpus}", "--out", url,
            "--set", f"stages={STAGES}", "--set", "shard_size=40"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    fs = fsspec.filesystem("memory")
    root = url.split("://", 1)[1]
    assert fs.isfile(f"{root}/manifest.json") and fs.isfile(f"{root}/report/report.html")
    assert not fs.exists(f"{root}/work")
    run_dir = local_run_dir(url, tmp_path / "cache" / "curate")
    assert (run_dir / "manifest.json").is_file() and not (run_dir / "work").exists()
