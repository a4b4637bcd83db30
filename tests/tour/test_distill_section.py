"""The distill tour section runs from the shipped zoo weights (fast mode)."""

from __future__ import annotations

from diffkit import models
from diffkit.report import Report
from diffkit.tour import TourContext


def test_distill_section_fast(tmp_path):
    for name in ("digits-patch-tokenizer", "digits-maskgit", "digits-lifter", "digits-fpd"):
        ok, msg = models.verify(name)
        assert ok, f"shipped zoo weights of {name} missing or altered: {msg}"
    from diffkit.tour import distill as section_mod

    rep = Report("t")
    sec = rep.section(section_mod.TITLE)
    section_mod.build(sec, TourContext(out_dir=tmp_path, fast=True))
    kinds = [k for k, _ in sec.blocks]
    assert kinds.count("image") == 3 and "table" in kinds
    rows = next(p for k, p in sec.blocks if k == "table")[0]
    assert [r["NFE"] for r in rows] == [16, 2, 1]
    teacher8, teacher1, student = rows
    # The shipped student is a real generator: it reads as its labels far above chance (0.1) and
    # samples faster than the 8-step teacher; the one-step teacher is the worse one.
    assert student["class acc"] > 0.8 and teacher8["class acc"] > 0.8
    assert student["KID (raw)"] < teacher1["KID (raw)"]
    rep.write(tmp_path)
