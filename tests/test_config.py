from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from diffkit import config as C


@dataclass(frozen=True, kw_only=True)
class Inner:
    """Inner.

    Attributes:
        k: an int.
    """

    k: int = 1


@dataclass(frozen=True, kw_only=True)
class Outer:
    """Outer settings.

    Attributes:
        lr: learning rate,
            spanning two lines.
        mode: one of a or b.
        bands: a tuple.
        inner: nested.
        maybe: optional float.
    """

    lr: float = 1e-3
    mode: Literal["a", "b"] = "a"
    bands: tuple[float, ...] = (0.1, 0.2)
    inner: Inner = Inner()
    maybe: float | None = None


def test_roundtrip_dict_yaml_overrides(tmp_path):
    cfg = Outer(lr=0.5, bands=(1.0,), inner=Inner(k=3))
    d = C.to_dict(cfg)
    assert d == {"lr": 0.5, "mode": "a", "bands": [1.0], "inner": {"k": 3}, "maybe": None}
    assert C.from_dict(Outer, d) == cfg
    d2 = C.apply_overrides(d, ["inner.k=7", "mode=b", "maybe=2"])
    back = C.from_dict(Outer, d2)
    assert back.inner.k == 7 and back.mode == "b" and back.maybe == 2.0
    C.save(back, tmp_path / "c.json")
    assert C.load(Outer, tmp_path / "c.json") == back
    (tmp_path / "r.yaml").write_text("lr: 3e-4  # comment\nbands: [0.02, 0.05]\n")
    assert C.from_dict(Outer, C.load_yaml(tmp_path / "r.yaml")).bands == (0.02, 0.05)


def test_errors_name_field_and_value():
    with pytest.raises(ValueError, match="unknown field.*lrr.*valid: bands"):
        C.from_dict(Outer, {"lrr": 1})
    with pytest.raises(ValueError, match="mode='c' is not one of"):
        C.from_dict(Outer, {"mode": "c"})
    with pytest.raises(ValueError, match=r"inner.k must be an integer"):
        C.from_dict(Outer, {"inner": {"k": "x"}})
    with pytest.raises(ValueError, match="key.sub=value"):
        C.apply_overrides({}, ["novalue"])


def test_field_docs():
    docs = C.field_docs(Outer)
    assert docs["lr"] == "learning rate, spanning two lines."
    assert set(docs) == {"lr", "mode", "bands", "inner", "maybe"}


def test_fixed_length_tuple_coerced_in_order():
    from diffkit.train import TrainConfig

    cfg = C.from_dict(TrainConfig, {"betas": [0.8, 0.95]})
    assert cfg.betas == (0.8, 0.95)
    with pytest.raises(ValueError, match="betas needs 2 items"):
        C.from_dict(TrainConfig, {"betas": [0.9]})


def test_recipes_resolve_by_name_or_path_and_never_fall_back(tmp_path):
    from diffkit.config import RECIPES_DIR, list_recipes, read_recipe, recipe_path

    assert {"sd15", "sdxl", "sd3"} <= set(list_recipes("align"))
    assert recipe_path("align", "sd15") == RECIPES_DIR / "align" / "sd15.yaml"
    assert recipe_path("align", "sd15.yaml") == RECIPES_DIR / "align" / "sd15.yaml"
    mine = tmp_path / "sd15.yaml"  # an existing file wins over the shipped name
    mine.write_text("resolution: 64\n")
    assert recipe_path("align", mine) == mine and read_recipe("align", mine) == {"resolution": 64}
    for bad in ("sd99", "recipes/align/sd15.yaml", tmp_path / "missing.yaml"):
        with pytest.raises(FileNotFoundError, match="shipped: .*sd15"):
            recipe_path("align", bad)
    with pytest.raises(ValueError, match="method='nope'"):
        list_recipes("nope")
