"""Executors: where the shard tasks of a stage run. Both share one on-disk layout.

``LocalExecutor`` (default) runs in-process, shards in order; with ``workers > 1`` CPU stages go
to a process pool (one stage copy set up once per process); model stages stay in-process. No Ray
import. ``RayExecutor`` runs every stage as a Ray Data job over the pending shard list: CPU stages
as tasks, model stages as an actor pool (``concurrency`` actors with ``num_gpus``, set up once per
actor), and global stages emit keys there while the reduce runs once on the driver over the
compact keys only (images never move).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from diffkit.core.io import atomic_write_bytes, atomic_write_json
from diffkit.curate.stage import Stage, StageContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardTask:
    """One unit of work: read ``in_path``, write ``out_path`` atomically, then touch ``marker``."""

    shard: str
    in_path: str
    out_path: str
    marker: str


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


def execute_task(
    stage: Stage, mode: str, task: ShardTask, ctx: StageContext, decisions: str | None = None
) -> dict:
    """Run one shard task (the function every executor calls, in any process)."""
    import pyarrow.parquet as pq

    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    stage = _ready_stage(stage, ctx)
    table = pq.read_table(task.in_path)
    t0 = time.perf_counter()
    side = Path(task.out_path).with_suffix(".json")
    info = {
        "shard": task.shard,
        "rows": table.num_rows,
        "device": stage.device(),
        "pid": os.getpid(),
    }
    if mode == "map":
        _write(task.out_path, stage.process(table))
    elif mode == "keys":
        _write(task.out_path, stage.emit_keys(table))
        side = None
    elif mode == "apply":
        if decisions not in _DECISIONS:
            _DECISIONS.clear()
            _DECISIONS[decisions] = pq.read_table(decisions)
        _write(task.out_path, stage.apply(table, _DECISIONS[decisions]))
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
    info["seconds"] = time.perf_counter() - t0
    if hasattr(stage, "latency_ms"):
        info["latency_ms"] = stage.latency_ms
    if side is not None:
        atomic_write_json(side, info)
    atomic_write_bytes(task.marker, b"")
    return info


def _pool_init():
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


class LocalExecutor:
    """In-process executor (default). ``workers > 1`` uses a process pool for CPU-only stages.

    Args:
        workers: Processes for CPU stages (1 = everything in this process).
    """

    name = "local"

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool = None

    def run(self, stage, mode, tasks, ctx, report=None, decisions=None) -> None:
        total = len(tasks)
        if report:
            report(0, total)
        if not tasks:
            return
        if self.workers > 1 and not stage.uses_model and len(tasks) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    self.workers, mp_context=mp.get_context("fork"), initializer=_pool_init
                )
            futs = [self._pool.submit(execute_task, stage, mode, t, ctx, decisions) for t in tasks]
            for done, f in enumerate(as_completed(futs), 1):
                f.result()
                if report:
                    report(done, total)
            return
        for done, t in enumerate(tasks, 1):
            execute_task(stage, mode, t, ctx, decisions)
            if report:
                report(done, total)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __del__(self):  # pragma: no cover
        self.close()


class _RayWorker:
    """Callable class for Ray Data ``map_batches``: model stages get one set-up copy per actor."""

    def __init__(self, stage, mode, ctx, decisions):
        _pool_init()
        self.stage, self.mode, self.ctx, self.decisions = stage, mode, ctx, decisions

    def __call__(self, batch):
        infos = []
        for row in batch.to_pylist():
            t = ShardTask(**{k: row[k] for k in ("shard", "in_path", "out_path", "marker")})
            info = execute_task(self.stage, self.mode, t, self.ctx, self.decisions)
            infos.append(json.dumps(info, default=str))
        import pyarrow as pa

        return pa.table({"info": infos})


class RayExecutor:
    """Ray Data executor (the ``[ray]`` extra). Starts a local Ray if none is running.

    Args:
        num_cpus: CPUs for a locally started Ray (ignored when connecting to ``address``).
        address: Ray cluster address ('' = start or reuse a local instance).
    """

    name = "ray"

    def __init__(self, num_cpus: int = 2, address: str = "") -> None:
        self.num_cpus = num_cpus
        self.address = address

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
        import ray.data

        dctx = ray.data.DataContext.get_current()
        dctx.enable_progress_bars = False
        return ray

    def run(self, stage, mode, tasks, ctx, report=None, decisions=None) -> None:
        total = len(tasks)
        if report:
            report(0, total)
        if not tasks:
            return
        ray = self._ray()
        ds = ray.data.from_items(
            [dataclasses.asdict(t) for t in tasks], override_num_blocks=len(tasks)
        )
        res = stage.resources
        if stage.uses_model:
            ds = ds.map_batches(
                _RayWorker,
                fn_constructor_args=(stage, mode, ctx, decisions),
                batch_size=1,
                batch_format="pyarrow",
                concurrency=max(1, res.concurrency),
                num_gpus=res.gpus,
                num_cpus=res.cpus,
            )
        else:
            worker = _RayWorker(stage, mode, ctx, decisions)
            ds = ds.map_batches(worker, batch_size=1, batch_format="pyarrow", num_cpus=res.cpus)
        for done, _ in enumerate(ds.iter_rows(), 1):
            if report:
                report(done, total)

    def close(self) -> None:
        pass
