"""The layering rule of docs/ARCHITECTURE.md, enforced by parsing imports."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "diffkit"
METHODS = {"align", "distill", "attention", "quantize", "curate"}
# Layers: core -> {models, data, config, report, train} -> methods -> {tour, zoo, cli}.
# Module files at the top of the package (train.py, config.py) are checked like packages.
ALLOWED = {
    "lazy": set(),  # lazy package namespaces (PEP 562): imports nothing of ours, usable anywhere
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "config": {"core"},
    "report": {"core"},
    "train": {"core", "config"},
    **{m: {"core", "models", "data", "config", "report", "train"} for m in METHODS},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: use absolute imports (diffkit.x), not relative ones")
        else:
            continue
        for n in names:
            parts = n.split(".")
            if parts[0] == "diffkit" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_layering_rule():
    violations = []
    for pkg, allowed in ALLOWED.items():
        folder = SRC / pkg
        files = list(folder.rglob("*.py")) if folder.is_dir() else [SRC / f"{pkg}.py"]
        for f in files:
            if not f.exists():
                continue
            bad = _imports(f) - allowed - {pkg, "lazy"}
            if bad:
                violations.append(f"{f.relative_to(SRC)} imports diffkit.{sorted(bad)}")
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_layering_test_catches_a_violation(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("from diffkit.align import something\nimport diffkit.core.rope\n")
    assert _imports(f) == {"align", "core"}


def test_top_level_import_is_light():
    import subprocess
    import sys

    code = "import sys, diffkit; heavy = [m for m in ('diffusers', 'transformers', 'accelerate', 'ray', 'matplotlib') if m in sys.modules]; print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_lazy_exports_resolve_on_first_access_and_name_the_package():
    import importlib
    import subprocess
    import sys

    code = (
        "import sys, diffkit.align as a; heavy = 'torch' in sys.modules; "
        "x = a.LinearDPOConfig; print(heavy, 'torch' in sys.modules, 'LinearDPOConfig' in vars(a), "
        "'LinearDPOConfig' in dir(a))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True", "True"]
    for pkg in ("align", "attention", "curate", "distill", "quantize"):
        mod = importlib.import_module(f"diffkit.{pkg}")
        for name in mod.__all__:  # every advertised name resolves
            assert getattr(mod, name) is not None, (pkg, name)
        try:
            mod.no_such_name  # noqa: B018
        except AttributeError as e:
            assert f"'diffkit.{pkg}'" in str(e) and "no_such_name" in str(e)
        else:
            raise AssertionError(f"diffkit.{pkg}.no_such_name resolved")
