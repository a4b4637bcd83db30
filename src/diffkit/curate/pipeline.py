"""The pipeline: stage graph, on-disk layout, shard-level resume, errors table and stats.

Layout of ``out_dir`` (identical for every executor, so a local run can resume on Ray)::

    work/00_input/<fp>/<shard>.parquet            input shards (sorted by row_id); the one copy of
                                                  inline image bytes (files are read in place)
    work/<ii>_<stage>/<fp>/<shard>.parquet        map-stage outputs (+ <shard>.json timing)
    work/<ii>_<stage>/<fp>/keys/<shard>.parquet   global stages: compact keys per shard
    work/<ii>_<stage>/<fp>/decisions.parquet      global stages: one reduce
    work/<ii>_<stage>/<fp>/completions/<name>     empty completion markers (datatrove pattern)
    kept/ dropped/ wds/ manifest.json             outputs (Write stage; work/ is removed after a
                                                  run without failed rows unless keep_work)
    errors.parquet stats.json run.json            per-run tables

The unit of work is (stage fingerprint, shard). A stage's fingerprint hashes its version, config,
model revision and the upstream fingerprint, so a changed config re-runs only that stage and the
ones after it. Markers are written after the atomic data write, so a kill at any instant leaves
either a complete shard or none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffkit.core.io import atomic_write_bytes, atomic_write_json
from diffkit.curate.annotate import Embed, EmbedConfig, Safety, SafetyConfig
from diffkit.curate.caption import Recaption, RecaptionConfig
from diffkit.curate.dedup import ExactDedup, ExactDedupConfig, PhashDedup, PhashDedupConfig
from diffkit.curate.filters import (
    Governance,
    GovernanceConfig,
    Policy,
    PolicyConfig,
    PreFilter,
    PreFilterConfig,
)
from diffkit.curate.images import blob_ref, file_ref
from diffkit.curate.ingest import Ingest, IngestConfig
from diffkit.curate.locations import (
    STAGED_INPUT,
    is_remote,
    local_path,
    local_run_dir,
    publish,
    stage,
)
from diffkit.curate.schema import PIPELINE_VERSION, is_error_reason, join_side, pa
from diffkit.curate.semdedup import SemDedup, SemDedupConfig
from diffkit.curate.sources import InputConfig, read_input
from diffkit.curate.stage import Stage, StageContext, fingerprint_of
from diffkit.curate.write import Write, WriteConfig, write_card

log = logging.getLogger(__name__)

STAGES: dict[str, tuple[type[Stage], str]] = {
    "ingest": (Ingest, "ingest"),
    "prefilter": (PreFilter, "prefilter"),
    "exact_dedup": (ExactDedup, "exact_dedup"),
    "governance": (Governance, "governance"),
    "embed": (Embed, "embed"),
    "safety": (Safety, "safety"),
    "policy": (Policy, "policy"),
    "phash_dedup": (PhashDedup, "phash_dedup"),
    "emb_dedup": (SemDedup, "emb_dedup"),
    "recaption": (Recaption, "recaption"),
    "write": (Write, "write"),
}
DEFAULT_STAGES = tuple(STAGES)


@dataclass(frozen=True, kw_only=True)
class CurateConfig:
    """A whole curation run (what ``diffkit/recipes/curate/*.yaml`` holds).

    Attributes:
        stages: Stage names in order; ``ingest`` first, ``write`` last. Options: ingest,
            prefilter, exact_dedup, governance, embed, safety, policy, phash_dedup, emb_dedup,
            recaption, write. The default puts the policy before the near-dup stages so that an
            unsafe image is never chosen as a family's representative.
        shard_size: Rows per shard (the unit of work and of resume).
        input: How to read the input: metadata table and column names (InputConfig).
        ingest: Decode guards (IngestConfig).
        prefilter: Size, aspect, bytes, entropy and alt-text rules (PreFilterConfig).
        exact_dedup: Byte and pixel hashes (ExactDedupConfig).
        governance: Domains, licences, takedowns (GovernanceConfig).
        embed: Embedders (EmbedConfig).
        safety: Safety scorers (SafetyConfig).
        policy: Thresholds on scores (PolicyConfig).
        phash_dedup: pHash near-dup (PhashDedupConfig).
        emb_dedup: Embedding near-dup (SemDedupConfig).
        recaption: Captioners, QC and fusion (RecaptionConfig).
        write: Outputs (WriteConfig).
    """

    stages: tuple[str, ...] = DEFAULT_STAGES
    shard_size: int = 256
    input: InputConfig = field(default_factory=InputConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    prefilter: PreFilterConfig = field(default_factory=PreFilterConfig)
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    governance: GovernanceConfig = field(default_factory=GovernanceConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    policy: PolicyConfig = field(
        default_factory=lambda: PolicyConfig(max_scores={"score_proxy_marker": 0.5})
    )
    phash_dedup: PhashDedupConfig = field(default_factory=PhashDedupConfig)
    emb_dedup: SemDedupConfig = field(default_factory=SemDedupConfig)
    recaption: RecaptionConfig = field(default_factory=RecaptionConfig)
    write: WriteConfig = field(default_factory=WriteConfig)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"stages has unknown stage(s) {unknown}; options: {list(STAGES)}")
        if not self.stages or self.stages[0] != "ingest" or self.stages[-1] != "write":
            raise ValueError(
                f"stages must start with 'ingest' and end with 'write', got {list(self.stages)}"
            )
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages lists a stage twice: {list(self.stages)}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> CurateConfig:
    """CurateConfig from a YAML recipe (a shipped name such as ``local``, or a path) plus dotted
    ``key=value`` overrides."""
    from diffkit.config import apply_overrides, from_dict, read_recipe

    data = read_recipe("curate", path) if path else {}
    return from_dict(CurateConfig, apply_overrides(data, list(overrides)))


def _check_columns(stages: list[Stage]) -> None:
    """Configuration errors that can be found before any work: policy thresholds on scores that
    no stage writes, and embedding dedup without an embedder before it."""
    produced: set[str] = set()
    for st in stages:
        if isinstance(st, Safety):
            produced.update(st.output_columns())
        if isinstance(st, Policy) and st.config.missing == "error":
            for col in list(st.config.max_scores) + list(st.config.min_scores):
                if col not in produced:
                    raise ValueError(
                        f"policy threshold on {col!r}, but no earlier stage writes it; "
                        f"score columns available: {sorted(produced)}"
                    )
        if isinstance(st, Embed):
            produced.add(st.column)
        if isinstance(st, SemDedup) and not any(c.startswith("emb_") for c in produced):
            raise ValueError("emb_dedup needs the `embed` stage before it in `stages`")


@dataclass
class StageRun:
    """What the driver records about one stage in one run. ``wall_s`` is the stage's task
    seconds summed over workers (set-up and reading included) plus its driver-side reduce; the
    elapsed time of each segment is in the summary's ``segments``."""

    name: str
    fingerprint: str
    kind: str
    device: str
    shards_run: int = 0
    shards_skipped: int = 0
    wall_s: float = 0.0


class Pipeline:
    """An ordered list of stages plus the run driver (resume, errors, stats)."""

    def __init__(
        self, stages: list[Stage], shard_size: int = 256, config: CurateConfig | None = None
    ):
        if not stages or not isinstance(stages[0], Ingest) or not isinstance(stages[-1], Write):
            raise ValueError("a Pipeline must start with Ingest and end with Write")
        self.stages = stages
        self.shard_size = shard_size
        self.config = config
        _check_columns(stages)

    @classmethod
    def from_config(cls, cfg: CurateConfig) -> Pipeline:
        stages = [STAGES[name][0](getattr(cfg, STAGES[name][1])) for name in cfg.stages]
        return cls(stages, cfg.shard_size, cfg)

    # ------------------------------------------------------------------------------- helpers
    @staticmethod
    def _input_fingerprint(table) -> str:
        """Hash of the listing, the inline image bytes and, for images that are files, their
        size and mtime: replacing an image's pixels re-runs its shard (a content hash of every
        file would read the whole input once more on every resume)."""
        h = hashlib.sha256()
        cols = [c for c in table.schema.names if c != "image"]
        h.update(json.dumps(table.select(cols).to_pydict(), sort_keys=True, default=str).encode())
        for b in table.column("image").to_pylist():
            h.update(hashlib.sha256(b).digest() if b is not None else b"-")
        for uri in table.column("uri").to_pylist():
            try:
                st = os.stat(uri) if uri else None
            except OSError:
                st = None
            h.update(f"{st.st_size},{st.st_mtime_ns};".encode() if st else b"-;")
        return h.hexdigest()[:16]

    def _shards(self, n: int) -> list[str]:
        return [f"{i:05d}" for i in range((n + self.shard_size - 1) // self.shard_size or 1)]

    # ------------------------------------------------------------------------------- plan
    def _plan(self, out: Path, fp: str, retry: dict[str, set[str]]) -> list[tuple[Stage, Path]]:
        """Each stage's work folder (from the fingerprint chain); ``--retry-failed`` removes the
        completion markers of the failed shards from the failing stage on."""
        stage_dirs, upstream = [], fp
        invalid: set[str] = set()  # shards invalidated by --retry-failed from some stage on
        for i, st in enumerate(self.stages, start=1):
            sfp = st.fingerprint(upstream)
            sdir = out / "work" / f"{i:02d}_{st.name}" / sfp
            stage_dirs.append((st, sdir))
            invalid |= set(retry.get(st.name, ()))
            for s in invalid:
                for m in (sdir / "completions" / s, sdir / "keys" / "completions" / s):
                    m.unlink(missing_ok=True)
            if invalid and st.kind == "global":
                (sdir / "decisions.parquet").unlink(missing_ok=True)
                shutil.rmtree(sdir / "completions", ignore_errors=True)
            upstream = sfp
        return stage_dirs

    def _run_segments(self, executor, stage_dirs, in_dir: Path, shards, ctx, progress):
        """Cut the stages into segments at the barriers (a global stage's reduce; the duplicate
        clusters before the writer) and hand each segment's shard chains to the executor."""
        from diffkit.curate.executors import ShardChain, ShardTask, Step, torch_threads

        runs = {st.name: StageRun(st.name, sdir.name, st.kind, st.device()) for st, sdir in stage_dirs}  # fmt: skip
        segment: list[tuple[Step, list[ShardTask]]] = []
        segments: list[dict] = []

        def flush():
            if not segment:
                return
            steps = [step for step, _ in segment]
            chains = []
            for k, s in enumerate(shards):
                todo = [(i, ts[k]) for i, (_, ts) in enumerate(segment) if not Path(ts[k].marker).exists()]  # fmt: skip
                if todo:
                    chains.append(ShardChain(s, tuple(todo)))
            for step, ts in segment:
                if step.mode != "keys":
                    run = runs[step.stage.name]
                    run.shards_run = sum(not Path(t.marker).exists() for t in ts)
                    run.shards_skipped = len(ts) - run.shards_run
            report = None
            if progress:

                def report(i, d, t):  # noqa: E306
                    progress(steps[i].stage.name, d, t)

            t0 = time.perf_counter()
            for i, info in executor.run_segment(steps, chains, ctx, report):
                runs[steps[i].stage.name].wall_s += info.get("task_s", 0.0)
            names = list(dict.fromkeys(f"{st.stage.name}:{st.mode}" for st in steps))
            segments.append({"steps": names, "shard_chains": len(chains), "wall_s": round(time.perf_counter() - t0, 4)})  # fmt: skip
            segment.clear()

        prev_dir = in_dir
        ingest_dir = stage_dirs[0][1]  # its shards hold the store-once side columns
        for st, sdir in stage_dirs:
            tasks = [
                ShardTask(s, str(prev_dir / f"{s}.parquet"), str(sdir / f"{s}.parquet"), str(sdir / "completions" / s))
                for s in shards
            ]  # fmt: skip
            if st.kind == "global":
                keys = [
                    ShardTask(t.shard, t.in_path, str(sdir / "keys" / f"{t.shard}.parquet"), str(sdir / "keys" / "completions" / t.shard))
                    for t in tasks
                ]  # fmt: skip
                segment.append((Step(st, "keys"), keys))
                flush()  # barrier: the reduce needs every shard's keys
                dec = sdir / "decisions.parquet"
                if not dec.exists():
                    import pyarrow.parquet as pq

                    t0 = time.perf_counter()
                    tables = [pq.read_table(t.out_path) for t in keys]
                    if st.reads_side:
                        tables = [join_side(tb, st.reads_side, ingest_dir / f"{t.shard}.parquet")
                                  for tb, t in zip(tables, keys)]  # fmt: skip
                    with torch_threads(getattr(executor, "reduce_threads", 1)):
                        _write_table(dec, st.reduce(tables))
                    runs[st.name].wall_s += time.perf_counter() - t0
                segment.append((Step(st, "apply", decisions=str(dec)), tasks))
            elif st.kind == "sink":
                flush()  # barrier: duplicate clusters span every shard
                t0 = time.perf_counter()
                dup = _dup_clusters(sdir / "dup_clusters.parquet", prev_dir, shards)
                runs[st.name].wall_s += time.perf_counter() - t0
                extra = {"fingerprint": sdir.name, "dup_clusters": str(dup)}
                segment.append((Step(st, "sink", extra=extra), tasks))
            else:
                segment.append((Step(st, "map"), tasks))
            prev_dir = sdir
        flush()
        return [runs[st.name] for st, _ in stage_dirs], segments

    # ------------------------------------------------------------------------------- run
    def run(
        self,
        input_path: str | Path,
        out_dir: str | Path,
        executor=None,
        *,
        retry_failed: bool = False,
        progress: Callable[[str, int, int], None] | None = None,
        keep_work: bool = False,
        local_dir: str | Path | None = None,
    ) -> dict:
        """Run (or resume) the pipeline; returns the run summary written to ``stats.json``.

        ``out_dir/work`` (intermediate shards) is removed after a run without failed rows unless
        ``keep_work``; with failed rows it stays so that ``retry_failed`` reuses it.
        ``input_path``, ``out_dir`` and the metadata table may be fsspec URLs (``memory://``,
        ``s3://``...): see :mod:`diffkit.curate.locations`; ``local_dir`` is then the local run
        folder (default: a cache folder named after ``out_dir``)."""
        from diffkit.curate.executors import LocalExecutor

        if is_remote(out_dir):
            local = Path(local_dir) if local_dir else local_run_dir(str(out_dir))
            summary = self.run(
                input_path, local, executor, retry_failed=retry_failed, progress=progress,
                keep_work=keep_work,
            )  # fmt: skip
            publish(local, str(out_dir))
            return summary
        executor = executor or LocalExecutor()
        out = local_path(out_dir)
        in_cfg = self.config.input if self.config is not None else InputConfig()
        in_local = local_path(input_path) if not is_remote(input_path) else None
        if in_local is None:
            in_local = stage(str(input_path), out.joinpath(*STAGED_INPUT))
        if in_cfg.metadata and is_remote(in_cfg.metadata):
            meta = stage(in_cfg.metadata, out.joinpath(*STAGED_INPUT, "_metadata"))
            in_cfg = dataclasses.replace(in_cfg, metadata=str(meta))
        table = read_input(in_local, in_cfg)  # configuration errors surface here
        out.mkdir(parents=True, exist_ok=True)
        prev = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
        attempt = int(prev.get("attempt", 0)) + (1 if retry_failed else 0)
        fp = fingerprint_of(
            PIPELINE_VERSION, "input", self._input_fingerprint(table), self.shard_size
        )
        shards = self._shards(table.num_rows)
        in_dir = out / "work" / "00_input" / fp
        for k, s in enumerate(shards):
            if not (in_dir / "completions" / s).exists():
                part = table.slice(k * self.shard_size, self.shard_size)
                shard_path = in_dir / f"{s}.parquet"
                refs = [
                    blob_ref(shard_path, j) if img is not None else (file_ref(u) if u else None)
                    for j, (img, u) in enumerate(
                        zip(part.column("image").to_pylist(), part.column("uri").to_pylist())
                    )
                ]
                part = part.append_column("image_ref", pa().array(refs, pa().string()))
                part = part.append_column(
                    "status", pa().array(["keep"] * part.num_rows, pa().string())
                )
                part = part.append_column(
                    "drop_stage", pa().array([None] * part.num_rows, pa().string())
                )
                part = part.append_column(
                    "drop_reason", pa().array([None] * part.num_rows, pa().string())
                )
                _write_table(in_dir / f"{s}.parquet", part)
                _touch(in_dir / "completions" / s)
        retry = _failed_shards(out) if retry_failed else {}
        ctx = StageContext(device="cpu", attempt=attempt, extra={"out_dir": str(out)})
        stage_dirs = self._plan(out, fp, retry)
        if hasattr(executor, "start"):
            executor.start(self.stages)
        runs, segments = self._run_segments(executor, stage_dirs, in_dir, shards, ctx, progress)
        prev_before_sink = stage_dirs[-2][1] if len(stage_dirs) > 1 else in_dir
        sink, sink_dir = stage_dirs[-1]
        files = [json.loads((sink_dir / f"{s}.json").read_text())["files"] for s in shards]
        sink.finalize(
            out,
            files,
            sink_dir.name,
            table.num_rows,
            inputs=[str(prev_before_sink / f"{s}.parquet") for s in shards],
            dup_clusters=str(sink_dir / "dup_clusters.parquet"),
        )
        summary = _summarise(out, stage_dirs, shards, runs, attempt, table.num_rows, segments)
        if sink.config.parquet:
            write_card(out, summary)
        if not keep_work and summary["errors"] == 0:
            shutil.rmtree(out / "work", ignore_errors=True)
        atomic_write_json(
            out / "run.json",
            {
                "attempt": attempt,
                "input": str(input_path),
                "fingerprints": {r.name: r.fingerprint for r in runs},
                "stage_dirs": [str(d.relative_to(out)) for _, d in stage_dirs],
                "config": _cfg_dict(self.config),
            },
        )
        return summary


def _cfg_dict(cfg):
    if cfg is None:
        return None
    from diffkit.curate.stage import _jsonable

    return _jsonable(cfg)


def _dup_clusters(path: Path, last_dir: Path, shards: list[str]) -> Path:
    """One ``dup_cluster`` label per row shared by every row that exact dedup (equal
    ``exact_group``), pHash near-dup (equal ``phash_cluster``) or embedding near-dup
    (``emb_dup_of`` links) put together: connected components, labelled by their smallest
    ``row_id``; null for singletons. Written once per sink fingerprint (resume-safe)."""
    if path.exists():
        return path
    import numpy as np
    import pyarrow.parquet as pq

    from diffkit.curate.dedup import union_find

    want = ("row_id", "exact_group", "phash_cluster", "emb_dup_of")
    parts = []
    for s in shards:
        f = last_dir / f"{s}.parquet"
        names = pq.read_schema(f).names
        parts.append(pq.read_table(f, columns=[c for c in want if c in names]))
    keys = pa().concat_tables(parts, promote_options="permissive")
    ids = keys.column("row_id").to_pylist()
    pos = {r: i for i, r in enumerate(ids)}
    ii, jj = [], []
    for col in ("exact_group", "phash_cluster"):
        if col in keys.column_names:
            first: dict = {}
            for i, v in enumerate(keys.column(col).to_pylist()):
                if v is not None:
                    ii.append(first.setdefault(v, i))
                    jj.append(i)
    if "emb_dup_of" in keys.column_names:
        for i, v in enumerate(keys.column("emb_dup_of").to_pylist()):
            if v is not None and v in pos:
                ii.append(pos[v])
                jj.append(i)
    roots = union_find(len(ids), np.asarray(ii, np.int64), np.asarray(jj, np.int64))
    members: dict[int, list[str]] = {}
    for i, r in enumerate(roots.tolist()):
        members.setdefault(r, []).append(ids[i])
    label = [min(members[r]) if len(members[r]) > 1 else None for r in roots.tolist()]
    _write_table(path, pa().table({"row_id": ids, "dup_cluster": pa().array(label, pa().string())}))
    return path


def _write_table(path: Path, table) -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def _touch(path: Path) -> None:
    atomic_write_bytes(path, b"")


def _failed_shards(out: Path) -> dict[str, set[str]]:
    p = out / "errors.parquet"
    if not p.is_file():
        return {}
    import pyarrow.parquet as pq

    res: dict[str, set[str]] = {}
    for r in pq.read_table(p).to_pylist():
        res.setdefault(r["stage"], set()).add(r["shard"])
    return res


def _summarise(out: Path, stage_dirs, shards, runs, attempt: int, n_in: int, segments=()) -> dict:
    """Per-stage stats (rows in/kept/dropped by reason and source, timing) and errors.parquet."""
    import pyarrow.parquet as pq

    stats, errors = [], []
    for (st, sdir), run in zip(stage_dirs, runs):
        if st.kind == "sink":
            continue
        rows_in = kept = 0
        by_reason: dict[str, int] = {}
        by_source: dict[str, dict[str, int]] = {}
        busy, n_rows = 0.0, 0
        for s in shards:
            t = pq.read_table(
                sdir / f"{s}.parquet",
                columns=["row_id", "source", "status", "drop_stage", "drop_reason"],
            )
            side = sdir / f"{s}.json"
            if side.is_file():
                info = json.loads(side.read_text())
                busy += info.get("seconds", 0.0)
                n_rows += info.get("rows", 0)
            for r in t.to_pylist():
                if r["drop_stage"] not in (None, st.name) and r["status"] == "drop":
                    continue  # dropped upstream: not an input of this stage
                rows_in += 1
                if r["status"] == "keep":
                    kept += 1
                    continue
                by_reason[r["drop_reason"]] = by_reason.get(r["drop_reason"], 0) + 1
                src = by_source.setdefault(r["source"] or "", {})
                src[r["drop_reason"]] = src.get(r["drop_reason"], 0) + 1
                if is_error_reason(r["drop_reason"]):
                    errors.append(
                        {
                            "stage": st.name,
                            "shard": s,
                            "row_id": r["row_id"],
                            "reason": r["drop_reason"],
                            "attempt": attempt,
                        }
                    )
        stats.append(
            {
                "stage": st.name,
                "kind": st.kind,
                "fingerprint": run.fingerprint,
                "device": run.device,
                "rows_in": rows_in,
                "kept": kept,
                "dropped": rows_in - kept,
                "dropped_by_reason": dict(sorted(by_reason.items())),
                "dropped_by_source": {
                    k: dict(sorted(v.items())) for k, v in sorted(by_source.items())
                },
                "shards_run": run.shards_run,
                "shards_skipped": run.shards_skipped,
                "wall_s": round(run.wall_s, 4),
                "busy_s": round(busy, 4),
                "rows_per_s": round(n_rows / busy, 2) if busy > 0 else None,
            }
        )
    err_schema = pa().schema(
        [
            ("stage", pa().string()),
            ("shard", pa().string()),
            ("row_id", pa().string()),
            ("reason", pa().string()),
            ("attempt", pa().int64()),
        ]
    )
    _write_table(out / "errors.parquet", pa().Table.from_pylist(errors, schema=err_schema))
    manifest = json.loads((out / "manifest.json").read_text())
    summary = {
        "rows_in": n_in,
        "kept": manifest["kept"],
        "dropped": manifest["dropped"],
        "errors": len(errors),
        "attempt": attempt,
        "stages": stats,
        "segments": list(segments),
        "load_avg": list(os.getloadavg()),
    }
    atomic_write_json(out / "stats.json", summary)
    return summary


def last_work_dir(out_dir: str | Path) -> Path | None:
    """The last non-sink stage output folder of the latest run (rows with image bytes)."""
    out = Path(out_dir)
    run = json.loads((out / "run.json").read_text())
    dirs = [out / d for d in run.get("stage_dirs", [])]
    dirs = [d for d in dirs if "_write" not in d.parent.name and d.is_dir()]
    return dirs[-1] if dirs else None


def concat_work(folder: Path, columns=None):
    import pyarrow.parquet as pq

    parts = sorted(p for p in folder.glob("*.parquet") if p.name != "decisions.parquet")
    return pa().concat_tables(
        [pq.read_table(p, columns=columns) for p in parts], promote_options="permissive"
    )
