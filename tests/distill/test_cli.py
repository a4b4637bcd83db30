"""`diffkit distill` CLI and the recipes in recipes/distill/."""

from __future__ import annotations

import json

import pytest
from _amused_tiny import save_tiny_amused  # conftest.py puts this folder on sys.path

from diffkit import cli, models
from diffkit.config import RECIPES_DIR
from diffkit.distill.cli import _configs

RECIPES = sorted((RECIPES_DIR / "distill").glob("*.yaml"))


def _run(args):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    return e.value.code


def _need(*names):
    """The zoo weights ship with the repository (hash-checked): missing or altered is a failure."""
    for n in names:
        ok, msg = models.verify(n)
        assert ok, f"shipped zoo weights of {n} fail their hash check: {msg}"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_load(recipe):
    data, fpd, train = _configs(recipe, [])
    assert fpd.samples_per_group >= 2 and train.steps >= 1
    if "amused" in data:
        from diffkit import config as cfglib
        from diffkit.distill.amused_run import AmusedRunConfig

        assert cfglib.from_dict(AmusedRunConfig, data["amused"], "amused.").prompts
    text = recipe.read_text()
    for line in text.splitlines():  # every key is commented
        if line.strip() and not line.lstrip().startswith(("#", "-")):
            assert "#" in line, f"{recipe.name}: uncommented line {line!r}"


def test_bad_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fpd:\n  r_init: 2.0\n")
    assert _run(["distill", "--recipe", str(bad)]) == 2
    assert "r_init" in capsys.readouterr().err
    bad.write_text("fdp: {}\n")
    assert _run(["distill", "--recipe", str(bad)]) == 2


def test_help(capsys):
    assert _run(["distill", "--help"]) == 0
    assert "--recipe" in capsys.readouterr().out


def test_distill_digits_smoke(tmp_path, capsys):
    _need("digits-patch-tokenizer", "digits-maskgit", "digits-lifter")
    recipe = RECIPES[[p.name for p in RECIPES].index("digits.yaml")]
    code = _run(["distill", "--recipe", str(recipe), "--out", str(tmp_path),
                 "--set", "train.steps=2", "--set", "fpd.samples_per_group=2",
                 "--set", "train.batch_size=4", "--set", "eval_samples_per_class=6"])  # fmt: skip
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= m["eval"]["class_acc"] <= 1
    assert (tmp_path / "student" / "model.safetensors").is_file()
    assert (tmp_path / "samples.png").is_file()
    # the student's sampling mode follows its training routing (recipe: ste argmax)
    recorded = json.loads((tmp_path / "student" / "sampling.json").read_text())["sample_mode"]
    assert recorded == ("argmax" if "ste: argmax" in recipe.read_text() else "categorical")
    out = tmp_path / "grid.png"
    assert _run(["distill", "sample", "--model", str(tmp_path / "student"), "--out", str(out),
                 "--per-class", "2"]) == 0  # fmt: skip
    assert out.is_file()
    assert _run(["distill", "sample", "--model", str(tmp_path / "student"), "--out", str(out),
                 "--mode", "nearest"]) == 2  # fmt: skip
    assert "--mode" in capsys.readouterr().err
    assert _run(["distill", "sample", "--model", "digits-maskgit", "--steps", "2",
                 "--per-class", "1", "--out", str(out)]) == 0  # fmt: skip


