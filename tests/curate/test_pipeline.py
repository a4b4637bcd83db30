from __future__ import annotations

import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffkit.core.io import sha256_file
from diffkit.curate.evaluate import evaluate_dedup, load_outputs
from diffkit.curate.executors import LocalExecutor
from diffkit.curate.pipeline import Pipeline, load_config


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory, small_config):
    out = tmp_path_factory.mktemp("run") / "out"
    summary = Pipeline.from_config(small_config()).run(corpus, out, keep_work=True)
    return out, summary


def test_every_row_accounted_for(run_dir, corpus):
    out, summary = run_dir
    gt = pq.read_table(corpus / "ground_truth.parquet")
    rows = load_outputs(out)
    assert (
        summary["rows_in"] == gt.num_rows == rows.num_rows == summary["kept"] + summary["dropped"]
    )
    assert len(set(rows.column("row_id").to_pylist())) == rows.num_rows  # nothing duplicated
    for st in summary["stages"]:
        assert st["rows_in"] == st["kept"] + st["dropped"]
    # stage chain: each stage's input is the previous stage's kept count
    for a, b in zip(summary["stages"], summary["stages"][1:]):
        assert b["rows_in"] == a["kept"]


def test_barriers_only_at_global_stages(run_dir):
    """Per-row stages run as one chain per shard; a segment ends only where every shard is
    needed: a global stage's keys (its reduce), or the duplicate clusters before the writer."""
    _, summary = run_dir
    assert [seg["steps"] for seg in summary["segments"]] == [
        ["ingest:map", "prefilter:map", "exact_dedup:keys"],
        ["exact_dedup:apply", "governance:map", "embed:map", "safety:map", "policy:map",
         "phash_dedup:keys"],
        ["phash_dedup:apply", "emb_dedup:keys"],
        ["emb_dedup:apply", "recaption:map"],
        ["write:sink"],
    ]  # fmt: skip
    n_shards = summary["stages"][0]["shards_run"]
    assert n_shards > 1 and all(seg["shard_chains"] == n_shards for seg in summary["segments"])


def test_planted_rows_get_their_reasons(run_dir, corpus):
    out, _ = run_dir
    got = {r["source_key"]: r for r in load_outputs(out).to_pylist()}
    for g in pq.read_table(corpus / "ground_truth.parquet").to_pylist():
        r = got[g["source_key"]]
        if g["expect_reason"]:
            assert r["drop_reason"] == g["expect_reason"], (g, r["drop_reason"])
        if g["role"] in ("exact_bytes", "exact_pixels"):
            assert r["status"] == "drop"
        if g["role"] == "caption" and g["expect"] == "keep":
            assert r["status"] == "keep", r


def test_dedup_quality_on_small_corpus(run_dir, corpus):
    m = evaluate_dedup(run_dir[0], corpus)
    assert m["false_merges"] == 0
    assert m["pairwise_precision"] >= 0.95
    assert m["per_transform_recall"]["exact_bytes"]["recall"] == 1.0


def test_outputs_tars_and_manifest(run_dir):
    out, summary = run_dir
    man = json.loads((out / "manifest.json").read_text())
    assert man["kept"] == summary["kept"] and man["rows_in"] == summary["rows_in"]
    for e in man["files"]:
        assert sha256_file(out / e["path"]) == e["sha256"]
    tars = sorted((out / "wds").glob("*.tar"))
    assert tars and not list((out / "wds").glob("*.tmp"))
    n = 0
    for t in tars:
        with tarfile.open(t) as tf:
            names = tf.getnames()
            n += sum(x.endswith(".json") for x in names)
            meta = json.loads(tf.extractfile([x for x in names if x.endswith(".json")][0]).read())
            assert meta["status"] == "keep" and "caption_fused" in meta
    assert n == summary["kept"]
    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False))
    assert len(samples) == summary["kept"]
    assert (out / "index.faiss").is_file()
    kept = pq.read_table(out / "kept")
    assert "image" not in kept.schema.names and set(kept.column("status").to_pylist()) == {"keep"}
    assert (out / "report").exists() is False  # report is built on demand


def test_rerun_skips_everything_and_is_identical(run_dir, corpus, small_config):
    out, _ = run_dir
    before = (out / "manifest.json").read_bytes()
    s = Pipeline.from_config(small_config()).run(corpus, out, keep_work=True)
    assert all(st["shards_run"] == 0 for st in s["stages"])
    assert (out / "manifest.json").read_bytes() == before


def test_changed_threshold_reruns_only_downstream(corpus, tmp_path, small_config):
    out = tmp_path / "o"
    Pipeline.from_config(small_config()).run(corpus, out, keep_work=True)
    s = Pipeline.from_config(small_config(**{"phash_dedup.max_distance": 4})).run(
        corpus, out, keep_work=True
    )
    ran = {st["stage"]: st["shards_run"] for st in s["stages"]}
    upstream = ("ingest", "prefilter", "exact_dedup", "governance", "embed", "safety", "policy")
    assert all(ran[k] == 0 for k in upstream)
    assert ran["phash_dedup"] > 0 and ran["emb_dedup"] > 0 and ran["recaption"] > 0


