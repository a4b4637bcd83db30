from __future__ import annotations

from diffkit.tour import run_tour, sections


def test_data_section_builds_report(tmp_path):
    path, summary = run_tour(tmp_path, fast=True, only=["data"])
    assert summary == [dict(summary[0], ok=True)] and summary[0]["section"] == "data"
    html = path.read_text()
    assert "FID floor" in html and html.count("data:image/png") >= 2
    assert (tmp_path / "report.md").is_file()


def test_sections_are_ordered_and_complete():
    mods = sections()
    assert mods[0].__name__.endswith(".data")
    for m in mods:
        assert isinstance(m.TITLE, str) and callable(m.build)
