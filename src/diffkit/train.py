"""A model-agnostic training loop for any objective returning :class:`~diffkit.core.LossOutput`.

``fit(objective, model, data, config, out_dir)`` runs ``config.steps`` optimizer steps of AdamW on
``model``'s trainable parameters, where each step averages ``objective(model, batch, ctx)`` over
the global batch. It works single-process and under ``torchrun`` / ``accelerate launch`` (process
state through accelerate's ``PartialState``; gloo on CPU), with:

* gradient accumulation and all-reduce of gradients across ranks (the average DDP computes);
* gradient clipping, warm-up + constant/cosine learning rate;
* an optional fp32 EMA (:class:`diffkit.core.ema.EMA`) updated once per optimizer step;
* non-finite loss or gradient -> the step is skipped and counted; abort after N in a row;
* atomic checkpoints (model, optimizer, scheduler, EMA, objective state, RNG, data position) and
  resume that continues bit-identically;
* metrics to ``metrics.jsonl`` (and TensorBoard when installed);
* device placement (``device``: cpu, cuda, mps, or "auto" = accelerate's device for this process),
  mixed precision (``mixed_precision``: autocast of the objective's forward in bf16 or fp16, with
  a gradient scaler for fp16; parameters, optimizer state and the EMA stay fp32) and an optional
  8-bit AdamW (``optimizer="adamw_8bit"``, needs bitsandbytes).

Data: any sized, indexable dataset; if it has ``get_batch(indices)`` that is used, otherwise items
are collated with ``torch.utils.data.default_collate``. The sample order is a seeded permutation per
epoch, so the data position is a pure function of the step and resuming needs no iterator state.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from diffkit import config as cfglib
from diffkit.core.ema import EMA
from diffkit.core.io import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    save_tensors,
)
from diffkit.core.objective import LossOutput, StepContext

log = logging.getLogger(__name__)

Objective = Callable[[nn.Module, Any, StepContext], LossOutput]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of :func:`fit`.

    Attributes:
        steps: total optimizer steps.
        batch_size: global batch per optimizer step, over all ranks and accumulation steps.
        grad_accum: micro-batches per optimizer step on each rank.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps from 0 to lr.
        lr_schedule: "constant" or "cosine" (to 0 at the last step) after warm-up.
        grad_clip: max global gradient norm; 0 disables clipping.
        ema_decay: decay of an fp32 EMA of the model; 0 disables it.
        seed: seeds data order and per-step noise.
        checkpoint_every: steps between checkpoints; 0 = only the final one.
        keep_checkpoints: how many recent checkpoints to keep.
        log_every: steps between metric lines.
        max_consecutive_nonfinite: abort after this many skipped (non-finite) steps in a row.
        resume: continue from the latest checkpoint in the output folder if one exists.
        device: "cpu", "cuda", "cuda:N", "mps", or "auto" (accelerate's device for this process:
            the local GPU under torchrun, else cuda / mps / cpu, whichever is present).
        mixed_precision: "no" (fp32), "bf16" or "fp16": autocast of the objective's forward;
            weights, gradients, optimizer state and EMA stay fp32; fp16 adds a gradient scaler.
        optimizer: "adamw" (torch) or "adamw_8bit" (bitsandbytes' AdamW8bit, the [bnb] extra).
    """

    steps: int = 100
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 10
    max_consecutive_nonfinite: int = 10
    resume: bool = True
    device: str = "cpu"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    optimizer: Literal["adamw", "adamw_8bit"] = "adamw"

    def __post_init__(self) -> None:
        positive = (
            "steps",
            "batch_size",
            "grad_accum",
            "log_every",
            "keep_checkpoints",
            "max_consecutive_nonfinite",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise ValueError(f"TrainConfig.grad_clip must be >= 0, got {self.grad_clip}")
        if not (self.ema_decay == 0 or 0 < self.ema_decay <= 1):
            raise ValueError(
                f"TrainConfig.ema_decay must be 0 (off) or in (0, 1], got {self.ema_decay}"
            )
        if self.warmup_steps < 0 or self.checkpoint_every < 0:
            raise ValueError("TrainConfig.warmup_steps and checkpoint_every must be >= 0")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"TrainConfig.lr_schedule={self.lr_schedule!r}; use 'constant' or 'cosine'"
            )
        if self.device.split(":")[0] not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(
                f"TrainConfig.device={self.device!r}; use auto, cpu, cuda, cuda:N or mps"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(
                f"TrainConfig.mixed_precision={self.mixed_precision!r}; use 'no', 'bf16' or 'fp16'"
            )
        if self.optimizer not in ("adamw", "adamw_8bit"):
            raise ValueError(
                f"TrainConfig.optimizer={self.optimizer!r}; use 'adamw' or 'adamw_8bit'"
            )


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    skipped_nonfinite: int
    out_dir: Path


class NonFiniteError(RuntimeError):
    """Raised after too many consecutive non-finite steps."""


# ----------------------------------------------------------------------------- data order
class _Stream:
    """Deterministic infinite stream of sample indices: a seeded permutation per epoch."""

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError("training data is empty")
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, start: int, count: int) -> torch.Tensor:
        pos = torch.arange(start, start + count)
        epochs, within = pos // self.n, pos % self.n
        out = torch.empty(count, dtype=torch.long)
        for e in epochs.unique().tolist():
            if e not in self._perms:
                self._perms = {
                    e: torch.randperm(
                        self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + e)
                    )
                }
            sel = epochs == e
            out[sel] = self._perms[e][within[sel]]
        return out


