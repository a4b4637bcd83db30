"""Dedup evaluation against the corpus ground truth: pairwise and B-cubed precision/recall,
per-transform recall, hard-negative false merges, and threshold sweeps (spec section (f)).

Predicted duplicate groups are the union of the pipeline's evidence: equal ``exact_group``, equal
``phash_cluster`` and ``emb_dup_of`` links. Only rows that reached dedup are scored (rows dropped
for decode, size, governance or safety reasons are removed from both sides). Flips are scored as a
separate, policy-decided family: they count as distinct images in the pairwise metrics and have
their own recall line.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from diffkit.curate.dedup import PhashDedupConfig, phash_clusters, priority_keys, union_find
from diffkit.curate.schema import pa

DEDUP_REASONS = ("exact_dup", "phash_dup", "emb_dup")


def load_outputs(out_dir: str | Path):
    """All rows (kept and dropped) of a finished run, from the Parquet datasets."""
    import pyarrow.parquet as pq

    out = Path(out_dir)
    parts = sorted((out / "kept").glob("*.parquet")) + sorted((out / "dropped").glob("*.parquet"))
    return pa().concat_tables([pq.read_table(p) for p in parts], promote_options="permissive")


def _gt_labels(gt_rows: list[dict]) -> list[str]:
    return [f"flip-{r['source_key']}" if r["role"] == "flip" else str(r["family"]) for r in gt_rows]


def cluster_metrics(pred: list, gold: list) -> dict:
    """Pairwise and B-cubed precision/recall/F1 of two labelings of the same items."""
    pc, gc = Counter(pred), Counter(gold)
    joint = Counter(zip(pred, gold))
    pairs = lambda c: sum(v * (v - 1) // 2 for v in c.values())  # noqa: E731
    tp, pp, gp = pairs(joint), pairs(pc), pairs(gc)
    n = len(pred)
    bp = sum(joint[(p, g)] / pc[p] for p, g in zip(pred, gold)) / max(n, 1)
    br = sum(joint[(p, g)] / gc[g] for p, g in zip(pred, gold)) / max(n, 1)
    return {
        "pairwise_precision": tp / pp if pp else 1.0,
        "pairwise_recall": tp / gp if gp else 1.0,
        "pairwise_pred_pairs": pp,
        "pairwise_true_pairs": gp,
        "bcubed_precision": bp,
        "bcubed_recall": br,
        "bcubed_f1": 2 * bp * br / (bp + br) if bp + br else 0.0,
        "n_items": n,
    }


def _transform_recall(pred: list, gt_rows: list[dict], by_strength: bool = False) -> dict:
    """Share of variant rows grouped with at least one other row of their family (keys
    ``transform`` or, ``by_strength``, ``transform@strength``)."""
    fam_members = defaultdict(set)
    for p, r in zip(pred, gt_rows):
        fam_members[r["family"]].add(p)
    by_family_pred = defaultdict(Counter)
    for p, r in zip(pred, gt_rows):
        by_family_pred[r["family"]][p] += 1
    hit, tot = Counter(), Counter()
    for p, r in zip(pred, gt_rows):
        if r["role"] not in ("near", "flip", "exact_bytes", "exact_pixels"):
            continue
        key = r["transform"] if r["role"] in ("near", "flip") else r["role"]
        if by_strength and r["role"] in ("near", "flip"):
            key = f"{key}@{r['strength']}"
        tot[key] += 1
        hit[key] += by_family_pred[r["family"]][p] > 1
    return {k: {"recall": hit[k] / tot[k], "n": tot[k]} for k in sorted(tot)}


def _hard_negative_merges(pred: list, gt_rows: list[dict]) -> dict:
    fam_preds = defaultdict(set)
    for p, r in zip(pred, gt_rows):
        fam_preds[r["family"]].add(p)
    n = merged = 0
    for p, r in zip(pred, gt_rows):
        if r["role"] == "hard_negative":
            n += 1
            merged += p in fam_preds.get(r["related_family"], set())
    return {"hard_negatives": n, "false_merges": merged}


def _population(table, gt_by_key):
    rows = table.to_pylist()
    keep = [
        r
        for r in rows
        if r["source_key"] in gt_by_key
        and (r["status"] == "keep" or r["drop_reason"] in DEDUP_REASONS)
    ]
    return keep, [gt_by_key[r["source_key"]] for r in keep]


def evaluate_dedup(out_dir: str | Path, corpus_dir: str | Path) -> dict:
    """Score a finished run on a generated corpus."""
    import pyarrow.parquet as pq

    table = load_outputs(out_dir)
    gt = {
        r["source_key"]: r
        for r in pq.read_table(Path(corpus_dir) / "ground_truth.parquet").to_pylist()
    }
    rows, gt_rows = _population(table, gt)
    ids = [r["row_id"] for r in rows]
    index = {i: k for k, i in enumerate(ids)}
    ii, jj = [], []
    for col in ("exact_group", "phash_cluster"):
        first = {}
        for k, r in enumerate(rows):
            v = r.get(col)
            if v is None:
                continue
            if v in first:
                ii.append(first[v])
                jj.append(k)
            else:
                first[v] = k
    for k, r in enumerate(rows):
        if r.get("emb_dup_of") in index:
            ii.append(index[r["emb_dup_of"]])
            jj.append(k)
    pred = union_find(len(rows), np.asarray(ii, np.int64), np.asarray(jj, np.int64)).tolist()
    res = cluster_metrics(*_no_flips(pred, _gt_labels(gt_rows), gt_rows))
    res["per_transform_recall"] = _transform_recall(pred, gt_rows)
    res["per_strength_recall"] = _transform_recall(pred, gt_rows, by_strength=True)
    res.update(_hard_negative_merges(pred, gt_rows))
    return res


def phash_sweep(
    ingest_table,
    corpus_dir,
    distances=range(0, 17),
    cfg: PhashDedupConfig | None = None,
    verify=(-1,),
) -> list[dict]:
    """pHash-only dedup metrics for each Hamming threshold, on every decodable, non-degenerate row.

    Exact byte copies are included (distance 0), so this scores what pHash alone would do."""
    import pyarrow.parquet as pq

    gt = {
        r["source_key"]: r
        for r in pq.read_table(Path(corpus_dir) / "ground_truth.parquet").to_pylist()
    }
    t = ingest_table.filter(
        pa().array(np.asarray(ingest_table.column("status").to_pylist()) == "keep")
    )
    cfg = cfg or PhashDedupConfig()
    t = t.filter(
        pa().array(np.asarray(t.column("hash_entropy").to_numpy()) >= cfg.degenerate_entropy)
    )
    pri = priority_keys(t, cfg.source_priority)
    order = sorted(range(t.num_rows), key=lambda i: pri[i])
    t = t.take(pa().array(order, pa().int64()))
    gt_rows = [gt[k] for k in t.column("source_key").to_pylist()]
    gold = _gt_labels(gt_rows)
    h, e = t.column("phash").to_numpy(), t.column("hash_entropy").to_numpy()
    dh = t.column("dhash").to_numpy()
    out = []
    for v in verify:
        for k in distances:
            c = PhashDedupConfig(
                max_distance=int(k),
                verify_dhash_distance=int(v),
                degenerate_entropy=cfg.degenerate_entropy,
            )
            pred = phash_clusters(h, e, c, dh).tolist()
            m = cluster_metrics(*_no_flips(pred, gold, gt_rows))
            m["max_distance"], m["verify_dhash_distance"] = int(k), int(v)
            m["per_transform_recall"] = _transform_recall(pred, gt_rows)
            m.update(_hard_negative_merges(pred, gt_rows))
            out.append(m)
    return out


def ncc_sweep(ingest_table, corpus_dir, cfg: PhashDedupConfig, thresholds) -> list[dict]:
    """pHash-stage dedup metrics of ``cfg`` (candidates from the full and crop-window pHashes,
    dHash checks as configured) for each aligned-NCC threshold in ``thresholds``, on every
    decodable row above ``cfg.degenerate_entropy`` (as :func:`phash_sweep`): the candidates are
    found and scored once, then cut at each threshold."""
    import pyarrow.parquet as pq

    from diffkit.curate.align import thumbs_array
    from diffkit.curate.dedup import bucket_pairs
    from diffkit.curate.schema import vectors

    gt = {
        r["source_key"]: r
        for r in pq.read_table(Path(corpus_dir) / "ground_truth.parquet").to_pylist()
    }
    t = ingest_table.filter(
        pa().array(np.asarray(ingest_table.column("status").to_pylist()) == "keep")
    )
    t = t.filter(  # like phash_sweep: the main bucket only (blank images fall to the prefilter)
        pa().array(np.asarray(t.column("hash_entropy").to_numpy()) >= cfg.degenerate_entropy)
    )
    pri = priority_keys(t, cfg.source_priority)
    t = t.take(pa().array(sorted(range(t.num_rows), key=lambda i: pri[i]), pa().int64()))
    gt_rows = [gt[k] for k in t.column("source_key").to_pylist()]
    gold = _gt_labels(gt_rows)
    crops = "phash_crops" in t.column_names and cfg.crop_max_distance >= 0
    buckets = list(
        bucket_pairs(
            t.column("phash").to_numpy(),
            t.column("hash_entropy").to_numpy(),
            cfg,
            t.column("dhash").to_numpy(),
            vectors(t.column("phash_crops"), np.uint64) if crops else None,
            vectors(t.column("dhash_crops"), np.uint64) if crops else None,
            thumbs_array(t.column("thumb")),
        )
    )
    out = []
    for tau in thresholds:
        ii, jj = [], []
        for idx, i, j, score in buckets:
            ok = np.ones(len(i), bool) if score is None else score >= tau
            ii.append(idx[i[ok]])
            jj.append(idx[j[ok]])
        pred = union_find(
            t.num_rows, np.concatenate(ii or [[]]).astype(np.int64),
            np.concatenate(jj or [[]]).astype(np.int64),
        ).tolist()  # fmt: skip
        m = cluster_metrics(*_no_flips(pred, gold, gt_rows))
        m["verify_ncc"] = float(tau)
        m["candidates"] = int(sum(len(b[1]) for b in buckets))
        m["per_transform_recall"] = _transform_recall(pred, gt_rows)
        m["per_strength_recall"] = _transform_recall(pred, gt_rows, by_strength=True)
        m.update(_hard_negative_merges(pred, gt_rows))
        out.append(m)
    return out


def crop_recall(per_strength: dict, max_cut: float = 0.1) -> float:
    """Recall over crop variants cutting at most ``max_cut`` of each side (pooled over
    strengths, weighted by their counts); nan when there are none."""
    sel = [
        v for k, v in per_strength.items()
        if k.startswith("crop@") and float(k.split("@")[1]) <= max_cut
    ]  # fmt: skip
    n = sum(v["n"] for v in sel)
    return sum(v["recall"] * v["n"] for v in sel) / n if n else float("nan")


def _no_flips(pred, gold, gt_rows):
    """Flips are a policy-decided family: left out of the pairwise and B-cubed scores."""
    keep = [k for k, r in enumerate(gt_rows) if r["role"] != "flip"]
    return [pred[k] for k in keep], [gold[k] for k in keep]
