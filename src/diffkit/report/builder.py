"""Report builder: sections of text, tables, figures and image grids -> HTML + Markdown."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffkit.core.io import atomic_write_bytes, atomic_write_text


def make_grid(
    images: torch.Tensor, nrow: int = 8, pad: int = 1, value_range=(-1.0, 1.0), scale: int = 1
) -> np.ndarray:
    """Tile (N, C, H, W) images into one uint8 array (H', W', 3); C may be 1 or 3."""
    if images.dim() != 4:
        raise ValueError(f"make_grid expects (N, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().float().cpu()
    lo, hi = value_range
    x = ((x - lo) / (hi - lo)).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    n, _, h, w = x.shape
    nrow = max(1, min(nrow, n))
    ncol = (n + nrow - 1) // nrow
    grid = torch.ones(3, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[
            :,
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = x[i]
    arr = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if scale > 1:
        arr = arr.repeat(scale, 0).repeat(scale, 1)
    return arr


def video_strip(videos: torch.Tensor, pad: int = 1, scale: int = 1) -> np.ndarray:
    """(N, F, C, H, W) videos -> one grid with a row per video and a column per frame."""
    if videos.dim() != 5:
        raise ValueError(f"video_strip expects (N, F, C, H, W), got shape {tuple(videos.shape)}")
    n, f = videos.shape[:2]
    return make_grid(videos.flatten(0, 1), nrow=f, pad=pad, scale=scale)


def plot_lines(
    series: dict[str, tuple[list, list]],
    xlabel: str = "",
    ylabel: str = "",
    title: str = "",
    logx=False,
    logy=False,
    integer_x=False,
):
    """A matplotlib line plot of {label: (xs, ys)}; returns the Figure.

    ``integer_x`` puts ticks on whole numbers only (chunks, steps); a long title wraps."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title:
        ax.set_title("\n".join(textwrap.wrap(title, 48)), fontsize=10)
    if integer_x:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _png_bytes(obj: Any) -> bytes:
    """PNG bytes from a matplotlib Figure or an (H, W, 3) uint8 array."""
    if isinstance(obj, np.ndarray):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(obj).save(buf, format="PNG")
        return buf.getvalue()
    buf = io.BytesIO()
    obj.savefig(buf, format="png")
    import matplotlib.pyplot as plt

    plt.close(obj)
    return buf.getvalue()


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def text(self, markdown: str) -> Section:
        """Markdown text (CommonMark: emphasis, code, links, lists), rendered by markdown-it-py."""
        self.blocks.append(("text", markdown))
        return self

    def table(self, rows: list[dict[str, Any]], caption: str = "") -> Section:
        if rows:
            self.blocks.append(("table", (rows, caption)))
        return self

    def figure(self, fig, caption: str = "") -> Section:
        """A matplotlib Figure (closed after rendering)."""
        self.blocks.append(("image", (_png_bytes(fig), caption)))
        return self

    def image(self, array: np.ndarray, caption: str = "") -> Section:
        """An (H, W, 3) uint8 image, e.g. from :func:`make_grid`."""
        self.blocks.append(("image", (_png_bytes(array), caption)))
        return self


_MD = None


def _markdown():
    """One CommonMark renderer (markdown-it-py, with tables and strikethrough); raw HTML in the
    text is escaped, not passed through."""
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt

        _MD = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])
    return _MD


def _md_block(text: str) -> str:
    """Markdown text -> HTML block(s) (paragraphs, lists, emphasis, code, links)."""
    return _markdown().render(text).strip()


def _md_inline(text: str) -> str:
    """Markdown text -> inline HTML (for captions and table cells)."""
    return _markdown().renderInline(text)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}caption{caption-side:top;text-align:left;color:#555;padding:.2em 0}td:first-child,th:first-child{text-align:left}img{image-rendering:pixelated;max-width:100%}
figure{margin:.8em 0}figcaption{color:#555;font-size:.9em}code{background:#f3f3f3;padding:0 3px}"""


class Report:
    """Collects sections; :meth:`write` renders ``report.html`` (self-contained) and ``report.md``."""

    def __init__(self, title: str, intro: str = "") -> None:
        self.title = title
        self.intro = intro
        self.sections: list[Section] = []

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def write(self, out_dir: str | Path, name: str = "report") -> Path:
        out_dir = Path(out_dir)
        fig_dir = out_dir / "figures"
        h = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>",
        ]
        md = [f"# {self.title}", ""]
        if self.intro:
            h.append(_md_block(self.intro))
            md += [self.intro, ""]
        n_img = 0
        for si, sec in enumerate(self.sections):
            h.append(f"<h2>{html.escape(sec.title)}</h2>")
            md += [f"## {sec.title}", ""]
            for kind, payload in sec.blocks:
                if kind == "text":
                    h.append(_md_block(payload))
                    md += [payload, ""]
                elif kind == "table":
                    rows, caption = payload
                    cols = list(dict.fromkeys(k for r in rows for k in r))
                    h.append(
                        "<table>" + (f"<caption>{_md_inline(caption)}</caption>" if caption else "")
                    )
                    h.append(
                        "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in cols) + "</tr>"
                    )
                    for r in rows:
                        h.append(
                            "<tr>"
                            + "".join(f"<td>{_md_inline(_fmt(r.get(c, '')))}</td>" for c in cols)
                            + "</tr>"
                        )
                    h.append("</table>")
                    if caption:
                        md += [f"*{caption}*", ""]
                    md.append("| " + " | ".join(map(str, cols)) + " |")
                    md.append("|" + "---|" * len(cols))
                    md += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
                    md.append("")
                else:
                    png, caption = payload
                    n_img += 1
                    fname = f"s{si:02d}_{n_img:03d}.png"
                    atomic_write_bytes(fig_dir / fname, png)
                    b64 = base64.b64encode(png).decode()
                    h.append(
                        f"<figure><img src='data:image/png;base64,{b64}' alt='{html.escape(caption)}'>"
                        f"<figcaption>{_md_inline(caption)}</figcaption></figure>"
                    )
                    md += [f"![{caption}](figures/{fname})", ""]
        h.append("</body></html>")
        atomic_write_text(out_dir / f"{name}.md", "\n".join(md) + "\n")
        return atomic_write_text(out_dir / f"{name}.html", "\n".join(h) + "\n")