def _get_batch(data: Sequence, idx: torch.Tensor):
    if hasattr(data, "get_batch"):
        return data.get_batch(idx)
    from torch.utils.data import default_collate

    return default_collate([data[i] for i in idx.tolist()])


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "cosine":
            span = max(1, cfg.steps - cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
        return 1.0

    return f


# ----------------------------------------------------------------------------- hardware
def resolve_device(name: str) -> torch.device:
    """``TrainConfig.device`` as a torch device ("auto": accelerate's device for this process)."""
    if name == "auto":
        from accelerate import PartialState

        return PartialState().device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device={name!r} but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"TrainConfig.device={name!r} but MPS is not available")
    return device


def _autocast(cfg: TrainConfig, device: torch.device):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def make_optimizer(cfg: TrainConfig, params: list) -> torch.optim.Optimizer:
    """AdamW (torch) or, with ``optimizer="adamw_8bit"``, bitsandbytes' AdamW8bit."""
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as e:
            raise ImportError(
                "TrainConfig.optimizer='adamw_8bit' needs bitsandbytes: "
                "pip install 'diffkit[bnb]' (or pip install bitsandbytes), or use optimizer=adamw"
            ) from e
        return bnb.optim.AdamW8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def _to_device(x, device: torch.device):
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


# ----------------------------------------------------------------------------- checkpoints
def _ckpt_root(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder named in ``checkpoints/latest``, if any."""
    p = _ckpt_root(Path(out_dir)) / "latest"
    if not p.is_file():
        return None
    d = _ckpt_root(Path(out_dir)) / p.read_text().strip()
    return d if d.is_dir() else None


def _rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def _save_checkpoint(
    out_dir, step, model, opt, sched, ema, objective, extra, cfg, scaler=None
) -> Path:
    root = _ckpt_root(out_dir)
    name = f"step_{step:08d}"
    with atomic_dir(root / name) as tmp:
        save_tensors(tmp / "model.safetensors", model.state_dict())
        if ema is not None:
            save_tensors(tmp / "ema.safetensors", ema.state_dict())
        trainer = {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": _rng_state(),
        }
        if scaler is not None and scaler.is_enabled():
            trainer["scaler"] = scaler.state_dict()
        torch.save(trainer, tmp / "trainer.pt")
        if hasattr(objective, "state_dict"):
            torch.save(objective.state_dict(), tmp / "objective.pt")
        atomic_write_json(
            tmp / "state.json", {"step": step, **extra, "config": cfglib.to_dict(cfg)}
        )
    atomic_write_text(root / "latest", name + "\n")
    kept = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in kept[: -cfg.keep_checkpoints]:
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    return root / name


def _load_checkpoint(path: Path, model, opt, sched, ema, objective, scaler=None) -> dict:
    model.load_state_dict(load_tensors(path / "model.safetensors"))
    if ema is not None:
        ema.load_state_dict(load_tensors(path / "ema.safetensors"))
    blob = torch.load(path / "trainer.pt", weights_only=False, map_location="cpu")
    opt.load_state_dict(blob["optimizer"])
    sched.load_state_dict(blob["scheduler"])
    if scaler is not None and "scaler" in blob:
        scaler.load_state_dict(blob["scaler"])
    _set_rng_state(blob["rng"])
    if hasattr(objective, "load_state_dict") and (path / "objective.pt").is_file():
        objective.load_state_dict(torch.load(path / "objective.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())


# ----------------------------------------------------------------------------- loop
def _dist_state():
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    return state


def _allreduce_mean(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        torch.distributed.all_reduce(t)
        t /= world
    return t


def fit(
    objective: Objective,
    model: nn.Module,
    data: Sequence,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    ema: EMA | None = None,
    callbacks: Sequence[Callable[[int, dict[str, float]], None]] = (),
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` on ``objective`` over ``data``; see the module docstring."""
    cfg = config
    out_dir = Path(out_dir)
    state = _dist_state()
    world, rank = state.num_processes, state.process_index
    per_step = cfg.batch_size // (world * cfg.grad_accum)
    if per_step * world * cfg.grad_accum != cfg.batch_size:
        raise ValueError(
            f"TrainConfig.batch_size={cfg.batch_size} must be divisible by "
            f"world_size ({world}) x grad_accum ({cfg.grad_accum})"
        )
    device = resolve_device(cfg.device)
    model.to(device)
    if ema is None and cfg.ema_decay > 0:
        ema = EMA(model, cfg.ema_decay)
    elif ema is not None:
        ema.module.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    opt = make_optimizer(cfg, params)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    stream = _Stream(len(data), cfg.seed)

    step, skipped, consecutive = 0, 0, 0
    ckpt = latest_checkpoint(out_dir) if cfg.resume else None
    if ckpt is not None:
        st = _load_checkpoint(ckpt, model, opt, sched, ema, objective, scaler)
        step, skipped, consecutive = (
            st["step"],
            st["skipped_nonfinite"],
            st["consecutive_nonfinite"],
        )
        log.info("resumed from %s at step %d", ckpt, step)

    writer = None
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        cfglib.save(cfg, out_dir / "train_config.json")
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(out_dir / "tb"))
        except Exception:  # tensorboard not installed
            writer = None

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)

    last: dict[str, float] = {}
    model.train()
    t0 = time.perf_counter()
    while step < cfg.steps:
        opt.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        bad = torch.zeros(1, device=device if world > 1 and device.type == "cuda" else "cpu")
        for micro in range(cfg.grad_accum):
            start = step * cfg.batch_size + (micro * world + rank) * per_step
            idx = stream.indices(start, per_step)
            batch = _to_device(_get_batch(data, idx), device)
            seeds = cfg.seed * 1_000_000_007 + start + torch.arange(per_step)
            gen = torch.Generator().manual_seed(hash((cfg.seed, step, micro, rank)) % (2**63 - 1))
            ctx = StepContext(
                step=step, generator=gen, sample_seeds=seeds, rank=rank, world_size=world
            )
            with _autocast(cfg, device):
                out = objective(model, batch, ctx)
            if not torch.isfinite(out.loss):
                bad += 1
                continue
            scaler.scale(out.loss.float() / cfg.grad_accum).backward()
            sums["loss"] = sums.get("loss", 0.0) + float(out.loss.detach())
            for k, v in out.metrics.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        # Average gradients across ranks (what DDP does), and agree on skipping.
        if world > 1:
            torch.distributed.all_reduce(bad)
        grads_ok = bad.item() == 0
        overflow = False  # fp16: the scaler's own overflow, handled by lowering the scale
        if grads_ok:
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                _allreduce_mean(p.grad, world)
            scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(
                params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            )
            grads_ok = bool(torch.isfinite(gnorm))
            overflow = not grads_ok and scaler.is_enabled()
        if grads_ok:
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update(model)
            consecutive = 0
            if hasattr(objective, "after_step"):
                objective.after_step(model, step)
        elif overflow:
            scaler.update()  # inf/nan gradients under fp16: halve the scale, skip the step
            opt.zero_grad(set_to_none=True)
            skipped += 1
            log.info("step %d: fp16 gradient overflow, scale now %g", step, scaler.get_scale())
        else:
            opt.zero_grad(set_to_none=True)
            skipped += 1
            consecutive += 1
            log.warning(
                "step %d: non-finite loss or gradient, step skipped (%d in a row)",
                step,
                consecutive,
            )
        step += 1

        keys = sorted(sums)
        vec = torch.tensor([sums[k] / cfg.grad_accum for k in keys], dtype=torch.float64)
        _allreduce_mean(vec, world)
        last = dict(zip(keys, vec.tolist()))
        last.update(lr=sched.get_last_lr()[0], skipped_nonfinite=float(skipped))
        if grads_ok:
            last["grad_norm"] = float(gnorm)
        if rank == 0:
            if step % cfg.log_every == 0 or step == cfg.steps:
                line = {"step": step, "time": round(time.perf_counter() - t0, 3), **last}
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(line) + "\n")
                if writer is not None:
                    for k, v in last.items():
                        writer.add_scalar(k, v, step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last.get('loss', float('nan')):.4f}")
        if consecutive >= cfg.max_consecutive_nonfinite:
            raise NonFiniteError(
                f"{consecutive} consecutive steps had a non-finite loss or gradient (up to step {step}); "
                "lower the learning rate or check the data. The last good checkpoint is kept."
            )
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            if rank == 0:
                _save_checkpoint(
                    out_dir,
                    step,
                    model,
                    opt,
                    sched,
                    ema,
                    objective,
                    {"skipped_nonfinite": skipped, "consecutive_nonfinite": consecutive},
                    cfg,
                    scaler,
                )
            state.wait_for_everyone()
        if rank == 0:
            for cb in callbacks:
                cb(step, last)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return TrainResult(step=step, metrics=last, skipped_nonfinite=skipped, out_dir=out_dir)