def test_distill_amused_teacher_folder(tmp_path, capsys):
    """aMUSEd end to end: prompts from a text file, the EMA saved as the student, a
    self-contained one-step pipeline folder, and `distill sample --prompt` writing the same images
    as AmusedOneStepPipeline called from Python."""
    pytest.importorskip("diffusers")
    import numpy as np
    import torch
    from diffusers import UVit2DModel
    from PIL import Image

    from diffkit.core.io import load_tensors
    from diffkit.distill.amused_pipeline import AmusedOneStepPipeline
    from diffkit.train import latest_checkpoint

    save_tiny_amused(tmp_path / "amused", text_vocab=64, eos_token_id=1, tokenizer=True)
    (tmp_path / "prompts.txt").write_text("a cat\na dog\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"amused:\n  prompts: {tmp_path / 'prompts.txt'}\n  max_length: 8\n"
        "fpd:\n  samples_per_group: 2\n  teacher_guidance: 2.0\n  lifter:\n    space: pixel\n"
        "train:\n  steps: 3\n  batch_size: 2\n  lr: 0.01\n  ema_decay: 0.5\n"
    )
    student_dir = tmp_path / "out" / "student"
    code = _run(["distill", "--recipe", str(recipe), "--teacher", str(tmp_path / "amused"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    # the saved transformer is the EMA, not the raw weights
    saved = UVit2DModel.from_pretrained(student_dir / "transformer").state_dict()
    ckpt = latest_checkpoint(tmp_path / "out" / "run")
    ema, raw = load_tensors(ckpt / "ema.safetensors"), load_tensors(ckpt / "model.safetensors")
    assert all(torch.equal(v, ema[f"module.{k}"]) for k, v in saved.items())
    assert any(not torch.equal(v, raw[k]) for k, v in saved.items())
    # sampling mode and start state recorded beside it
    rec = json.loads((student_dir / "sampling.json").read_text())
    assert rec == {"sample_mode": "categorical", "r_init": 0.95}
    out = tmp_path / "imgs"
    assert _run(["distill", "sample", "--model", str(student_dir), "--prompt", "a dog",
                 "--prompt", "a cat", "--per-class", "2", "--seed", "3",
                 "--out", str(out)]) == 0  # fmt: skip
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["000_00.png", "000_01.png", "001_00.png", "001_01.png"]
    pipe = AmusedOneStepPipeline.from_pretrained(student_dir)
    want = pipe(["a dog", "a cat"], num_images_per_prompt=2,
                generator=torch.Generator().manual_seed(3)).images  # fmt: skip
    for f, img in zip(files, want):
        assert np.array_equal(np.asarray(Image.open(f)), np.asarray(img)), f.name
    assert len({np.asarray(Image.open(f)).tobytes() for f in files}) > 1
    # errors: no prompt for an aMUSEd student; a prompt for a digits student
    capsys.readouterr()
    assert _run(["distill", "sample", "--model", str(student_dir), "--out", str(out)]) == 2
    assert "--prompt" in capsys.readouterr().err
    assert _run(["distill", "sample", "--model", "digits-fpd", "--prompt", "a cat"]) == 2


def test_distill_amused_grid_mismatch_is_an_error(tmp_path):
    """A wrong amused.grid stops the run before training (it used to train with exit 0)."""
    pytest.importorskip("diffusers")
    from diffkit.distill.amused_run import distill_amused
    from diffkit.distill.fpd import FPDConfig
    from diffkit.train import TrainConfig

    save_tiny_amused(tmp_path / "amused", text_vocab=64, eos_token_id=1, tokenizer=True)
    opts = {"prompts": ["a cat"], "grid": [16, 16], "max_length": 8}
    with pytest.raises(ValueError, match=r"grid mismatch: grid=\[16, 16\].*sample_size=8"):
        distill_amused(tmp_path / "amused", opts, FPDConfig(), TrainConfig(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="amused.gird"):  # typos are named
        distill_amused(tmp_path / "amused", {"prompts": ["a"], "gird": [8, 8]}, FPDConfig(),
                       TrainConfig(), tmp_path / "out")  # fmt: skip


def test_distill_amused_rejects_data_options(tmp_path):
    """The aMUSEd runner has no real images: GAN and real positives are refused by name."""
    from diffkit.distill.amused_run import distill_amused
    from diffkit.distill.fpd import FPDConfig
    from diffkit.train import TrainConfig

    for cfg in (FPDConfig(gan_weight=1.0), FPDConfig(real_positives=4)):
        with pytest.raises(ValueError, match="real_positives: 0"):
            distill_amused(tmp_path, {}, cfg, TrainConfig(), tmp_path / "out")


def test_options_lists_documented_fields(capsys):
    assert _run(["distill", "options"]) == 0
    out = capsys.readouterr().out
    assert "r_init = 0.95: fraction of the student's input tokens" in out
    assert "fpd.lifter:" in out and "train:" in out


def test_recipe_matches_the_zoo_recipe():
    """recipes/distill/digits.yaml trains what scripts/train_zoo.py ships as digits-fpd."""
    import yaml

    from diffkit import config as cfglib
    from diffkit.distill import FPDConfig
    from diffkit.zoo.digits_fpd import FPD_CONFIG, TRAIN

    recipe = yaml.safe_load(RECIPES[[p.name for p in RECIPES].index("digits.yaml")].read_text())
    assert cfglib.from_dict(FPDConfig, recipe["fpd"]) == FPD_CONFIG
    for key, value in recipe["train"].items():
        got = getattr(TRAIN, key)
        assert (list(got) if isinstance(got, tuple) else got) == value, key


def test_cli_module_does_not_import_torch():
    """`diffkit distill --help` stays fast: the CLI table imports no torch (the package's names
    resolve lazily), while every exported name still resolves."""
    import subprocess
    import sys

    code = (
        "import sys, diffkit.distill.cli; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    from diffkit import distill

    for name in distill.__all__:
        assert getattr(distill, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        distill.Nope  # noqa: B018
