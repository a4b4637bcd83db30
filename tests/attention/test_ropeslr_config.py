import dataclasses
from pathlib import Path

import pytest
import torch

from diffkit import config as cfglib
from diffkit.attention import RoPeSLRConfig
from diffkit.attention.ropeslr import AUTO_GATHER_MIN_TOKENS, resolve_backend
from diffkit.config import RECIPES_DIR

RECIPES = sorted((RECIPES_DIR / "attention").glob("*.yaml"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"density": 0.0}, "density=0.0"),
        ({"density": 1.5}, "density=1.5"),
        ({"block_size": 0}, "block_size=0"),
        ({"merge": "mass"}, "feature_map='elu1'"),
        ({"backend": "cuda"}, "backend='cuda'.*reference, flex, gather, triton, auto"),
        ({"rank": 7}, "rank=7"),
        ({"mass_lse": "approx"}, "mass_lse=.approx.*exact, estimate"),
    ],
)
def test_bad_values_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoPeSLRConfig(**kwargs)


def test_budget_and_rank_formulas():
    c = RoPeSLRConfig(budget="sqrt")
    assert abs(c.density_for(32760) - 0.1) < 1e-3
    assert c.density_for(118800) < c.density_for(75600) < 0.1
    assert RoPeSLRConfig().rank_for(128) == 64
    assert RoPeSLRConfig(rank_ref_tokens=118800).rank_for(128) == 72
    assert RoPeSLRConfig().rank_for(32) == 16


def test_fixed_length_tuples_round_trip_through_from_dict():
    """Regression: config.from_dict swapped value and type for fixed-length tuples."""
    c = cfglib.from_dict(RoPeSLRConfig, {"tile": [2, 4, 8], "dense_heads": [0, 3]})
    assert c.tile == (2, 4, 8) and c.dense_heads == (0, 3)
    assert cfglib.from_dict(RoPeSLRConfig, cfglib.to_dict(c)) == c


def _docs_options_table() -> dict[str, tuple[str, str]]:
    """{option: (default, meaning)} of the options table in docs/attention.md."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "attention.md").read_text()
    table = text.split("## Options (`RoPeSLRConfig`)", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) == 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2])
    return rows


def test_every_field_is_documented_with_its_default_in_the_docs():
    docs = cfglib.field_docs(RoPeSLRConfig)
    table = _docs_options_table()
    for f in dataclasses.fields(RoPeSLRConfig):
        assert docs.get(f.name, "").strip(), f"RoPeSLRConfig.{f.name} has no docstring entry"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        assert table.get(f.name) == (repr(default), docs[f.name]), f"docs table: {f.name}"


def test_auto_backend_is_gather_for_cpu_inference_and_reference_for_training():
    cfg = RoPeSLRConfig()
    assert (cfg.backend, cfg.block_size, cfg.tile) == ("auto", 128, (4, 4, 8))
    long = torch.zeros(1, 1, AUTO_GATHER_MIN_TOKENS, 8)
    short = torch.zeros(1, 1, AUTO_GATHER_MIN_TOKENS - 1, 8)
    with torch.no_grad():
        assert resolve_backend(cfg, long) == "gather"
        assert resolve_backend(cfg, short) == "reference"
        assert resolve_backend(RoPeSLRConfig(backend="reference"), long) == "reference"
        assert resolve_backend(RoPeSLRConfig(backend="flex"), long) == "flex"
    with torch.enable_grad():
        assert resolve_backend(cfg, long) == "reference"  # training: gather is forward-only
        assert resolve_backend(RoPeSLRConfig(backend="flex"), short) == "flex"


def _expect(value):
    """A YAML value as the config holds it (lists become tuples)."""
    return tuple(value) if isinstance(value, list) else value


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load_with_their_values(path):
    from diffkit.attention.recipe import Recipe

    data = cfglib.load_yaml(path)
    recipe = cfglib.from_dict(Recipe, data)
    for key, value in data.items():
        if isinstance(value, dict):  # a nested config: every key it sets
            sub = getattr(recipe, key)
            for k, v in value.items():
                assert getattr(sub, k) == _expect(v), f"{path.name}: {key}.{k}"
        else:
            assert getattr(recipe, key) == _expect(value), f"{path.name}: {key}"
    assert {"density", "backend"} <= set(data["ropeslr"])  # the recipe really sets them


def test_there_are_recipes():
    assert len(RECIPES) >= 2
