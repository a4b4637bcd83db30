"""Kill-and-resume with a real subprocess killed by SIGKILL; and --retry-failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq


def _cmd(corpus, out, recipe, *extra):
    code = "from diffkit.cli import main; main()"
    return [sys.executable, "-c", code, "curate", "run", "--config", str(recipe), "--input", str(corpus),
            "--out", str(out), "--set", "shard_size=8", "--no-report", *extra]  # fmt: skip


def test_sigkill_then_resume_gives_byte_identical_manifest(corpus, tmp_path, recipe):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_cmd(corpus, ref, recipe), check=True, env=env, capture_output=True, timeout=300)
    out = tmp_path / "killed"
    p = subprocess.Popen(
        _cmd(corpus, out, recipe), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    # kill once the run is part-way: some shards of the embed stage done, the writers not yet
    while time.time() < deadline and p.poll() is None:
        done = list(out.glob("work/05_embed/*/completions/*"))
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert p.poll() is None, "run finished before it could be killed; make the corpus bigger"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists()
    r = subprocess.run(
        _cmd(corpus, out, recipe), env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "manifest.json").read_bytes() == (ref / "manifest.json").read_bytes()
    import json

    stats = json.loads((out / "stats.json").read_text())
    assert stats["stages"][0]["shards_skipped"] > 0  # the resumed run reused finished shards


def test_retry_failed_reprocesses_only_failed_rows(corpus, tmp_path, small_config):
    from diffkit.curate.pipeline import Pipeline

    cfg = small_config(**{"recaption.captioners": "[{name: vlm, kind: faulty}]"})
    out = tmp_path / "o"
    s1 = Pipeline.from_config(cfg).run(corpus, out)
    err = pq.read_table(out / "errors.parquet").to_pylist()
    assert s1["errors"] == len(err) > 0
    assert all(
        e["stage"] == "recaption" and e["reason"].startswith("error:recaption:RuntimeError")
        for e in err
    )
    s2 = Pipeline.from_config(cfg).run(corpus, out, retry_failed=True)
    assert s2["errors"] == 0 and s2["kept"] == s1["kept"] + len(err)
    ran = {st["stage"]: st["shards_run"] for st in s2["stages"]}
    assert (
        ran["ingest"] == 0
        and ran["embed"] == 0
        and 0 < ran["recaption"] <= len({e["shard"] for e in err})
    )
    kept = pq.read_table(out / "kept").to_pylist()
    statuses = {m["status"] for r in kept for m in (r["caption_meta"] or [])}
    assert "ok" in statuses and len(statuses) >= 3  # injected faults are caught by QC
