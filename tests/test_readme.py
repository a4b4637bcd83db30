"""The README's Python snippets run as written (on the shipped zoo) and get what they state.

Each runnable snippet ends in ``assert`` lines that show a reader what to expect; this test requires
them, so a snippet that runs but computes nothing useful fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_snippets():
    assert BLOCKS


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(code, tmp_path, monkeypatch):
    if code.startswith("# illustrative"):
        pytest.skip("needs real model weights; the same code path is tested on tiny models")
    assert re.search(r"^\s*assert ", code, flags=re.M), "a runnable snippet must assert its outcome"
    monkeypatch.chdir(tmp_path)  # an empty folder: recipes and weights come from the package
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
