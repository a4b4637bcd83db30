"""``diffkit align`` stays light: its CLI module imports no torch, diffusers or pyarrow."""

from __future__ import annotations

import subprocess
import sys


def test_cli_module_imports_no_heavy_packages():
    code = (
        "import sys, diffkit.align.cli\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'pyarrow', 'ray') "
        "if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"importing diffkit.align.cli loaded {out}"


def test_lazy_public_names_resolve():
    import diffkit.align as align

    assert align.LinearDPOConfig.__name__ == "LinearDPOConfig"
    assert set(align.__all__) <= set(dir(align))
