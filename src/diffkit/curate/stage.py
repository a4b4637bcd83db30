"""The stage contract: config, fingerprint, resources, ``setup()`` once per worker, ``process``.

Map stages turn one shard (a ``pyarrow.Table``, i.e. the record batches of one shard) into the same
rows with columns added and drop reasons set. Global stages (dedup) instead emit compact keys per
shard, ``reduce`` all keys to decisions once, and ``apply`` the decisions per shard, so an executor
only ever moves keys, never images (the datatrove / NeMo Curator pattern; spec section (e)).

A stage never raises for a single bad row: per-row failures become tombstones whose reason is
``error:<stage>:<Exception>`` and are listed in ``errors.parquet``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from diffkit.curate.schema import PIPELINE_VERSION


@dataclass(frozen=True, kw_only=True)
class Resources:
    """What one worker of a stage needs.

    Attributes:
        cpus: CPU cores per task or actor.
        gpus: GPUs per actor (fractions allowed, as in Ray's ``num_gpus``).
        memory_gb: Memory hint per worker.
        concurrency: Actors for model stages (unused by RayExecutor, whose one pool runs every
            stage; kept for custom executors).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 1.0
    concurrency: int = 1


@dataclass
class StageContext:
    """What a worker gets in ``setup``: the device to use and the attempt number (for retries)."""

    device: str = "cpu"
    attempt: int = 0
    extra: dict = dataclasses.field(default_factory=dict)


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    return obj


def fingerprint_of(*parts: Any) -> str:
    """16-hex-digit hash of JSON-serialisable parts (configs, versions, upstream fingerprints)."""
    blob = json.dumps([_jsonable(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Stage:
    """Base class of all stages.

    Subclasses set ``name``, ``version``, ``kind`` and take a frozen config dataclass. ``setup`` is
    called once per worker before the first ``process``; model stages load weights there.
    """

    name: ClassVar[str] = "stage"
    version: ClassVar[str] = "1"
    kind: ClassVar[Literal["map", "global"]] = "map"
    uses_model: ClassVar[bool] = False
    # Side columns (written once by ingest, see diffkit.curate.schema.SIDE_COLUMNS) this global
    # stage's ``reduce`` reads: the driver joins them into the key tables by ``row_id``.
    reads_side: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any = None) -> None:
        self.config = config
        self._ready = False

    # -- identity ----------------------------------------------------------------------------
    def model_revision(self) -> str:
        """Revision of the model weights this stage uses ('' for model-free stages)."""
        return ""

    def fingerprint(self, upstream: str = "") -> str:
        """Hash of (pipeline version, stage name and version, config, model revision, upstream)."""
        return fingerprint_of(
            PIPELINE_VERSION, self.name, self.version, self.config, self.model_revision(), upstream
        )

    @property
    def resources(self) -> Resources:
        return Resources()

    def device(self) -> str:
        return "cpu"

    # -- work --------------------------------------------------------------------------------
    def setup(self, ctx: StageContext | None = None) -> None:
        self._ready = True

    def ensure_setup(self, ctx: StageContext | None = None) -> None:
        if not self._ready:
            self.setup(ctx or StageContext())
            self._ready = True

    def process(self, table):  # pragma: no cover - abstract
        raise NotImplementedError

    # global stages
    def emit_keys(self, table):  # pragma: no cover - abstract
        raise NotImplementedError

    def reduce(self, keys):  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, table, decisions):  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"


def run_map_stage(stage: Stage, table, ctx: StageContext | None = None):
    """Run a map stage on one shard (what every executor calls)."""
    stage.ensure_setup(ctx)
    return stage.process(table)
