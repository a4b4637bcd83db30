from __future__ import annotations


def test_tour_section_runs_fast(tmp_path):
    from diffkit.report import Report
    from diffkit.tour import TourContext
    from diffkit.tour import curate as section_mod

    rep = Report("t")
    sec = rep.section(section_mod.TITLE)
    section_mod.build(sec, TourContext(out_dir=tmp_path, fast=True, seed=0))
    kinds = [k for k, _ in sec.blocks]
    assert kinds.count("image") >= 2 and "table" in kinds
    assert rep.write(tmp_path / "r").is_file()
