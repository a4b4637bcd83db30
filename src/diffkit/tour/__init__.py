"""``diffkit tour``: the main job. Runs every stage on the bundled tiny zoo and writes one report.

Each section is a module in this package defining ``TITLE``, ``ORDER`` (sort key) and
``build(section, ctx)``; sections are discovered, so a method adds its part of the tour by adding
one file here. A failing section is reported in the page (with its error) and does not stop the
others; the command then exits non-zero.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class TourContext:
    """What a section gets: where to write, how much work to do, a seed, and a progress hook."""

    out_dir: Path
    fast: bool = False
    seed: int = 0
    status: Callable[[str], None] = lambda msg: None
    shared: dict = field(default_factory=dict)


def sections() -> list:
    mods = []
    for info in pkgutil.iter_modules(__path__):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "build") and hasattr(mod, "TITLE"):
            mods.append(mod)
    return sorted(mods, key=lambda m: getattr(m, "ORDER", 100))


def run_tour(
    out_dir: str | Path,
    *,
    fast: bool = False,
    seed: int = 0,
    only: list[str] | None = None,
    status: Callable[[str], None] = lambda msg: None,
) -> tuple[Path, list[dict]]:
    """Build the tour report; returns (path to report.html, per-section summary rows)."""
    from diffkit.core.machine import machine_line
    from diffkit.report import Report

    out_dir = Path(out_dir)
    ctx = TourContext(out_dir=out_dir, fast=fast, seed=seed, status=status)
    rep = Report(
        "diffkit tour",
        "Every stage of diffkit run end to end on the bundled tiny model zoo. Every figure on this "
        f"page is measured in this run, on this machine: {machine_line()}"
        + (" (`--fast`: smaller sample counts, noisier figures)." if fast else "."),
    )
    summary = []
    for mod in sections():
        name = mod.__name__.rsplit(".", 1)[-1]
        if only and name not in only:
            continue
        sec = rep.section(mod.TITLE)
        status(f"{mod.TITLE} ...")
        t0 = time.perf_counter()
        try:
            mod.build(sec, ctx)
            ok, err = True, ""
        except Exception as e:  # keep the other sections
            log.error("tour section %s failed:\n%s", name, traceback.format_exc())
            sec.text(f"**This section failed:** `{type(e).__name__}: {e}`")
            ok, err = False, f"{type(e).__name__}: {e}"
        summary.append(
            {"section": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 1), "error": err}
        )
    rep.section("Run summary").table(summary)
    return rep.write(out_dir), summary
