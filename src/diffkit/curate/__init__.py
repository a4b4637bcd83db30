"""MONET-style image-text curation (MONET, arXiv 2605.21272): stages over Arrow shards,
score-first-decide-later, tombstones with reasons, local or Ray executors, shard-level resume.

>>> from diffkit import curate
>>> cfg = curate.load_config("local")
>>> curate.Pipeline.from_config(cfg).run("corpus/", "out/curated")   # LocalExecutor by default

Names are resolved lazily so ``import diffkit.curate`` imports neither pyarrow nor Ray.
"""

from __future__ import annotations

from diffkit.lazy import lazy_exports

_EXPORTS = {
    "Stage": "stage",
    "StageContext": "stage",
    "Resources": "stage",
    "Ingest": "ingest",
    "IngestConfig": "ingest",
    "read_input": "sources",
    "InputConfig": "sources",
    "PreFilter": "filters",
    "PreFilterConfig": "filters",
    "Governance": "filters",
    "GovernanceConfig": "filters",
    "Policy": "filters",
    "PolicyConfig": "filters",
    "registered_domain": "filters",
    "ExactDedup": "dedup",
    "ExactDedupConfig": "dedup",
    "PhashDedup": "dedup",
    "PhashDedupConfig": "dedup",
    "near_pairs": "dedup",
    "brute_force_pairs": "dedup",
    "union_find": "dedup",
    "SemDedup": "semdedup",
    "SemDedupConfig": "semdedup",
    "Embed": "annotate",
    "EmbedConfig": "annotate",
    "Safety": "annotate",
    "SafetyConfig": "annotate",
    "Recaption": "caption",
    "RecaptionConfig": "caption",
    "CaptionerSpec": "caption",
    "Write": "write",
    "WriteConfig": "write",
    "Pipeline": "pipeline",
    "CurateConfig": "pipeline",
    "load_config": "pipeline",
    "LocalExecutor": "executors",
    "RayExecutor": "executors",
    "make_corpus": "corpus",
    "CorpusConfig": "corpus",
    "evaluate_dedup": "evaluate",
    "build_report": "report",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
