"""The quantize CLI module is light: importing it (what `diffkit --help` does) loads no torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


def test_cli_module_imports_without_torch():
    code = (
        "import sys, diffkit.quantize.cli as c; "
        "assert c.app is not None; "
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
        "print(heavy)"
    )
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_package_names_resolve_lazily():
    import diffkit.quantize as q

    missing = [n for n in q.__all__ if getattr(q, n, None) is None]
    assert not missing, missing
