"""The align tour section runs from the shipped zoo weights (fast mode)."""

from __future__ import annotations

from diffkit.tour import run_tour


def test_align_section_builds(tmp_path):
    path, summary = run_tour(tmp_path, fast=True, only=["align"])
    assert summary[0]["section"] == "align" and summary[0]["ok"], summary
    html = path.read_text()
    assert "projection reward" in html and html.count("data:image/png") >= 2
    assert "win-rate" in html
