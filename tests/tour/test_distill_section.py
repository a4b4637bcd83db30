"""The distill tour section runs from the shipped zoo weights (fast mode)."""

from __future__ import annotations

import pytest

from diffkit import models
from diffkit.report import Report
from diffkit.tour import TourContext


def test_distill_section_fast(tmp_path):
    for name in ("digits-patch-tokenizer", "digits-maskgit", "digits-lifter", "digits-fpd"):
        ok, msg = models.verify(name)
        if not ok:
            pytest.skip(f"zoo weights missing: {msg}")
    from diffkit.tour import distill as section_mod

    rep = Report("t")
    sec = rep.section(section_mod.TITLE)
    section_mod.build(sec, TourContext(out_dir=tmp_path, fast=True))
    kinds = [k for k, _ in sec.blocks]
    assert kinds.count("image") == 3 and "table" in kinds
    rows = next(p for k, p in sec.blocks if k == "table")[0]
    assert [r["NFE"] for r in rows] == [16, 2, 1]
    assert all(0 <= r["class acc"] <= 1 for r in rows)
    rep.write(tmp_path)
