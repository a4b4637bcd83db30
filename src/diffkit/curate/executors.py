"""Executors: where the shard tasks of a pipeline segment run. Both share one on-disk layout.

The pipeline cuts its stage list into *segments* at the barriers that need every shard: the
reduce of a global stage and the duplicate-cluster labels before the writer. A segment is a list
of :class:`Step` (a stage in one mode: ``map``, ``keys``, ``apply`` or ``sink``) and one
:class:`ShardChain` per shard, the steps that shard still has to run (completion markers say
which are done). Every step still writes its own shard file and marker, so resume and the layout
do not depend on the executor; within a chain the table a step produced is handed to the next
step in memory instead of being read back.

``LocalExecutor`` (default, no Ray import) runs chains one after another in this process; with
``workers > 1`` it runs the segment step by step and sends the model-free steps to a process
pool (one stage copy set up per process). ``RayExecutor`` keeps one pool of long-lived Ray actors
for its whole life (one per CPU by default): every chain of a segment streams through the pool
(an idle actor takes the next shard), each actor sets each stage up once (models load once per
actor, not once per stage or segment), and the driver only runs the reduces between segments,
over compact keys (images never move). A reduce is a barrier, so it may use the executor's CPUs
as torch threads (``reduce_threads``: the NCC check of the near-duplicate stage); the local
executor's single process stays at one thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from diffkit.core.io import atomic_write_bytes, atomic_write_json
from diffkit.curate.schema import drop_side
from diffkit.curate.stage import Stage, StageContext

log = logging.getLogger(__name__)

Report = Callable[[int, int, int], None]  # (step index, shards done, shards total)


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: read ``in_path``, write ``out_path`` atomically, then touch ``marker``."""

    shard: str
    in_path: str
    out_path: str
    marker: str


@dataclass(frozen=True)
class Step:
    """A stage in one mode inside a segment; ``extra`` is merged into the worker's context."""

    stage: Stage
    mode: Literal["map", "keys", "apply", "sink"]
    decisions: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ShardChain:
    """The steps one shard still runs in a segment: ``(step index, task)`` pairs, in order."""

    shard: str
    tasks: tuple[tuple[int, ShardTask], ...]


_SETUP_CACHE: dict[tuple, Stage] = {}
_DECISIONS: dict[str, object] = {}


def _ready_stage(stage: Stage, ctx: StageContext) -> Stage:
    key = (type(stage).__name__, stage.fingerprint(), ctx.attempt, os.getpid())
    if key not in _SETUP_CACHE:
        stage.ensure_setup(ctx)
        _SETUP_CACHE[key] = stage
    return _SETUP_CACHE[key]


def _write(path: str, table) -> None:
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    atomic_write_bytes(path, buf.getvalue())


def _run_task(stage, mode, task: ShardTask, ctx: StageContext, decisions=None, table=None):
    """Run one shard task; returns ``(info, shard table written or None)``. ``table`` is the
    content of ``task.in_path`` when the caller already holds it."""
    import pyarrow.parquet as pq

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    t_task = time.perf_counter()
    stage = _ready_stage(stage, ctx)
    if table is None:
        table = pq.read_table(task.in_path)
    table = drop_side(table)  # stored once, in ingest's own output (schema.SIDE_COLUMNS)
    t0 = time.perf_counter()
    side = Path(task.out_path).with_suffix(".json")
    info = {"shard": task.shard, "rows": table.num_rows, "device": stage.device(), "pid": os.getpid()}  # fmt: skip
    out = None
    if mode == "map":
        out = stage.process(table)
    elif mode == "keys":
        _write(task.out_path, stage.emit_keys(table))
        side = None
    elif mode == "apply":
        if decisions not in _DECISIONS:
            _DECISIONS.clear()
            _DECISIONS[decisions] = pq.read_table(decisions)
        out = stage.apply(table, _DECISIONS[decisions])
    elif mode == "sink":
        out_dir = Path(ctx.extra["out_dir"])
        info["files"] = stage.write_shard(
            table,
            task.shard,
            out_dir,
            ctx.extra.get("fingerprint", ""),
            dup_clusters=ctx.extra.get("dup_clusters"),
        )
    else:  # pragma: no cover
        raise ValueError(f"unknown task mode {mode!r}")
    if out is not None:
        _write(task.out_path, out)
    info["seconds"] = time.perf_counter() - t0
    if hasattr(stage, "latency_ms"):
        info["latency_ms"] = stage.latency_ms
    if side is not None:
        atomic_write_json(side, info)
    atomic_write_bytes(task.marker, b"")
    info["task_s"] = time.perf_counter() - t_task  # with set-up and read; not in the side file
    return info, out