def test_process_pool_matches_in_process(corpus, tmp_path, run_dir, small_config):
    out = tmp_path / "pool"
    ex = LocalExecutor(workers=2)
    Pipeline.from_config(small_config()).run(corpus, out, ex)
    ex.close()
    assert (out / "manifest.json").read_bytes() == (run_dir[0] / "manifest.json").read_bytes()


def test_config_errors_before_work(corpus, tmp_path, small_config, recipe):
    with pytest.raises(ValueError, match="policy threshold"):
        Pipeline.from_config(small_config(**{"policy.max_scores": "{score_nope: 0.5}"}))
    with pytest.raises(ValueError, match="unknown stage"):
        load_config(recipe, ["stages=[ingest, nope, write]"])
    with pytest.raises(ValueError, match="start with 'ingest'"):
        load_config(recipe, ["stages=[prefilter, write]"])
    with pytest.raises(ValueError, match="emb_dedup needs"):
        Pipeline.from_config(small_config(stages="[ingest, emb_dedup, write]"))
    with pytest.raises(ValueError, match="min_side"):
        load_config(recipe, ["prefilter.min_side=-1"])
    with pytest.raises(FileNotFoundError):
        Pipeline.from_config(small_config()).run(tmp_path / "missing", tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_image_bytes_are_stored_once_and_work_is_removed(run_dir, corpus, tmp_path, small_config):
    """Folder input: no stage shard carries image bytes (they are read from the files by
    reference), and the heavy side columns (the 3 KB RGB NCC thumbnail, the crop-window hashes)
    live in ingest's shards only (the near-dup reduce joins them in by row_id), so work/ holds
    one copy of them and is smaller than the images plus that copy (11 stages: work/ was ~8.7
    copies of the images before); a default run removes work/."""
    from diffkit.curate.schema import SIDE_COLUMNS

    out, _ = run_dir
    image_bytes = sum(p.stat().st_size for p in (corpus / "images").rglob("*") if p.is_file())
    work = [p for p in (out / "work").rglob("*.parquet")]
    assert work and all("image" not in pq.read_schema(p).names or
                        pq.read_table(p, columns=["image"]).column("image").null_count
                        == pq.read_metadata(p).num_rows for p in work)  # fmt: skip
    ingest = [p for p in work if "01_ingest" in p.parts]
    assert ingest and all(set(SIDE_COLUMNS) <= set(pq.read_schema(p).names) for p in ingest)
    later = [p for p in work if p not in ingest]
    assert later and not any(set(SIDE_COLUMNS) & set(pq.read_schema(p).names) for p in later)

    def side_bytes(p):  # compressed bytes of the side columns in one file
        md = pq.read_metadata(p)
        cols = (md.row_group(g).column(c) for g in range(md.num_row_groups)
                for c in range(md.num_columns))  # fmt: skip
        return sum(c.total_compressed_size for c in cols
                   if c.path_in_schema.split(".")[0] in SIDE_COLUMNS)  # fmt: skip

    side = sum(side_bytes(p) for p in ingest)
    assert sum(p.stat().st_size for p in work) < image_bytes + side
    fresh = tmp_path / "fresh"
    Pipeline.from_config(small_config()).run(corpus, fresh)
    assert not (fresh / "work").exists()
    assert (fresh / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


def test_replacing_an_image_reruns_its_shard(corpus, tmp_path, small_config):
    """The input fingerprint covers file size and mtime: new pixels under the same name are
    re-ingested, not served from the previous run's shards."""
    import shutil

    import numpy as np
    from PIL import Image

    src = tmp_path / "c"
    shutil.copytree(corpus, src)
    out = tmp_path / "o"
    Pipeline.from_config(small_config()).run(src, out, keep_work=True)
    key = next(r for r in load_outputs(out).to_pylist() if r["status"] == "keep")["source_key"]
    before = {r["source_key"]: r["sha256_pixels"] for r in load_outputs(out).to_pylist()}
    p = src / "images" / key
    arr = np.random.default_rng(7).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    Image.fromarray(arr).save(p, format=Image.open(p).format)
    s = Pipeline.from_config(small_config()).run(src, out, keep_work=True)
    assert s["stages"][0]["shards_run"] > 0
    after = {r["source_key"]: r["sha256_pixels"] for r in load_outputs(out).to_pylist()}
    assert after[key] != before[key]
    assert {k: v for k, v in after.items() if k != key} == {
        k: v for k, v in before.items() if k != key
    }


def test_webdataset_shards_are_size_capped_and_readable(corpus, tmp_path, small_config):
    import webdataset as wds

    cap = 60_000
    out = tmp_path / "o"
    cfg = small_config(**{"write.wds_max_bytes": cap, "write.faiss_index": "false"})
    s = Pipeline.from_config(cfg).run(corpus, out)
    tars = sorted((out / "wds").glob("*.tar"))
    assert len(tars) >= 3 and not list((out / "wds").glob("*.tmp"))
    samples: dict[str, int] = {}
    for t in tars:
        with tarfile.open(t) as tf:
            sizes = [(m.name.split(".")[0], m.size) for m in tf.getmembers()]
        for k, n in sizes:
            samples[k] = samples.get(k, 0) + n
        shard = sum(n for _, n in sizes)
        last = samples[sizes[-1][0]]
        assert shard - last < cap  # closed once it reached the cap: over it by <= one sample
    got = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False))
    kept = pq.read_table(out / "kept")
    assert sorted(x["__key__"] for x in got) == sorted(kept.column("row_id").to_pylist())
    assert len(got) == s["kept"]
    meta = json.loads(got[0]["json"])
    assert meta["status"] == "keep" and "dup_cluster" in meta and "caption_fused" in meta
    man = json.loads((out / "manifest.json").read_text())
    assert sum(e["rows"] for e in man["files"] if e["path"].startswith("wds/")) == s["kept"]


