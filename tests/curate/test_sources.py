"""Input as users hold it: folder + metadata table, Parquet shards, WebDataset tars, column maps,
passthrough columns, rows that cannot be read, and warnings for unused tables and columns."""

from __future__ import annotations

import io
import json
import logging
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from diffkit.curate.sources import InputConfig, read_input


def _image(seed: int, fmt: str = "PNG", size: int = 256, **kw) -> bytes:
    """A smooth random picture (upsampled 8x8 noise): distinct per seed, far from degenerate."""
    small = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    im = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


@pytest.fixture()
def folder(tmp_path):
    """images/ with four distinct images, an exact copy, a JPEG re-encode, plus a table that also
    lists a missing file and a broken symlink, and one image the table does not list."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for i in range(4):
        (root / "images" / f"{i}.png").write_bytes(_image(i))
    (root / "images" / "copy.png").write_bytes(_image(0))
    (root / "images" / "reenc.jpg").write_bytes(_image(1, "JPEG", quality=92))
    (root / "images" / "unlisted.png").write_bytes(_image(9))
    (root / "images" / "dangling.png").symlink_to(root / "images" / "nowhere.png")
    names = [
        "0.png",
        "1.png",
        "2.png",
        "3.png",
        "copy.png",
        "reenc.jpg",
        "gone.png",
        "dangling.png",
    ]
    rows = [
        {"id": 100 + i, "path": f"images/{n}", "caption": f"picture number {i}",
         "url": f"https://example.org/{n}", "license": "CC BY 4.0", "aesthetic": 0.5 + i / 10,
         "status": "user status"}
        for i, n in enumerate(names)
    ]  # fmt: skip
    with open(root / "pairs.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root, rows


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_folder_plus_metadata_table(folder, fmt, caplog):
    root, rows = folder
    table = pa.Table.from_pylist(rows)
    meta = root / f"meta.{fmt}"
    if fmt == "csv":
        import pyarrow.csv as pc

        pc.write_csv(table, meta)
    elif fmt == "parquet":
        pq.write_table(table, meta)
    else:
        meta = root / "pairs.jsonl"
    with caplog.at_level(logging.INFO):
        t = read_input(root, InputConfig(metadata=str(meta)))
    assert t.num_rows == len(rows)  # only listed rows, every one of them
    got = {r["id"]: r for r in t.to_pylist()}
    assert sorted(got) == [r["id"] for r in rows]  # `id` stays `id`, with its integer type
    assert pa.types.is_integer(t.schema.field("id").type)
    for r in rows:
        g = got[r["id"]]
        assert g["alt_text"] == r["caption"] == g["caption"] and g["url"] == r["url"]
        assert g["license"] == "CC BY 4.0" and g["path"] == r["path"]
        assert g["aesthetic"] == pytest.approx(r["aesthetic"])
        assert g["input_status"] == "user status"  # a reserved name is renamed, not lost
    assert got[106]["input_error"] == "missing_file"
    assert got[107]["input_error"] == "broken_symlink"
    assert all(got[i]["input_error"] is None for i in range(100, 106))
    text = caplog.text
    assert "unlisted.png" in text and "not listed" in text  # an image the table leaves out
    assert "collides" in text and "status" in text
    if fmt != "jsonl":  # another table beside the one in use: noted at INFO, not a warning
        rec = [r for r in caplog.records if "pairs.jsonl" in r.getMessage()]
        assert rec and all(r.levelno == logging.INFO for r in rec)


def test_column_map_and_missing_columns(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(_image(0))
    t = pa.table({"file_name": ["a.png"], "text": ["a smooth picture"]})
    pq.write_table(t, tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="neither image bytes nor a path column"):
        read_input(tmp_path, InputConfig(metadata=str(tmp_path / "m.parquet")))
    with pytest.raises(ValueError, match="input.columns.caption='nope' is not a column"):
        read_input(
            tmp_path,
            InputConfig(metadata=str(tmp_path / "m.parquet"), columns={"path": "file_name", "caption": "nope"}),
        )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        out = read_input(
            tmp_path, InputConfig(metadata=str(tmp_path / "m.parquet"), columns={"path": "file_name"})
        )  # fmt: skip
    assert out.column("alt_text").to_pylist() == [""]
    assert "no caption column" in caplog.text and "--column caption=NAME" in caplog.text
    out = read_input(
        tmp_path,
        InputConfig(metadata=str(tmp_path / "m.parquet"), columns={"path": "file_name", "caption": "text"}),
    )  # fmt: skip
    assert out.column("alt_text").to_pylist() == ["a smooth picture"]
    assert out.column("text").to_pylist() == ["a smooth picture"]  # passes through as well
    assert out.column("file_name").to_pylist() == ["a.png"]
    with pytest.raises(ValueError, match="unknown role"):
        InputConfig(columns={"pth": "x"})


def test_unused_table_beside_images_warns(tmp_path, caplog):
    (tmp_path / "a.png").write_bytes(_image(0))
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"path": "a.png", "caption": "x"}) + "\n")
    with caplog.at_level(logging.WARNING):
        t = read_input(tmp_path)
    assert t.num_rows == 1 and "pairs.jsonl" in caplog.text and "--metadata" in caplog.text


def test_folder_rows_that_cannot_be_read_are_listed(tmp_path):
    (tmp_path / "a.png").write_bytes(_image(0))
    (tmp_path / "noext").write_bytes(_image(1))
    (tmp_path / "b.png").symlink_to(tmp_path / "missing.png")
    t = read_input(tmp_path)
    got = dict(zip(t.column("source_key").to_pylist(), t.column("input_error").to_pylist()))
    assert got == {"a.png": None, "noext": "no_extension", "b.png": "broken_symlink"}


def test_folder_of_parquet_shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(
        pa.table({"image": [_image(0), _image(1)], "caption": ["a", "b"], "k": [1, 2]}),
        d / "part-0.parquet",
    )
    pq.write_table(
        pa.table({"image": pa.array([{"bytes": _image(2), "path": "x.png"}], struct),
                  "caption": ["c"], "k": [3]}),
        d / "part-1.parquet",
    )  # fmt: skip
    t = read_input(d)
    assert t.num_rows == 3 and sorted(t.column("k").to_pylist()) == [1, 2, 3]
    assert len(set(t.column("source_key").to_pylist())) == 3
    assert all(b is not None for b in t.column("image").to_pylist())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_input(tmp_path / "empty")


def _tar(path, samples):
    with tarfile.open(path, "w") as tf:
        for name, data in samples:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_tars(tmp_path):
    d = tmp_path / "wds"
    d.mkdir()
    _tar(d / "s0.tar", [
        ("a/000.jpg", _image(0, "JPEG")), ("a/000.txt", b"first caption"),
        ("a/000.json", json.dumps({"url": "https://x.org/0", "width_orig": 640}).encode()),
        ("a/001.png", _image(1)), ("a/001.txt", b"second caption"),
    ])  # fmt: skip
    _tar(d / "s1.tar", [("002.txt", b"caption without an image")])
    t = read_input(d)
    rows = {r["source_key"]: r for r in t.to_pylist()}
    assert set(rows) == {"a/000", "a/001", "002"}
    assert (
        rows["a/000"]["alt_text"] == "first caption" and rows["a/000"]["url"] == "https://x.org/0"
    )
    assert rows["a/000"]["width_orig"] == 640 and rows["a/001"]["width_orig"] is None
    assert rows["002"]["input_error"] == "missing_file" and rows["a/001"]["image"] is not None


def test_run_with_metadata_keeps_columns_and_clusters(folder, tmp_path, small_config):
    """End to end: every listed row comes out (kept or dropped with a reason), user columns pass
    through, and exact/near duplicates share one dup_cluster (null for singletons)."""
    from diffkit.curate.evaluate import load_outputs
    from diffkit.curate.pipeline import Pipeline

    root, rows = folder
    cfg = small_config(**{
        "input.metadata": str(root / "pairs.jsonl"), "governance.allowed_licenses": "[]",
        "write.faiss_index": "false",
    })  # fmt: skip
    out = tmp_path / "o"
    s = Pipeline.from_config(cfg).run(root, out)
    assert s["rows_in"] == len(rows) == s["kept"] + s["dropped"]
    got = {r["id"]: r for r in load_outputs(out).to_pylist()}
    assert sorted(got) == [r["id"] for r in rows]
    assert got[106]["drop_reason"] == "missing_file"
    assert got[107]["drop_reason"] == "broken_symlink"
    assert got[104]["drop_reason"] == "exact_dup" and got[105]["drop_reason"] == "phash_dup"
    assert got[100]["dup_cluster"] == got[104]["dup_cluster"] is not None
    assert got[101]["dup_cluster"] == got[105]["dup_cluster"] is not None
    assert got[100]["dup_cluster"] != got[101]["dup_cluster"]
    assert got[102]["dup_cluster"] is None and got[103]["dup_cluster"] is None
    for r in got.values():
        assert r["aesthetic"] is not None and r["caption"].startswith("picture number")
    kept = pq.read_table(out / "kept")
    assert {"id", "caption", "aesthetic", "dup_cluster", "path"} <= set(kept.column_names)
    assert "image_ref" not in kept.column_names and "image" not in kept.column_names


def test_inline_bytes_are_stored_once_and_reach_the_tars(tmp_path, small_config):
    """Parquet input with image bytes: the bytes live only in the input shards of work/; every
    later stage reads them by reference, and the WebDataset members are the original bytes."""
    import webdataset as wds

    from diffkit.curate.pipeline import Pipeline

    d = tmp_path / "shards"
    d.mkdir()
    imgs = [_image(i) for i in range(6)]
    pq.write_table(
        pa.table({"image": imgs, "caption": [f"pic {i}" for i in range(6)], "id": list(range(6))}),
        d / "part-0.parquet",
    )
    cfg = small_config(**{"governance.allowed_licenses": "[]", "write.faiss_index": "false",
                          "shard_size": 4})  # fmt: skip
    out = tmp_path / "o"
    s = Pipeline.from_config(cfg).run(d, out, keep_work=True)
    assert s["kept"] == 6
    with_bytes = [
        p for p in (out / "work").rglob("*.parquet")
        if "image" in pq.read_schema(p).names
        and pq.read_table(p, columns=["image"]).column("image").null_count < pq.read_metadata(p).num_rows
    ]  # fmt: skip
    assert with_bytes and all(p.parent.parent.name == "00_input" for p in with_bytes)
    got = {}
    for x in wds.WebDataset(sorted(str(p) for p in (out / "wds").glob("*.tar")), shardshuffle=False, empty_check=False):  # fmt: skip
        got[json.loads(x["json"])["id"]] = x["png"]
    assert got == dict(enumerate(imgs))
