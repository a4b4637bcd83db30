from __future__ import annotations

import pytest

from diffkit import models


def test_every_member_is_registered_with_importable_modules():
    names = models.list_models()
    assert "digit-classifier" in names
    import importlib

    for n in names:
        e = models.entry(n)
        importlib.import_module(e.module)
        for dep in e.depends_on:
            assert dep in names


def test_shipped_weights_verify_and_load():
    for n in models.list_models():
        ok, msg = models.verify(n)
        assert ok, f"{n}: {msg}"


def test_unknown_and_missing(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="available"):
        models.entry("nope")
    monkeypatch.setattr(models, "WEIGHTS_ROOT", tmp_path)
    with pytest.raises(FileNotFoundError, match="diffkit zoo train digit-classifier"):
        models.load("digit-classifier")
    ok, msg = models.verify("digit-classifier")
    assert not ok and "diffkit zoo train" in msg


def test_tampered_file_fails_verify(tmp_path, monkeypatch):
    import shutil

    src = models.entry("digit-classifier").path
    shutil.copytree(src, tmp_path / "digit-classifier")
    monkeypatch.setattr(models, "WEIGHTS_ROOT", tmp_path)
    assert models.verify("digit-classifier")[0]
    with open(tmp_path / "digit-classifier" / "config.json", "a") as f:
        f.write(" ")
    ok, msg = models.verify("digit-classifier")
    assert not ok and "does not match" in msg
