"""Every shipped recipe loads into an AlignRecipe, and every key carries a comment."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffkit.align.cli import load_recipe
from diffkit.align.pipeline import AlignRecipe
from diffkit.config import RECIPES_DIR

RECIPES = RECIPES_DIR / "align"

FILES = sorted(RECIPES.glob("*.yaml"))


def test_recipes_exist():
    names = {p.stem for p in FILES}
    assert {"sd15", "sdxl", "sd3", "digits_unet", "digits_sd3"} <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_recipe_loads_and_is_commented(path: Path):
    r = load_recipe(path, [])
    assert isinstance(r, AlignRecipe)
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"{path.name}: uncommented key: {line}"


def test_paper_presets():
    sd15, sdxl, sd3 = (load_recipe(RECIPES / f"{n}.yaml", []) for n in ("sd15", "sdxl", "sd3"))
    assert (sd15.dpo.beta, sd15.dpo.eta, sd15.dpo.reference) == (100.0, 1e-3, "ema")
    assert (sdxl.dpo.beta, sdxl.dpo.eta, sdxl.dpo.reference) == (500.0, 0.0, "frozen")
    assert (sd3.dpo.beta, sd3.dpo.eta, sd3.train.warmup_steps) == (5000.0, 0.05, 100)
    assert {r.train.batch_size for r in (sd15, sdxl, sd3)} == {128}
    assert (sd15.dpo.cond_dropout, sdxl.dpo.cond_dropout, sd3.dpo.cond_dropout) == (0.2, 0.2, 0.0)


def test_overrides_and_unknown_keys():
    r = load_recipe(RECIPES / "sd15.yaml", ["dpo.beta=250", "train.steps=3"])
    assert r.dpo.beta == 250.0 and r.train.steps == 3
    with pytest.raises(ValueError, match="betta"):
        load_recipe(RECIPES / "sd15.yaml", ["dpo.betta=1"])
    with pytest.raises(ValueError, match="beta"):
        load_recipe(RECIPES / "sd15.yaml", ["dpo.beta=-1"])