def execute_task(
    stage: Stage, mode: str, task: ShardTask, ctx: StageContext, decisions: str | None = None
) -> dict:
    """Run one shard task (read, process, write atomically, mark done) in any process."""
    return _run_task(stage, mode, task, ctx, decisions)[0]


def execute_chain(steps: list[Step], chain: ShardChain, ctx: StageContext) -> list:
    """Run one shard's pending steps in order; returns ``[(step index, info), ...]``."""
    held = None  # (path, table): the last shard table written, handed on in memory
    infos = []
    for i, task in chain.tasks:
        step = steps[i]
        sctx = dataclasses.replace(ctx, extra={**ctx.extra, **step.extra}) if step.extra else ctx
        table = held[1] if held is not None and held[0] == task.in_path else None
        info, out = _run_task(step.stage, step.mode, task, sctx, step.decisions, table)
        if out is not None:
            held = (task.out_path, out)
        infos.append((i, info))
    return infos


def _pool_init():
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


class _Progress:
    """Per-step done counters for a segment's ``report`` callback."""

    def __init__(self, chains: list[ShardChain], report: Report | None):
        self.total: dict[int, int] = {}
        for c in chains:
            for i, _ in c.tasks:
                self.total[i] = self.total.get(i, 0) + 1
        self.done = dict.fromkeys(self.total, 0)
        self.report = report
        self.infos: list[tuple[int, dict]] = []
        if report:
            for i, n in sorted(self.total.items()):
                report(i, 0, n)

    def add(self, infos) -> None:
        for i, info in infos:
            self.infos.append((i, info))
            self.done[i] += 1
            if self.report:
                self.report(i, self.done[i], self.total[i])


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class LocalExecutor:
    """In-process executor (default). ``workers > 1`` uses a process pool for model-free steps.

    Args:
        workers: Processes for model-free steps (1 = everything in this process, shard by shard).
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = None

    @property
    def reduce_threads(self) -> int:
        """Threads the driver's global reduces may use (the NCC check): this executor's CPUs."""
        return self.workers

    def start(self, stages: list[Stage]) -> None:
        """Nothing to start: stages are set up on first use."""

    def run_segment(self, steps, chains, ctx, report: Report | None = None) -> list:
        """Run every chain; returns the ``(step index, info)`` of every task run."""
        prog = _Progress(chains, report)
        if self.workers == 1:
            for c in chains:
                prog.add(execute_chain(steps, c, ctx))
            return prog.infos
        for i, step in enumerate(steps):  # step by step: model steps stay in this process
            sub = [ShardChain(c.shard, tuple(t for t in c.tasks if t[0] == i)) for c in chains]
            sub = [c for c in sub if c.tasks]
            if step.stage.uses_model or len(sub) < 2:
                for c in sub:
                    prog.add(execute_chain(steps, c, ctx))
                continue
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=mp.get_context("fork"), initializer=_pool_init
                )
            futs = [self._pool.submit(execute_chain, steps, c, ctx) for c in sub]
            for f in as_completed(futs):
                prog.add(f.result())
        return prog.infos

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self):  # pragma: no cover
        self.close()


class _ChainWorker:
    """A long-lived Ray actor: runs shard chains; set-up stages stay cached in the process."""

    def __init__(self):
        _pool_init()

    def run(self, steps, chain, ctx):
        return execute_chain(steps, chain, ctx)

    def pid(self) -> int:
        return os.getpid()

    def cpu_s(self) -> float:
        """CPU seconds this actor process has used (for benchmarks)."""
        return time.process_time()


class RayExecutor:
    """Ray executor (the ``[ray]`` extra): one pool of long-lived actors streams every shard
    chain of a segment; starts a local Ray if none is running.

    Args:
        num_cpus: CPUs for a locally started Ray (ignored when connecting to ``address``).
        address: Ray cluster address ('' = start or reuse a local instance).
        workers: Actors in the pool (0 = one per CPU of the cluster); with GPUs at most as many
            as the cluster's GPUs can hold at ``gpus_per_worker`` each.
        gpus_per_worker: GPUs each actor holds (None = the largest ``resources.gpus`` of the
            pipeline's stages; fractions allowed, as in Ray's ``num_gpus``).
    """

    name = "ray"

    def __init__(
        self,
        num_cpus: int = 2,
        address: str = "",
        workers: int = 0,
        gpus_per_worker: float | None = None,
    ) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per CPU), got {workers}")
        if gpus_per_worker is not None and gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
        self.num_cpus = num_cpus
        self.address = address
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self._actors: list = []
        self._actor_gpus: float | None = None

    def _ray(self):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        try:
            import ray
        except ImportError as e:
            raise ImportError("RayExecutor needs Ray: pip install 'diffkit[ray]'") from e
        if not ray.is_initialized():
            kw = {"address": self.address} if self.address else {"num_cpus": self.num_cpus}
            ray.init(
                include_dashboard=False,
                log_to_driver=False,
                runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}},
                **kw,
            )
        return ray

    @property
    def reduce_threads(self) -> int:
        """Threads the driver's global reduces may use (the NCC check): a reduce is a barrier, so
        the actors are idle while it runs and the driver may use the CPUs they hold on this
        machine (a local Ray's ``num_cpus``; this machine's CPUs when joining a cluster)."""
        return max(1, self.num_cpus if not self.address else (os.cpu_count() or 1))

    def start(self, stages: list[Stage]) -> None:
        """Start the actor pool (kept across segments and runs; rebuilt if the GPU need grows)."""
        ray = self._ray()
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = max((st.resources.gpus for st in stages), default=0.0)
        if self._actors and self._actor_gpus == gpus:
            return
        self.close()
        res = ray.cluster_resources()
        n = self.workers or max(1, int(res.get("CPU", 1)))
        if gpus > 0:  # more actors than the GPUs can hold would wait forever
            fit = int(res.get("GPU", 0) / gpus + 1e-9)
            if fit < 1:
                raise ValueError(
                    f"the stages ask for {gpus} GPU per actor; the Ray cluster has "
                    f"{res.get('GPU', 0)} GPUs (set the stages' `gpus` to 0 or add GPUs)"
                )
            n = min(n, fit)
        cls = ray.remote(num_cpus=1, num_gpus=gpus)(_ChainWorker)
        self._actors = [cls.remote() for _ in range(n)]
        self._actor_gpus = gpus
        log.info("ray: %d chain actors (num_cpus=1, num_gpus=%s)", n, gpus)

    def run_segment(self, steps, chains, ctx, report: Report | None = None) -> list:
        """Stream the chains through the actor pool; an idle actor takes the next shard."""
        prog = _Progress(chains, report)
        if not chains:
            return prog.infos
        if not self._actors:
            self.start([s.stage for s in steps])
        ray = self._ray()
        steps_ref, ctx_ref = ray.put(steps), ray.put(ctx)
        todo = list(reversed(chains))
        inflight = {}
        for actor in self._actors:
            if todo:
                inflight[actor.run.remote(steps_ref, todo.pop(), ctx_ref)] = actor
        while inflight:
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            actor = inflight.pop(ref)
            prog.add(ray.get(ref))
            if todo:
                inflight[actor.run.remote(steps_ref, todo.pop(), ctx_ref)] = actor
        return prog.infos

    def close(self) -> None:
        """End the actor pool (Ray itself stays up)."""
        if self._actors:
            import ray

            for a in self._actors:
                ray.kill(a)
        self._actors, self._actor_gpus = [], None
