import pytest

from diffkit import config as cfglib
from diffkit.attention import RoPeSLRConfig
from diffkit.config import RECIPES_DIR

RECIPES = sorted((RECIPES_DIR / "attention").glob("*.yaml"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"density": 0.0}, "density=0.0"),
        ({"density": 1.5}, "density=1.5"),
        ({"block_size": 0}, "block_size=0"),
        ({"merge": "mass"}, "feature_map='elu1'"),
        ({"backend": "triton"}, "backend='triton'.*reference, flex, auto"),
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


def test_every_field_is_documented():
    docs = cfglib.field_docs(RoPeSLRConfig)
    import dataclasses

    assert {f.name for f in dataclasses.fields(RoPeSLRConfig)} <= set(docs)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipes_load(path):
    from diffkit.attention.cli import Recipe

    data = cfglib.load_yaml(path)
    recipe = cfglib.from_dict(Recipe, data)
    assert isinstance(recipe.ropeslr, RoPeSLRConfig)


def test_there_are_recipes():
    assert len(RECIPES) >= 2
