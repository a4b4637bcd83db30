"""Self-contained HTML reports (plots and image grids embedded as PNG) with a Markdown twin.

>>> rep = Report("diffkit tour")
>>> sec = rep.section("Data")
>>> sec.text("Bundled digits.")
>>> sec.table([{"split": "train", "n": 1438}])
>>> sec.image(make_grid(images, nrow=10), "digit grid")
>>> rep.write("out/tour")            # out/tour/report.html, report.md, figures/*.png
"""

from diffkit.report.builder import Report, Section, make_grid, plot_lines, video_strip

__all__ = ["Report", "Section", "make_grid", "plot_lines", "video_strip"]
