"""``diffkit curate report DIR``: the HTML run report, built with :mod:`diffkit.report`.

Funnel (rows in -> kept, dropped by reason at each stage), drops by reason and source, score
histograms, duplicate-cluster sizes, sample grids of kept and dropped images, throughput and
device per stage, and the errors table.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np

from diffkit.curate.images import image_bytes
from diffkit.curate.schema import pa


def _thumbs(images: list[bytes], size: int = 64):
    import torch
    from PIL import Image, ImageOps

    out = []
    for data in images:
        try:
            im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            im = ImageOps.pad(im, (size, size), color=(255, 255, 255))
        except Exception:
            im = Image.new("RGB", (size, size), (255, 0, 0))
        out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out) if out else None


def _work_rows(out: Path):
    """Rows of the last stage before the writers: from ``work/`` when it was kept, else from the
    kept/dropped outputs (images are then read from their files; inline ones only while
    ``work/`` exists)."""
    from diffkit.curate.pipeline import concat_work, last_work_dir

    d = last_work_dir(out) if (out / "work").is_dir() else None
    if d is not None:
        return concat_work(d)
    if not (out / "kept").is_dir():
        return None
    from diffkit.curate.evaluate import load_outputs

    rows = load_outputs(out)
    refs = [f"file:{u}" if u else None for u in rows.column("uri").to_pylist()]
    return rows.append_column("image_ref", pa().array(refs, pa().string()))


def build_report(
    out_dir: str | Path, section=None, max_images: int = 32, seed: int = 0
) -> Path | None:
    """Write ``<out_dir>/report/report.html``; or, given a report ``section``, add to it instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffkit.report import Report, make_grid

    out = Path(out_dir)
    stats_path = out / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(
            f"{out} has no stats.json: is it the --out folder of a finished `diffkit curate run`?"
        )
    stats = json.loads(stats_path.read_text())
    rep = None
    if section is None:
        rep = Report(
            "diffkit curate run report", f"Run folder `{out}`; attempt {stats['attempt']}."
        )
        section = rep.section("Funnel")
    section.text(
        f"**{stats['rows_in']}** rows in, **{stats['kept']}** kept, **{stats['dropped']}** dropped "
        f"(tombstones kept: in = kept + dropped), {stats['errors']} row errors."
    )
    section.table(
        [
            {
                "stage": s["stage"],
                "in": s["rows_in"],
                "kept": s["kept"],
                "dropped": s["dropped"],
                "reasons": ", ".join(f"{k}={v}" for k, v in s["dropped_by_reason"].items()) or "-",
                "device": s["device"],
                "rows/s (busy)": s["rows_per_s"] if s["rows_per_s"] is not None else "-",
                "wall s": s["wall_s"],
                "shards run/skipped": f"{s['shards_run']}/{s['shards_skipped']}",
            }
            for s in stats["stages"]
        ],
        "funnel, throughput and device per stage (this run; skipped shards were resumed)",
    )
    by_src: Counter = Counter()
    for s in stats["stages"]:
        for src, reasons in s["dropped_by_source"].items():
            for r, n in reasons.items():
                by_src[(src, r)] += n
    section.table(
        [{"source": s, "reason": r, "dropped": n} for (s, r), n in sorted(by_src.items())],
        "drops by reason and source",
    )
    rows = _work_rows(out)
    if rows is not None:
        scores = [c for c in rows.schema.names if c.startswith("score_")]
        if scores:
            fig, axes = plt.subplots(
                1, len(scores), figsize=(3.2 * len(scores), 2.6), squeeze=False
            )
            for ax, c in zip(axes[0], scores):
                v = np.asarray([x for x in rows.column(c).to_pylist() if x is not None], float)
                ax.hist(v, bins=30, color="#4472c4")
                ax.set_title(c, fontsize=8)
                ax.set_yscale("log")
            fig.tight_layout()
            section.figure(fig, "score histograms (rows that reached the safety stage)")
        if "width" in rows.schema.names:
            st = np.asarray(rows.column("status").to_pylist())
            w = np.asarray(rows.column("width").to_numpy(zero_copy_only=False), float)
            h = np.asarray(rows.column("height").to_numpy(zero_copy_only=False), float)
            ok = (st == "keep") & (w > 0) & (h > 0)
            if ok.any():
                w, h = w[ok], h[ok]
                side, ar = np.minimum(w, h), np.maximum(w, h) / np.minimum(w, h)
                pct = (5, 25, 50, 75, 95)
                section.table(
                    [
                        {"statistic": name, **{f"p{q}": round(float(v), 2) for q, v in
                                               zip(pct, np.percentile(x, pct))}}
                        for name, x in (("shorter side (px)", side), ("aspect (long/short)", ar),
                                        ("megapixels", w * h / 1e6))
                    ],
                    f"resolution and aspect ratio of the {int(ok.sum())} kept rows (percentiles)",
                )  # fmt: skip
        sizes = []
        for col in ("exact_group", "phash_cluster"):
            if col in rows.schema.names:
                cnt = Counter(v for v in rows.column(col).to_pylist() if v is not None)
                sizes.append((col, Counter(cnt.values())))
        if sizes:
            section.table(
                [
                    {"grouping": c, **{f"size {k}": v for k, v in sorted(h.items())[:8]}}
                    for c, h in sizes
                ],
                "duplicate-cluster size distribution (number of clusters of each size)",
            )
        rng = np.random.default_rng(seed)
        status = np.asarray(rows.column("status").to_pylist())
        for label, want in (("kept", "keep"), ("dropped", "drop")):
            idx = np.flatnonzero(status == want)
            if len(idx) == 0:
                continue
            pick = np.sort(rng.choice(idx, size=min(max_images, len(idx)), replace=False))
            t = rows.take(pa().array(pick))
            imgs = _thumbs([b or b"" for b in image_bytes(t)])
            cap = f"sample of {len(pick)} {label} rows"
            if want == "drop":
                cap += (
                    ": "
                    + ", ".join(f"{r}" for r in t.column("drop_reason").to_pylist()[:16])
                    + " ..."
                )
            section.image(make_grid(imgs, nrow=8, value_range=(-1, 1)), cap)
    if (out / "errors.parquet").is_file():
        import pyarrow.parquet as pq

        err = pq.read_table(out / "errors.parquet").to_pylist()
        if err:
            section.table(
                err[:20],
                f"errors.parquet: {len(err)} failed rows (first 20); retry with --retry-failed",
            )
    if rep is not None:
        return rep.write(out / "report")
    return None
