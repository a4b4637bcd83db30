"""Preference loaders on tiny synthetic files in the exact Pick-a-Pic / HPDv3 / generic layouts."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _align_tiny import png_bytes

from diffkit.align.data import (
    DataError,
    ImageError,
    decode_image,
    load_generic,
    load_hpdv3,
    load_pairs,
)


def _pickapic(path, rows):
    cols = [
        "are_different",
        "best_image_uid",
        "caption",
        "created_at",
        "has_label",
        "image_0_uid",
        "image_0_url",
        "image_1_uid",
        "image_1_url",
        "jpg_0",
        "jpg_1",
        "label_0",
        "label_1",
        "model_0",
        "model_1",
        "ranking_id",
        "user_id",
        "num_example_per_prompt",
    ]
    data = {c: [] for c in cols}
    for i, (cap, j0, j1, l0) in enumerate(rows):
        full = dict(
            are_different=True,
            best_image_uid="u",
            caption=cap,
            created_at="2023",
            has_label=True,
            image_0_uid=f"a{i}",
            image_0_url="s3://x",
            image_1_uid=f"b{i}",
            image_1_url="s3://y",
            jpg_0=j0,
            jpg_1=j1,
            label_0=l0,
            label_1=1 - l0,
            model_0="m0",
            model_1="m1",
            ranking_id=i,
            user_id=7,
            num_example_per_prompt=1,
        )
        for c in cols:
            data[c].append(full[c])
    pq.write_table(pa.table(data), path)


def test_pickapic_drops_ties_and_orients_by_label(tmp_path):
    a, b, c, d = (png_bytes(i) for i in range(4))
    f = tmp_path / "train-0001.parquet"
    _pickapic(f, [("p0", a, b, 1.0), ("tie", a, b, 0.5), ("p2", c, d, 0.0)])
    pairs, stats = load_pairs(f)  # auto-detected from the jpg_0 column, no name check
    assert [p.prompt for p in pairs] == ["p0", "p2"]
    assert pairs[0].chosen == a and pairs[0].rejected == b
    assert pairs[1].chosen == d and pairs[1].rejected == c
    assert stats.rows == 3 and stats.kept == 2 and stats.dropped["tie"] == 1


def test_hpdv3_orientation_and_filters(tmp_path):
    import io

    from PIL import Image

    for name, size in [("a.png", 16), ("b.png", 16), ("c.png", 16), ("d.png", 8)]:
        Image.open(io.BytesIO(png_bytes(len(name), size))).save(tmp_path / name)
    recs = [
        {
            "prompt": "kept",
            "path1": "a.png",
            "path2": "b.png",
            "model1": "flux",
            "model2": "sd3",
            "choice_dist": [0.9, 0.1],
        },
        {
            "prompt": "swapped",
            "path1": "a.png",
            "path2": "c.png",
            "model1": "kolors",
            "model2": "real_images",
            "choice_dist": [0.2, 0.8],
        },
        {
            "prompt": "model",
            "path1": "a.png",
            "path2": "b.png",
            "model1": "midjourney",
            "model2": "flux",
            "choice_dist": [1, 0],
        },
        {
            "prompt": "res",
            "path1": "a.png",
            "path2": "d.png",
            "model1": "flux",
            "model2": "flux",
            "choice_dist": [1, 0],
        },
        {
            "prompt": "missing",
            "path1": "a.png",
            "path2": "zz.png",
            "model1": "flux",
            "model2": "flux",
            "choice_dist": [1, 0],
        },
        {"nonsense": 1},
    ]
    (tmp_path / "train.json").write_text(json.dumps(recs))
    pairs, stats = load_hpdv3(tmp_path / "train.json", resolution=(16, 16))
    assert [p.prompt for p in pairs] == ["kept", "swapped"]
    assert pairs[1].chosen.endswith("c.png") and pairs[1].rejected.endswith("a.png")
    assert stats.dropped == {
        "model_filter": 1,
        "resolution_filter": 1,
        "bad_image": 1,
        "malformed": 1,
    }
    pairs, _ = load_hpdv3(tmp_path / "train.json", models=None)
    assert len(pairs) == 5  # no filters: only the malformed row goes


def test_generic_jsonl_and_bad_rows(tmp_path):
    (tmp_path / "w.png").write_bytes(png_bytes(1))
    (tmp_path / "l.png").write_bytes(png_bytes(2))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    lines = [
        json.dumps({"prompt": "ok", "chosen": "w.png", "rejected": "l.png", "weight": 2.0}),
        json.dumps({"prompt": "broken", "chosen": "broken.png", "rejected": "l.png"}),
        "{not json",
        json.dumps({"prompt": "no rejected", "chosen": "w.png"}),
    ]
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    pairs, stats = load_generic(f)
    assert [p.prompt for p in pairs] == ["ok", "broken"] and pairs[0].weight == 2.0
    assert stats.dropped["malformed"] == 2
    assert decode_image(pairs[0].chosen, 8).shape == (3, 8, 8)
    with pytest.raises(ImageError):
        decode_image(pairs[1].chosen, 8)
    with pytest.raises(ImageError):
        decode_image(b"", 8)


def test_generic_parquet_with_bytes(tmp_path):
    f = tmp_path / "p.parquet"
    pq.write_table(
        pa.table({"prompt": ["x"], "chosen": [png_bytes(3)], "rejected": [png_bytes(4)]}), f
    )
    pairs, stats = load_pairs(f)
    assert stats.kept == 1 and isinstance(pairs[0].chosen, bytes)
    x = decode_image(pairs[0].chosen, 16)
    assert x.min() >= -1 and x.max() <= 1


def _images(tmp_path):
    (tmp_path / "w.png").write_bytes(png_bytes(1))
    (tmp_path / "l.png").write_bytes(png_bytes(2))


def test_weight_and_confidence_zero_stay_zero(tmp_path):
    _images(tmp_path)
    rows = [
        {"prompt": "zero", "chosen": "w.png", "rejected": "l.png", "weight": 0},
        {"prompt": "none", "chosen": "w.png", "rejected": "l.png", "weight": None},
        {"prompt": "neg", "chosen": "w.png", "rejected": "l.png", "weight": -1.0},
        {"prompt": "nan", "chosen": "w.png", "rejected": "l.png", "weight": "x"},
    ]
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    pairs, stats = load_generic(f)
    assert [(p.prompt, p.weight) for p in pairs] == [("zero", 0.0), ("none", 1.0)]
    assert stats.dropped["bad_weight"] == 2
    rec = {"prompt": "c0", "path1": "w.png", "path2": "l.png", "model1": "flux", "model2": "sd3"}
    (tmp_path / "train.json").write_text(
        json.dumps([{**rec, "confidence": 0.0}, {**rec, "confidence": 0.25}, rec])
    )
    pairs, _ = load_hpdv3(tmp_path / "train.json")
    assert [p.weight for p in pairs] == [0.0, 0.25, 1.0]


def test_repeatable_data_paths_mix_formats(tmp_path):
    _images(tmp_path)
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "generic", "chosen": "w.png", "rejected": "l.png"}))
    rec = {"prompt": "hpd", "path1": "w.png", "path2": "l.png", "model1": "x", "model2": "y"}
    (tmp_path / "train.json").write_text(json.dumps([rec]))
    pairs, stats = load_pairs([f, tmp_path / "train.json"], models=None)
    assert [p.prompt for p in pairs] == ["generic", "hpd"] and stats.rows == 2
    pairs, stats = load_pairs([f, tmp_path / "train.json"], models=("flux",))
    assert [p.prompt for p in pairs] == ["generic"] and stats.dropped["model_filter"] == 1


def test_one_line_data_errors(tmp_path):
    _images(tmp_path)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"prompt": "p", "chosen": "w.png", "rejected": "l.png"}))
    with pytest.raises(DataError, match="data_format=pickapic needs parquet"):
        load_pairs(jsonl, "pickapic")
    with pytest.raises(DataError, match="data_format=hpdv3 needs"):
        load_pairs(jsonl, "hpdv3")
    # A Pick-a-Pic shard without its label column names the missing column.
    f = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"caption": ["x"], "jpg_0": [b"a"], "jpg_1": [b"b"]}), f)
    with pytest.raises(DataError, match=r"missing \['label_0'\]"):
        load_pairs(f)
    g = tmp_path / "generic.parquet"
    pq.write_table(pa.table({"prompt": ["x"], "chosen": [b"a"]}), g)
    with pytest.raises(DataError, match=r"missing \['rejected'\]"):
        load_pairs(g)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not an HPDv3 JSON"):
        load_pairs(tmp_path / "bad.json")
    (tmp_path / "dict.json").write_text('{"prompt": "x"}')
    with pytest.raises(DataError, match="JSON list"):
        load_pairs(tmp_path / "dict.json")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no usable preference pairs"):
        load_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="no such data file"):
        load_pairs(tmp_path / "absent.jsonl")
