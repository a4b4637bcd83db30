"""Tour section: curate the generated corpus with the local recipe; funnel, grids, dedup scores."""

from __future__ import annotations

from pathlib import Path

TITLE = "Curation (MONET-style pipeline)"
ORDER = 10


def build(section, ctx) -> None:
    import torch

    from diffkit.curate.corpus import CorpusConfig, make_corpus
    from diffkit.curate.evaluate import evaluate_dedup
    from diffkit.curate.pipeline import Pipeline, load_config
    from diffkit.curate.report import build_report

    torch.set_num_threads(1)
    root = Path(ctx.out_dir) / "curate"
    n_base = 16 if ctx.fast else 40
    ctx.status("curate: generating corpus")
    info = make_corpus(root / "corpus", CorpusConfig(n_base=n_base, seed=ctx.seed))
    section.text(
        f"A seeded corpus of {info['rows']} image-text rows built from procedural scenes and the photos "
        "bundled in scikit-image / scikit-learn, with planted exact and near duplicates, hard "
        "negatives, corrupt files, blocked domains, disallowed licences, proxy-unsafe images and junk "
        "captions (ground truth beside it). It is curated by the shipped recipe `local` with the "
        "LocalExecutor: decode guards, pre-filter, exact dedup (bytes then pixels), governance, "
        "embeddings (offline stand-in), safety (proxy marker + text blocklist), policy, near-dup "
        "(pHash and crop-window candidates, each verified by the aligned-thumbnail NCC), SemDeDup, recaptioning (template stand-in), writers. Every dropped "
        "row is kept as a tombstone with its reason."
    )
    ctx.status("curate: running the pipeline")
    out = root / "run"
    cfg = load_config("local", ["shard_size=64", "write.faiss_index=false"])
    Pipeline.from_config(cfg).run(root / "corpus", out)
    build_report(out, section=section, max_images=24, seed=ctx.seed)
    m = evaluate_dedup(out, root / "corpus")
    rows = [
        {"metric": "pairwise precision", "value": m["pairwise_precision"]},
        {"metric": "pairwise recall", "value": m["pairwise_recall"]},
        {"metric": "B-cubed F1", "value": m["bcubed_f1"]},
        {
            "metric": "hard-negative false merges",
            "value": f"{m['false_merges']} / {m['hard_negatives']}",
        },
    ]
    rows += [
        {"metric": f"recall: {k}", "value": f"{v['recall']:.2f} (n={v['n']})"}
        for k, v in m["per_transform_recall"].items()
    ]
    section.table(rows, "dedup quality against the planted ground truth (flips are scored apart)")
