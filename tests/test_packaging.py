"""The built wheel works without the source tree: recipes, zoo weights and the tour ship inside it."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding only the built diffkit wheel; its dependencies are borrowed from the
    test venv through a plain path entry (so the test venv's editable install is *not* active)."""
    tmp = tmp_path_factory.mktemp("wheel")
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp / "dist"), str(REPO)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (tmp / "dist").glob("diffkit-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps"]
        + ["--no-index", str(whl)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "_deps_from_test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, whl


def _run(venv: Path, cwd: Path, *args: str, timeout: int = 280) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    return subprocess.run(
        [str(venv / "bin" / "diffkit"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_wheel_ships_recipes_weights_and_metadata(wheel_venv):
    import zipfile

    _, whl = wheel_venv
    names = zipfile.ZipFile(whl).namelist()
    for method in ("align", "attention", "curate", "distill", "quantize"):
        assert any(n.startswith(f"diffkit/recipes/{method}/") for n in names), method
    assert "diffkit/py.typed" in names
    assert any(n.startswith("diffkit/models/weights/digit-classifier/") for n in names)
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)


def test_installed_wheel_runs_from_an_empty_folder(wheel_venv, tmp_path):
    venv, _ = wheel_venv
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import diffkit; print(diffkit.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(venv) in probe.stdout and str(REPO / "src") not in probe.stdout
    r = _run(venv, tmp_path, "align", "recipes")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "sd15" in r.stdout
    r = _run(venv, tmp_path, "zoo", "verify")
    assert r.returncode == 0, r.stdout[-2000:]
    r = _run(venv, tmp_path, "tour", "--fast", "--only", "data", "--only", "curate", "--out", "t")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    html = (tmp_path / "t" / "report.html").read_text()
    assert "This section failed" not in html and html.count("data:image/png") >= 2
