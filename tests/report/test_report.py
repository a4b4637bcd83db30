from __future__ import annotations

import numpy as np
import pytest
import torch

from diffkit.report import Report, make_grid, plot_lines, video_strip


def test_grid_shapes_and_values():
    imgs = torch.full((5, 1, 4, 4), 1.0)
    g = make_grid(imgs, nrow=3, pad=1)
    assert g.shape == (2 * 5 + 1, 3 * 5 + 1, 3) and g.dtype == np.uint8
    assert g[1, 1].tolist() == [255, 255, 255]
    s = video_strip(torch.zeros(2, 3, 1, 4, 4) - 1, pad=0)
    assert s.shape == (8, 12, 3) and s.max() == 0
    with pytest.raises(ValueError, match="N, C, H, W"):
        make_grid(torch.zeros(4, 4))


def test_report_writes_self_contained_html_and_markdown(tmp_path):
    rep = Report("t", "intro with `code`")
    sec = rep.section("S <1>")
    sec.text("**bold** [link](http://x)")
    sec.table([{"a": 1, "b": 0.000012345}, {"a": 2, "c": "x"}], "cap")
    sec.image(make_grid(torch.zeros(2, 1, 4, 4)), "grid")
    sec.figure(plot_lines({"l": ([1, 2], [3, 4])}, "x", "y"), "plot")
    path = rep.write(tmp_path)
    html = path.read_text()
    assert (
        html.count("data:image/png;base64,") == 2
        and "S &lt;1&gt;" in html
        and "<strong>bold</strong>" in html
    )
    md = (tmp_path / "report.md").read_text()
    assert "| a | b | c |" in md and "1.23e-05" in md and md.count("](figures/") == 2
    assert len(list((tmp_path / "figures").glob("*.png"))) == 2


def test_markdown_is_rendered_by_a_real_renderer(tmp_path):
    """Italic, lists, escaped HTML and markup in captions and cells render (not raw asterisks)."""
    rep = Report("t")
    sec = rep.section("s")
    sec.text("*italic* and **bold**, `a*b*c` stays code\n\n- one\n- two\n\n<script>x</script>")
    sec.table([{"method": "**ours**", "KID (×10³)": 1.5}], "measured *in this run*")
    sec.image(make_grid(torch.zeros(1, 1, 2, 2)), "a *caption*")
    html = rep.write(tmp_path).read_text()
    assert "<em>italic</em>" in html and "<strong>bold</strong>" in html
    assert "<code>a*b*c</code>" in html and "<li>one</li>" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<td><strong>ours</strong></td>" in html
    assert "<caption>measured <em>in this run</em></caption>" in html
    assert "<figcaption>a <em>caption</em></figcaption>" in html
    assert "*italic*" not in html.split("<body>")[1]