def test_dataset_card_and_parquet_dataset(run_dir):
    """README.md in the output: funnel, drop reasons and licence mix, with counts that match the
    Parquet outputs; kept/ is one Parquet dataset with one schema (what
    ``datasets.load_dataset("parquet", ...)`` reads)."""
    from collections import Counter

    import pyarrow.dataset as ds

    out, summary = run_dir
    card = (out / "README.md").read_text()
    for title in ("## Funnel", "## Drop reasons", "## Licence mix", "## Duplicates", "## Loading"):
        assert title in card
    for st in summary["stages"]:
        assert f"| {st['stage']} | {st['rows_in']} | {st['kept']} |" in card
    dropped = pq.read_table(out / "dropped")
    for reason, n in Counter(dropped.column("drop_reason").to_pylist()).items():
        assert f"| {reason} | {n} |" in card
    kept_parts = sorted((out / "kept").glob("*.parquet"))
    schemas = {str(pq.read_schema(p)) for p in kept_parts}
    assert len(kept_parts) > 1 and len(schemas) == 1
    kept = ds.dataset(out / "kept", format="parquet").to_table()
    assert kept.num_rows == summary["kept"]
    for lic, n in Counter(kept.column("license_spdx").to_pylist()).items():
        assert f"| {lic} | {n} |" in card
    # resolution statistics of the kept rows: 5th / 50th / 95th percentiles recomputed here
    w = np.asarray(kept.column("width").to_numpy(), float)
    h = np.asarray(kept.column("height").to_numpy(), float)
    fmt = lambda x: " / ".join(f"{v:.0f}" if v >= 10 else f"{v:.2f}" for v in np.percentile(x, [5, 50, 95]))  # noqa: E731 # fmt: skip
    assert "## Resolution (kept rows" in card
    assert f"- shorter side: {fmt(np.minimum(w, h))} px" in card
    assert f"- aspect ratio (long / short): {fmt(np.maximum(w, h) / np.minimum(w, h))}" in card


def test_kept_rows_load_with_hf_datasets(run_dir, tmp_path, monkeypatch):
    """The dataset card's loading line works: ``datasets.load_dataset("parquet", ...)`` over
    kept/ gives every kept row once, with the Parquet outputs' columns and values."""
    datasets = pytest.importorskip("datasets")
    import pyarrow.dataset as ds

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out, summary = run_dir
    got = datasets.load_dataset(
        "parquet",
        data_files={"train": str(out / "kept" / "*.parquet")},
        cache_dir=str(tmp_path / "hf-cache"),
    )["train"]
    kept = ds.dataset(out / "kept", format="parquet").to_table()
    assert got.num_rows == summary["kept"] == kept.num_rows > 0
    assert set(got.column_names) == set(kept.column_names)
    assert {"row_id", "dup_cluster", "license_spdx"} <= set(got.column_names)
    by_id = {r["row_id"]: r for r in kept.to_pylist()}
    assert len(by_id) == kept.num_rows  # row ids are unique
    rows = got.to_list()
    assert sorted(r["row_id"] for r in rows) == sorted(by_id)
    for r in rows:
        ref = by_id[r["row_id"]]
        for col in ("source_key", "dup_cluster", "license_spdx", "width", "height"):
            assert r[col] == ref[col], (col, r["row_id"])


def test_reduce_threads_follow_the_executor_and_are_restored():
    """A global reduce is a barrier: Ray's driver may use the CPUs its idle actors hold; the
    local single process stays at one thread; the previous thread count comes back."""
    import torch

    from diffkit.curate.executors import LocalExecutor, RayExecutor, torch_threads

    assert LocalExecutor(1).reduce_threads == 1
    assert LocalExecutor(2).reduce_threads == 2
    assert RayExecutor(num_cpus=2).reduce_threads == 2
    before = torch.get_num_threads()
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
