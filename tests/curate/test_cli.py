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
