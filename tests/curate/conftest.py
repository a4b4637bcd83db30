"""Shared curate fixtures: one small generated corpus, tiny real-class HF models, one Ray session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from diffkit.config import RECIPES_DIR

RECIPE = RECIPES_DIR / "curate" / "local.yaml"


def _small_config(**over):
    from diffkit.curate.pipeline import load_config

    sets = [f"{k}={v}" for k, v in over.items()]
    return load_config(RECIPE, ["shard_size=16", *sets])


@pytest.fixture(scope="session")
def small_config():
    """``small_config(**{"a.b": value})``: the local recipe with 16-row shards plus overrides."""
    return _small_config


@pytest.fixture(scope="session")
def recipe() -> Path:
    return RECIPE


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from diffkit.curate.corpus import CorpusConfig, make_corpus

    root = tmp_path_factory.mktemp("corpus") / "c"
    make_corpus(root, CorpusConfig(n_base=8, seed=0))
    return root


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> str:
    """A random-init transformers CLIPModel + CLIPProcessor saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    d = tmp_path_factory.mktemp("clip")
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)} | {
        c + "</w>": 26 + i for i, c in enumerate(letters)
    }
    vocab |= {"<|startoftext|>": 52, "<|endoftext|>": 53}
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cfg = CLIPConfig(
        text_config=dict(vocab_size=54, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, bos_token_id=52,
                         eos_token_id=53, pad_token_id=53),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    out = d / "model"
    CLIPModel(cfg).save_pretrained(out)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory) -> str:
    """A random-init BlipForConditionalGeneration + BlipProcessor saved with save_pretrained."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    d = tmp_path_factory.mktemp("blip")
    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "a",
        "photo",
        "of",
        "the",
        "red",
        "cat",
        "dog",
        "tree",
    ]
    (d / "vocab.txt").write_text("\n".join(words))
    tok = BertTokenizer(str(d / "vocab.txt"))
    cfg = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=40, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0, eos_token_id=3),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    out = d / "model"
    BlipForConditionalGeneration(cfg).save_pretrained(out)
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    ).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def ray_session():
    """ONE local Ray for the whole test session (about 4 s and 1.6 GB here)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}},
    )  # fmt: skip
    yield ray
    ray.shutdown()
