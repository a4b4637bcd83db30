"""The align zoo members: diffusers classes, save/load round trip, shipped weights."""

from __future__ import annotations

import pytest
import torch

from diffkit import models
from diffkit.models import digits_sd3, digits_unet


@pytest.mark.parametrize("mod", [digits_unet, digits_sd3], ids=["unet", "sd3"])
def test_round_trip_through_from_pretrained(mod, tmp_path):
    torch.manual_seed(0)
    m = mod.build(mod.DEFAULT_CONFIG).eval()
    assert type(m.model).__name__ in ("UNet2DConditionModel", "SD3Transformer2DModel")
    mod.save_dir(m, tmp_path / "m")
    back = mod.load_dir(tmp_path / "m").eval()
    x = torch.randn(3, 1, 16, 16)
    t = m.schedule.sample_t(3, torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2, 10])  # 10 = null label
    torch.testing.assert_close(m(x, t, y), back(x, t, y))


@pytest.mark.parametrize("name", ["digits-unet-eps", "digits-sd3-flow"])
def test_shipped_weights(name):
    ok, msg = models.verify(name)
    assert ok, msg
    files = [p for p in models.entry(name).path.rglob("*") if p.is_file()]
    assert all(p.stat().st_size < 4 * 2**20 for p in files)
    m = models.load(name)
    x = m.sample(torch.arange(4), steps=4, guidance=2.0, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 1, 16, 16) and torch.isfinite(x).all()
    assert models.metrics(name)["class_accuracy"] > 0.8
