"""The distill tour section runs from the shipped zoo weights (fast mode)."""

from __future__ import annotations

from diffkit import models
from diffkit.report import Report
from diffkit.tour import TourContext


def test_distill_section_fast(tmp_path):
    names = ("digits-patch-tokenizer", "digits-maskgit", "digits-lifter", "digits-fpd",
             "digits-fpd-datafree")  # fmt: skip
    for name in names:
        ok, msg = models.verify(name)
        assert ok, f"shipped zoo weights of {name} missing or altered: {msg}"
    from diffkit.tour import distill as section_mod

    rep = Report("t")
    sec = rep.section(section_mod.TITLE)
    section_mod.build(sec, TourContext(out_dir=tmp_path, fast=True))
    kinds = [k for k, _ in sec.blocks]
    assert kinds.count("image") == 4 and "table" in kinds
    rows = next(p for k, p in sec.blocks if k == "table")[0]
    assert [r["NFE"] for r in rows] == [16, 2, 1, 1]
    teacher8, teacher1, datafree, student = rows
    assert "data-free" in datafree["method"] and "real images" in student["method"]
    # Both shipped students are real generators: they read as their labels far above chance (0.1);
    # the one-step teacher is the worse one.
    for r in (teacher8, datafree, student):
        assert r["class acc"] > 0.8, r
    assert datafree["KID (raw)"] < teacher1["KID (raw)"]
    assert student["KID (raw)"] < teacher1["KID (raw)"]
    rep.write(tmp_path)
