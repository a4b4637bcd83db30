"""Linear-DPO on a real diffusers model folder: load, cache latents and text embeddings, train.

``align_model(model_dir, data, recipe, out_dir)`` is what ``diffkit align train`` runs:

0. check what can be checked cheaply, before any encoding: the batch divides over ranks and
   accumulation, the data reads in the asked format and holds usable pairs, and an existing
   checkpoint in ``out_dir/run`` was made by the same recipe, model and data (else
   :class:`ResumeError` naming the changed fields; ``force=True`` resumes anyway);
1. load the pipeline folder (``DiffusionPipeline.from_pretrained(model_dir)``; local files only);
   supported denoisers: ``UNet2DConditionModel`` (SD1.5, SDXL with its added time ids and pooled
   text embeds) and ``SD3Transformer2DModel`` (SD3 / SD3.5);
2. read preference pairs (:mod:`diffkit.align.data`), decode each image once, encode both images
   with the VAE and every unique prompt with the pipeline's own ``encode_prompt``, and save the
   cache to ``out_dir/cache/<key>`` where the key hashes the selected pairs' contents (prompts,
   image bytes or path/size/mtime, weights, so every filter counts), the model's encoders and the
   encoding settings; a second run with the same inputs reuses it; undecodable images are skipped
   and counted (:mod:`diffkit.align.cache`); under torchrun, rank 0 caches and the others wait
   (``cache_wait_s``);
3. free the VAE and text encoders, and train the denoiser with :class:`~diffkit.align.LinearDPO`
   through :func:`diffkit.train.fit` (full fine-tune, or LoRA when ``recipe.lora_rank > 0``);
4. save the trained denoiser (``save_pretrained``) to ``out_dir/final``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffkit import config as cfglib
from diffkit.align.cache import (
    build_cache,
    cache_key,
    denoiser_of,
    encode_prompts,
)
from diffkit.align.data import Format, load_pairs
from diffkit.align.objective import LinearDPO, LinearDPOConfig, model_kind
from diffkit.align.validation import ValidationCallback
from diffkit.core.ema import EMA
from diffkit.core.io import atomic_write_json
from diffkit.core.schedules import DDPM, FlowMatching
from diffkit.train import TrainConfig, fit, latest_checkpoint, resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AlignRecipe:
    """A complete ``diffkit align train`` recipe (the shipped YAML files in
    ``diffkit/recipes/align/``, resolvable by name).

    Attributes:
        dpo: the loss and reference settings (:class:`~diffkit.align.LinearDPOConfig`).
        train: optimizer steps, global batch of pairs, accumulation, LR (:class:`TrainConfig`).
        resolution: square training resolution in pixels (short side resized, then cropped).
        data_format: "auto", "pickapic", "hpdv3" or "generic".
        hpdv3_models: HPDv3 model filter (both images' generators must be listed); empty: keep all.
        lora_rank: 0 trains the full denoiser; > 0 trains LoRA adapters of this rank instead.
        lora_alpha: LoRA alpha (scale alpha / rank).
        cache_batch_size: images per VAE/text-encoder call while caching.
        max_pairs: use at most this many pairs (0 = all).
        seed: seed of the VAE latent sampling while caching.
        cache_wait_s: under torchrun, how long ranks > 0 wait for rank 0's cache (seconds).
        gradient_checkpointing: recompute the denoiser's activations in the backward pass
            (diffusers' ``enable_gradient_checkpointing``): less memory, ~30% more compute.
        random_crop: crop at a random position (one per pair, drawn at caching) instead of the
            center; SDXL is conditioned on each image's crop and original size either way.
        random_flip: mirror half of the pairs left-right (both images of a pair alike).
        holdout_pairs: pairs kept out of training (a seeded random choice) and scored every
            ``eval_every`` steps: ``eval/implicit_acc``, ``eval/reward_margin``, ... (0 = none).
        eval_every: steps between held-out metrics and validation images (and at the last step).
        validation_prompts: prompts sampled with fixed seeds from the policy, the reference and
            the EMA (``train.ema_decay > 0``) every ``eval_every`` steps (PNGs in
            ``OUT/run/validation/`` and TensorBoard); empty = no images.
        validation_steps: sampler steps of the pipeline's scheduler for the validation images.
        validation_guidance: classifier-free guidance scale (1 = none).
    """

    dpo: LinearDPOConfig = field(default_factory=LinearDPOConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    resolution: int = 512
    data_format: Format = "auto"
    hpdv3_models: tuple[str, ...] = ("flux", "kolors", "sd3", "hunyuan", "real_images")
    lora_rank: int = 0
    lora_alpha: float = 8.0
    cache_batch_size: int = 4
    max_pairs: int = 0
    seed: int = 0
    cache_wait_s: float = 6 * 3600.0
    gradient_checkpointing: bool = False
    random_crop: bool = False
    random_flip: bool = False
    holdout_pairs: int = 0
    eval_every: int = 100
    validation_prompts: tuple[str, ...] = ()
    validation_steps: int = 20
    validation_guidance: float = 5.0

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % 8:
            raise ValueError(
                f"AlignRecipe.resolution must be a multiple of 8, got {self.resolution}"
            )
        if self.lora_rank < 0:
            raise ValueError(f"AlignRecipe.lora_rank must be >= 0, got {self.lora_rank}")
        if self.cache_batch_size < 1 or self.max_pairs < 0:
            raise ValueError("AlignRecipe.cache_batch_size must be >= 1 and max_pairs >= 0")
        if self.data_format not in ("auto", "pickapic", "hpdv3", "generic"):
            raise ValueError(f"AlignRecipe.data_format={self.data_format!r} is not supported")
        if self.dpo.reference in ("lora_base", "lora_ema") and self.lora_rank == 0:
            raise ValueError(
                f"AlignRecipe.dpo.reference={self.dpo.reference!r} needs lora_rank > 0"
            )
        if self.holdout_pairs < 0 or self.eval_every < 1 or self.validation_steps < 1:
            raise ValueError(
                "AlignRecipe.holdout_pairs must be >= 0, eval_every and validation_steps >= 1; got "
                f"{self.holdout_pairs}, {self.eval_every}, {self.validation_steps}"
            )
        if not self.validation_guidance >= 1:
            raise ValueError(
                f"AlignRecipe.validation_guidance must be >= 1, got {self.validation_guidance}"
            )
        if not self.cache_wait_s > 0:
            raise ValueError(f"AlignRecipe.cache_wait_s must be > 0, got {self.cache_wait_s}")


class ModelFolderError(ValueError):
    """A model folder that is not a loadable diffusers pipeline of a supported kind."""


class RecipeError(ValueError):
    """A recipe that cannot run in this setting (e.g. a batch that does not split over ranks)."""


class ResumeError(ValueError):
    """A checkpoint in the output folder was made by another recipe, model or data."""


# Recipe fields a resumed run may change: they do not alter what the first steps computed.
RESUMABLE_CHANGES = frozenset(
    {
        "train.steps",
        "train.grad_accum",  # a memory knob: the noise is drawn per pair, not per micro-batch
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.max_consecutive_nonfinite",
        "train.resume",
        "cache_batch_size",
        "cache_wait_s",
        "train.device",  # another machine: same math, rounding may differ
        "gradient_checkpointing",  # recomputes the same activations
        "eval_every",
        "validation_prompts",
        "validation_steps",
        "validation_guidance",
    }
)


# ----------------------------------------------------------------------------- loading
def schedule_from_scheduler(config: dict) -> DDPM | FlowMatching:
    """The diffkit schedule matching a diffusers scheduler config (training-time noising)."""
    name = config.get("_class_name", "")
    if "FlowMatch" in name:
        return FlowMatching(
            shift=float(config.get("shift", 1.0)),
            num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        )
    return DDPM(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_start=float(config.get("beta_start", 0.00085)),
        beta_end=float(config.get("beta_end", 0.012)),
        beta_schedule=config.get("beta_schedule", "scaled_linear"),
        prediction_type=config.get("prediction_type", "epsilon") or "epsilon",
    )


def load_pipeline(model_dir: str | Path):
    """``DiffusionPipeline.from_pretrained`` of a local folder; checks the denoiser's class."""
    from diffusers import DiffusionPipeline

    model_dir = Path(model_dir)
    if not (model_dir / "model_index.json").is_file():
        raise ModelFolderError(
            f"{model_dir} is not a diffusers pipeline folder (no model_index.json)"
        )
    try:
        index = json.loads((model_dir / "model_index.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFolderError(f"{model_dir}/model_index.json is not valid JSON ({e})") from e
    # Components saved as [null, null] (e.g. SD3 without T5) must be passed as None explicitly.
    absent = {
        k: None
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and v[0] is None
    }
    try:
        pipe = DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, **absent)
    except Exception as e:  # diffusers raises OSError, ValueError, KeyError, ... per component
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ModelFolderError(
            f"cannot load the diffusers pipeline in {model_dir}: {type(e).__name__}: {first}"
        ) from e
    try:
        model_kind(denoiser_of(pipe))
    except ValueError as e:
        raise ModelFolderError(f"{model_dir}: {e}") from e
    return pipe


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume(run_dir: Path, record: dict, *, force: bool = False) -> None:
    """Refuse to resume a checkpoint in ``run_dir`` made under another recipe, model or data.

    ``record`` is ``{"recipe": ..., "model": ..., "data": <cache key>}``; it is written to
    ``run_dir/align_run.json`` when the run starts fresh (or is forced). Fields in
    :data:`RESUMABLE_CHANGES` may change (e.g. more ``train.steps``).
    """
    path = run_dir / "align_run.json"
    resuming = record["recipe"]["train"].get("resume", True) and latest_checkpoint(run_dir)
    if resuming and path.is_file():
        old = _flatten(json.loads(path.read_text()))
        new = _flatten(json.loads(json.dumps(record)))  # tuples -> lists, as stored
        changed = sorted(
            k
            for k in set(old) | set(new)
            if old.get(k) != new.get(k) and k.removeprefix("recipe.") not in RESUMABLE_CHANGES
        )
        if changed:
            shown = ", ".join(
                f"{k.removeprefix('recipe.')}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed
            )
            if not force:
                raise ResumeError(
                    f"{run_dir} holds a checkpoint of another run ({shown}); use --force to "
                    "resume it anyway, or another --out"
                )
            log.warning("resuming under a changed run (--force): %s", shown)
        else:
            return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)


def check_batch(train: TrainConfig, world: int) -> None:
    """The global batch must split evenly over ranks and accumulation steps (as ``fit`` needs)."""
    if train.batch_size % (world * train.grad_accum):
        raise RecipeError(
            f"train.batch_size={train.batch_size} must be divisible by world_size ({world}) x "
            f"train.grad_accum ({train.grad_accum})"
        )


def _wait_for(path: Path, timeout_s: float) -> None:
    t0 = time.monotonic()
    while not path.is_file():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(
                f"waited {timeout_s:.0f} s for rank 0 to write {path}; did rank 0 fail? "
                "(raise cache_wait_s for very large data)"
            )
        time.sleep(1.0)


def add_lora_(model: nn.Module, rank: int, alpha: float) -> None:
    """Freeze ``model`` and add trainable LoRA adapters on its attention projections (peft)."""
    from peft import LoraConfig

    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()


def save_lora(pipeline_cls: type, policy: nn.Module, out_dir: str | Path) -> Path:
    """Write the policy's LoRA adapters as diffusers' ``save_lora_weights`` does.

    The peft state dict is converted to diffusers key names, prefixed with ``unet.`` or
    ``transformer.`` and saved with the adapter's config (rank, alpha, targets) as metadata by the
    pipeline class's own ``save_lora_weights``, so ``pipe.load_lora_weights(out_dir)`` on a freshly
    loaded pipeline restores the trained denoiser (scale alpha / rank included).
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    if not hasattr(pipeline_cls, "save_lora_weights"):
        raise ValueError(f"{pipeline_cls.__name__} has no save_lora_weights; cannot save LoRA")
    name = "unet" if model_kind(policy) == "UNet2DConditionModel" else "transformer"
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(policy))
    meta = policy.peft_config["default"].to_dict()
    pipeline_cls.save_lora_weights(
        str(out_dir),
        **{f"{name}_lora_layers": layers, f"{name}_lora_adapter_metadata": meta},
    )
    return Path(out_dir) / "pytorch_lora_weights.safetensors"


def align_model(
    model_dir: str | Path,
    data: str | Path | list,
    recipe: AlignRecipe,
    out_dir: str | Path,
    *,
    progress: bool = False,
    force: bool = False,
) -> dict:
    """Check, load, cache, train and save; returns a summary dict (also in ``summary.json``).

    ``force``: resume a checkpoint in ``out_dir/run`` even if it was made by another recipe,
    model or data (otherwise :class:`ResumeError` names what changed).
    """
    out_dir = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 caches, the others wait
    check_batch(recipe.train, int(os.environ.get("WORLD_SIZE", "1")))
    if not (Path(model_dir) / "model_index.json").is_file():
        raise ModelFolderError(
            f"{model_dir} is not a diffusers pipeline folder (no model_index.json)"
        )
    pairs, stats = load_pairs(data, recipe.data_format, models=recipe.hpdv3_models or None)
    if recipe.max_pairs:
        pairs = pairs[: recipe.max_pairs]
    log.info("loaded %d pairs (%s)", len(pairs), stats.as_dict())
    key = cache_key(model_dir, pairs, recipe)
    record = {
        "recipe": cfglib.to_dict(recipe),
        "model": str(Path(model_dir).resolve()),
        "data": key,
    }
    if rank == 0:
        check_resume(out_dir / "run", record, force=force)
    pipe = load_pipeline(model_dir)
    policy = denoiser_of(pipe).float()
    schedule = schedule_from_scheduler(dict(pipe.scheduler.config))
    cache_dir = out_dir / "cache" / key
    if rank != 0:
        _wait_for(cache_dir / "cache.json", recipe.cache_wait_s)
    device = resolve_device(recipe.train.device)
    cached, info = build_cache(
        pipe, pairs, recipe, cache_dir, progress=progress and rank == 0, device=device
    )
    val_cond, vae = None, None
    if recipe.validation_prompts and rank == 0:
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if getattr(pipe, name, None) is not None:
                getattr(pipe, name).to(device)
        val_cond = encode_prompts(pipe, list(recipe.validation_prompts), recipe.resolution, device)
        vae = pipe.vae.to(device)  # kept to decode the validation images
    pipe.vae = None  # free the encoders: only the denoiser trains
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if hasattr(pipe, name):
            setattr(pipe, name, None)
    train_data, heldout = cached, None
    if recipe.holdout_pairs:
        if recipe.holdout_pairs >= len(cached):
            raise RecipeError(
                f"holdout_pairs={recipe.holdout_pairs} leaves no training pairs of {len(cached)}"
            )
        perm = torch.randperm(len(cached), generator=torch.Generator().manual_seed(recipe.seed))
        heldout = cached.subset(perm[: recipe.holdout_pairs])
        train_data = cached.subset(perm[recipe.holdout_pairs :])
    if recipe.lora_rank:
        add_lora_(policy, recipe.lora_rank, recipe.lora_alpha)
    if recipe.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    policy.to(device).train()  # before the objective: its reference copies land on the device
    objective = LinearDPO(recipe.dpo, policy, schedule=schedule)
    ema = EMA(policy, recipe.train.ema_decay) if recipe.train.ema_decay > 0 else None
    callbacks = []
    if heldout is not None or val_cond is not None:
        n = len(recipe.validation_prompts)
        callbacks.append(
            ValidationCallback(
                objective,
                policy,
                out_dir / "run",
                every=recipe.eval_every,
                last=recipe.train.steps,
                heldout=heldout,
                batch_size=max(1, recipe.train.batch_size // recipe.train.grad_accum),
                prompts=recipe.validation_prompts,
                prompt_cond=val_cond,
                uncond={k: v.expand(n, *v.shape[1:]) for k, v in cached.uncond.items()},
                vae=vae,
                scheduler=pipe.scheduler,
                latent_shape=tuple(cached.x_w.shape[1:]),
                steps=recipe.validation_steps,
                guidance=recipe.validation_guidance,
                ema=ema,
                seed=recipe.seed,
            )
        )
    result = fit(
        objective,
        policy,
        train_data,
        recipe.train,
        out_dir / "run",
        ema=ema,
        callbacks=callbacks,
        progress=progress,
    )
    final = out_dir / "final"
    if rank != 0:
        return {"rank": rank, "steps": result.step, "final": str(final)}
    if recipe.lora_rank:
        save_lora(type(pipe), policy, final)
    else:
        policy.save_pretrained(str(final))
    summary = {
        "model": model_kind(policy),
        "schedule": type(schedule).__name__,
        "data": stats.as_dict(),
        "cache": info,
        "steps": result.step,
        "skipped_nonfinite": result.skipped_nonfinite,
        "metrics": result.metrics,
        "final": str(final),
    }
    evals = out_dir / "run" / "eval.jsonl"
    if heldout is not None and evals.is_file():
        summary["heldout"] = json.loads(evals.read_text().splitlines()[-1])
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
