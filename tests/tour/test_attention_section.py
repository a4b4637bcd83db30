"""The attention tour section runs from the shipped zoo weights (fast mode) and shows this run."""

from __future__ import annotations

from diffkit.report import Report
from diffkit.tour import TourContext


def test_attention_section_fast(tmp_path):
    from diffkit.tour import attention as section_mod

    rep = Report("t")
    sec = rep.section(section_mod.TITLE)
    section_mod.build(sec, TourContext(out_dir=tmp_path, fast=True))
    kinds = [k for k, _ in sec.blocks]
    assert kinds.count("image") == 1 and kinds.count("table") == 2
    layers, summary = (p[0] for k, p in sec.blocks if k == "table")
    errs = [r["relative MSE vs dense attention"] for r in layers]
    assert errs and all(0 < e < 1 for e in errs)  # sparse attention differs, but not wildly
    values = {r["quantity"]: r["value"] for r in summary}
    assert values["RMS pixel difference of the sampled videos, dense vs RoPeSLR"] > 0
    assert 0 < values["self-attention share of model FLOPs"] < 1
    # nothing read from the source tree's committed benchmark results
    assert all(
        "benchmarks/attention.py (a)" not in (p[1] if k == "table" else "") for k, p in sec.blocks
    )
    rep.write(tmp_path)
