from __future__ import annotations

import os

import pytest
import torch

from diffkit.core.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    load_model_dir,
    load_tensors,
    save_model_dir,
    save_tensors,
    sha256_file,
)


def test_model_dir_roundtrip(tmp_path):
    sd = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_model_dir(tmp_path / "m", sd, {"width": 3})
    back, cfg = load_model_dir(tmp_path / "m")
    assert cfg == {"width": 3}
    assert all(torch.equal(sd[k], back[k]) for k in sd)
    assert oct(os.stat(tmp_path / "m" / "model.safetensors").st_mode & 0o777) != oct(0o600)


def test_atomic_dir_keeps_old_on_failure(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as t:
        (t / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as t:
        (t / "a.txt").write_text("new")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp leftovers


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello" and len(list(tmp_path.iterdir())) == 1
    assert len(sha256_file(p)) == 64


def test_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_tensors(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model_dir(tmp_path)


def test_save_tensors_non_contiguous(tmp_path):
    t = torch.randn(4, 4).T
    save_tensors(tmp_path / "t.safetensors", {"t": t})
    assert torch.equal(load_tensors(tmp_path / "t.safetensors")["t"], t)
