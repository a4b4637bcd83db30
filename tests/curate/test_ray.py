"""RayExecutor: same on-disk layout and identical kept/dropped sets as local; one long-lived
actor pool runs every stage."""

from __future__ import annotations

import json
import os

import pytest

from diffkit.curate.evaluate import load_outputs
from diffkit.curate.executors import RayExecutor
from diffkit.curate.pipeline import Pipeline


@pytest.mark.ray
def test_ray_local_parity(ray_session, corpus, tmp_path, small_config):
    # CPU stages (ingest, prefilter), model stages (embed, safety, recaption), global stages
    # (exact and pHash dedup) and the writer, on 2 shards.
    stages = (
        "[ingest, prefilter, exact_dedup, embed, safety, policy, phash_dedup, recaption, write]"
    )
    cfg = small_config(**{"stages": stages, "shard_size": 40})
    local = Pipeline.from_config(cfg).run(corpus, tmp_path / "local")
    ex = RayExecutor(num_cpus=2)
    ray_sum = Pipeline.from_config(cfg).run(corpus, tmp_path / "ray", ex)
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

    # the same two actors ran every stage of every segment (models set up once per actor), not
    # the driver; a second run reuses them
    kept_work = Pipeline.from_config(cfg).run(corpus, tmp_path / "ray2", ex, keep_work=True)
    assert kept_work["kept"] == ray_sum["kept"]
    pids = {
        json.loads(p.read_text())["pid"]
        for p in (tmp_path / "ray2" / "work").rglob("*.json")
        if p.parent.name != "keys"
    }
    stages_seen = {p.parts[-3] for p in (tmp_path / "ray2" / "work").rglob("0*.json")}
    assert len(stages_seen) >= 7 and 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert pids <= {a_pid for a_pid in _actor_pids(ex)}
    ex.close()


def _actor_pids(ex):
    import ray

    return ray.get([a.pid.remote() for a in ex._actors])


@pytest.mark.ray
def test_ray_gpu_need_beyond_the_cluster_is_an_error(ray_session):
    # actors that ask for more GPUs than the cluster has would wait forever
    ex = RayExecutor(num_cpus=2, gpus_per_worker=0.5)
    with pytest.raises(ValueError, match="GPU per actor"):
        ex.start([])
    assert ex._actors == []
    with pytest.raises(ValueError, match="workers"):
        RayExecutor(workers=-1)


@pytest.mark.ray
def test_ray_resumes_a_local_run_mid_segment(ray_session, corpus, tmp_path, small_config):
    # a local run interrupted inside a segment (one shard lacks pHash apply and everything
    # after it) is finished by Ray: chains start at each shard's first missing step
    stages = (
        "[ingest, prefilter, exact_dedup, embed, safety, policy, phash_dedup, recaption, write]"
    )
    cfg = small_config(**{"stages": stages, "shard_size": 40})
    out = tmp_path / "run"
    Pipeline.from_config(cfg).run(corpus, out, keep_work=True)
    manifest = (out / "manifest.json").read_bytes()
    work = out / "work"
    for pattern in ("*_phash_dedup/*/completions/00001", "*_recaption/*/completions/00001",
                    "*_write/*/completions/*"):  # fmt: skip
        for m in work.glob(pattern):
            m.unlink()
    (out / "manifest.json").unlink()
    ex = RayExecutor(num_cpus=2)
    s = Pipeline.from_config(cfg).run(corpus, out, ex)
    ex.close()
    ran = {st["stage"]: st["shards_run"] for st in s["stages"]}
    assert ran["ingest"] == ran["embed"] == 0 and ran["phash_dedup"] == ran["recaption"] == 1
    assert (out / "manifest.json").read_bytes() == manifest
