from __future__ import annotations

import os
import subprocess
import sys

import pytest

from diffkit.cli import main
from diffkit.config import RECIPES_DIR
from diffkit.curate.pipeline import CurateConfig, Pipeline, load_config

RECIPES = sorted((RECIPES_DIR / "curate").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, CurateConfig)
    if path.name == "models.yaml":  # real-model paths are placeholders: a config error, not a skip
        with pytest.raises(ValueError, match="does not exist"):
            Pipeline.from_config(cfg)
    else:
        Pipeline.from_config(cfg)


def _main(args):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code


def test_cli_make_corpus_run_report(tmp_path, capsys, recipe):
    corpus, out = tmp_path / "c", tmp_path / "o"
    assert _main(["curate", "make-corpus", "--out", str(corpus), "--n-base", "4"]) == 0
    code = _main(["curate", "run", "--config", str(recipe), "--input", str(corpus), "--out", str(out),
                  "--set", "shard_size=32", "--set", "write.faiss_index=false"])  # fmt: skip
    assert code == 0
    assert (out / "manifest.json").is_file() and (out / "report" / "report.html").is_file()
    (out / "report" / "report.html").unlink()
    assert _main(["curate", "report", str(out)]) == 0
    html = (out / "report" / "report.html").read_text()
    assert "Funnel" in html and "drops by reason and source" in html and "<img" in html
    assert "phash_cluster" in html  # the report reads the last stage's rows
    assert "resolution and aspect ratio of the" in html and "shorter side (px)" in html
    assert _main(["curate", "options"]) == 0
    assert "phash_dedup.max_distance" in capsys.readouterr().out
    assert _main(["curate", "run", "--input", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert (
        _main(
            [
                "curate",
                "run",
                "--input",
                str(corpus),
                "--out",
                str(out),
                "--set",
                "prefilter.max_aspect=0.5",
            ]
        )
        == 2
    )


def test_yaml_syntax_error_is_one_line_not_a_traceback(tmp_path, corpus):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shard_size: 16\nprefilter: {min_side: 10\nstages: [ingest\n")
    r = subprocess.run(
        [sys.executable, "-c", "from diffkit.cli import main; main()", "curate", "run",
         "--config", str(bad), "--input", str(corpus), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    err = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "bad.yaml" in err[0] and "line 3" in err[0] and "YAML syntax error" in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_metadata_column_map_and_keep_work(tmp_path, recipe):
    """`--metadata` + `--column` reach the reader; work/ goes unless `--keep-work`."""
    import io
    import json

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    root = tmp_path / "photos"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(3):
        small = np.random.default_rng(i).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        b = io.BytesIO()
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(b, "PNG")
        (root / "img" / f"{i}.png").write_bytes(b.getvalue())
        rows.append(
            {
                "file": f"img/{i}.png",
                "text": f"a red kite number {i}",
                "license": "CC BY 4.0",
                "id": i,
            }
        )
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = ["curate", "run", "--config", str(recipe), "--input", str(root),
            "--metadata", str(root / "pairs.jsonl"), "--column", "path=file",
            "--column", "caption=text", "--no-report", "--set", "write.faiss_index=false"]  # fmt: skip
    assert _main([*base, "--out", str(tmp_path / "a")]) == 0
    kept = pq.read_table(tmp_path / "a" / "kept").to_pylist()
    assert sorted(r["id"] for r in kept) == [0, 1, 2]
    assert all(r["alt_text"] == r["text"] == f"a red kite number {r['id']}" for r in kept)
    assert not (tmp_path / "a" / "work").exists() and (tmp_path / "a" / "README.md").is_file()
    assert _main([*base, "--out", str(tmp_path / "b"), "--keep-work"]) == 0
    assert (tmp_path / "b" / "work").is_dir()
    assert _main([*base, "--out", str(tmp_path / "c"), "--column", "nope"]) == 2
