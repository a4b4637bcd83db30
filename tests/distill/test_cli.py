"""`diffkit distill` CLI and the recipes in recipes/distill/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffkit import cli, models
from diffkit.distill.cli import _configs

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "distill").glob("*.yaml"))


def _run(args):
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    return e.value.code


def _need(*names):
    for n in names:
        ok, msg = models.verify(n)
        if not ok:
            pytest.skip(f"zoo weights missing: {msg}")


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_load(recipe):
    data, fpd, train = _configs(recipe, [])
    assert fpd.samples_per_group >= 2 and train.steps >= 1
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


def _tiny_amused_folder(root: Path) -> None:
    from diffusers import AmusedScheduler, UVit2DModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    UVit2DModel(
        hidden_size=8, use_bias=False, cond_embed_dim=8, micro_cond_encode_dim=2,
        micro_cond_embed_dim=10, encoder_hidden_size=8, vocab_size=32, codebook_size=8,
        in_channels=8, block_out_channels=8, num_res_blocks=1, downsample=True, upsample=True,
        block_num_heads=1, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
    ).save_pretrained(root / "transformer")  # fmt: skip
    AmusedScheduler(mask_token_id=31).save_pretrained(root / "scheduler")
    VQModel(
        act_fn="silu", block_out_channels=[8], down_block_types=["DownEncoderBlock2D"],
        in_channels=3, latent_channels=8, layers_per_block=1, norm_num_groups=8,
        num_vq_embeddings=8, out_channels=3, sample_size=8, up_block_types=["UpDecoderBlock2D"],
        mid_block_add_attention=False, lookup_from_codebook=True,
    ).save_pretrained(root / "vqvae")  # fmt: skip
    CLIPTextModelWithProjection(
        CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8,
                       intermediate_size=8, num_attention_heads=1, num_hidden_layers=1,
                       vocab_size=64, projection_dim=8)
    ).save_pretrained(root / "text_encoder")  # fmt: skip
    tk = root / "tokenizer"
    tk.mkdir()
    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tk / "vocab.json").write_text(json.dumps(vocab))
    (tk / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(tk / "vocab.json"), str(tk / "merges.txt")).save_pretrained(tk)


def test_distill_amused_teacher_folder(tmp_path):
    pytest.importorskip("diffusers")
    _tiny_amused_folder(tmp_path / "amused")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "amused:\n  prompts: [a cat, a dog]\n  grid: [8, 8]\n  max_length: 8\n"
        "fpd:\n  samples_per_group: 2\n  teacher_guidance: 2.0\n  lifter:\n    space: pixel\n"
        "train:\n  steps: 2\n  batch_size: 2\n  lr: 0.001\n"
    )
    code = _run(["distill", "--recipe", str(recipe), "--teacher", str(tmp_path / "amused"),
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    from diffusers import UVit2DModel

    UVit2DModel.from_pretrained(tmp_path / "out" / "student")


def test_options_lists_documented_fields(capsys):
    assert _run(["distill", "options"]) == 0
    out = capsys.readouterr().out
    assert "r_init = 0.95: fraction of the student's input tokens" in out
    assert "fpd.lifter:" in out and "train:" in out
