"""RayExecutor on Ray Data: same on-disk layout and identical kept/dropped sets as local."""

from __future__ import annotations

import pytest

from diffkit.curate.evaluate import load_outputs
from diffkit.curate.executors import RayExecutor
from diffkit.curate.pipeline import Pipeline


@pytest.mark.ray
def test_ray_local_parity(ray_session, corpus, tmp_path, small_config):
    # CPU tasks (ingest, prefilter), actor pools (embed, safety, recaption), global stages
    # (exact and pHash dedup) and the writer; 2 shards keep Ray Data's per-job overhead small.
    stages = (
        "[ingest, prefilter, exact_dedup, embed, safety, policy, phash_dedup, recaption, write]"
    )
    cfg = small_config(**{"stages": stages, "shard_size": 40})
    local = Pipeline.from_config(cfg).run(corpus, tmp_path / "local")
    ray_sum = Pipeline.from_config(cfg).run(corpus, tmp_path / "ray", RayExecutor(num_cpus=2))
    a, b = load_outputs(tmp_path / "local"), load_outputs(tmp_path / "ray")

    def sets(t):
        rows = t.to_pylist()
        return ({r["row_id"] for r in rows if r["status"] == "keep"},
                {(r["row_id"], r["drop_reason"]) for r in rows if r["status"] == "drop"})  # fmt: skip

    assert sets(a) == sets(b)
    assert (local["kept"], local["dropped"]) == (ray_sum["kept"], ray_sum["dropped"])
    la = sorted(
        p.relative_to(tmp_path / "local").as_posix()
        for p in (tmp_path / "local").rglob("*")
        if p.is_file() and "report" not in p.parts
    )
    lb = sorted(
        p.relative_to(tmp_path / "ray").as_posix()
        for p in (tmp_path / "ray").rglob("*")
        if p.is_file() and "report" not in p.parts
    )
    assert la == lb  # same on-disk layout
    assert (tmp_path / "local" / "manifest.json").read_bytes() == (
        tmp_path / "ray" / "manifest.json"
    ).read_bytes()
