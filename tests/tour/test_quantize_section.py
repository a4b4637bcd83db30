"""The quantize tour section runs from the shipped zoo weights (fast mode)."""

from __future__ import annotations

from diffkit.report import Report
from diffkit.tour import TourContext


def test_quantize_section_fast(tmp_path):
    from diffkit.tour import quantize as section_mod

    rep = Report("t")
    sec = rep.section(section_mod.TITLE)
    section_mod.build(sec, TourContext(out_dir=tmp_path, fast=True))
    kinds = [k for k, _ in sec.blocks]
    assert kinds.count("image") == 2 and kinds.count("table") == 2  # strip + per-chunk plot
    quality, speed = (p[0] for k, p in sec.blocks if k == "table")
    by = {r["method"]: r for r in quality}
    assert set(by) == {"RTN W4A8", "Q-ARVD W4A8"}
    for r in by.values():
        assert 0 < r["video MSE"] < 1 and 0.1 < r["bytes vs fp32"] < 0.2  # 4-bit codes + scales
    assert all(r["seconds"] > 0 for r in speed)
    rep.write(tmp_path)
