"""Linear-DPO on a real diffusers model folder: load, cache latents and text embeddings, train.

``align_model(model_dir, data, recipe, out_dir)`` is what ``diffkit align train`` runs:

1. load the pipeline folder (``DiffusionPipeline.from_pretrained(model_dir)``; local files only);
   supported denoisers: ``UNet2DConditionModel`` (SD1.5, SDXL with its added time ids and pooled
   text embeds) and ``SD3Transformer2DModel`` (SD3 / SD3.5);
2. read preference pairs (:mod:`diffkit.align.data`), decode each image once, encode both images
   with the VAE and every unique prompt with the pipeline's own ``encode_prompt``, and save the
   cache to ``out_dir/cache`` (a second run with the same inputs reuses it); undecodable images are
   skipped and counted;
3. free the VAE and text encoders, and train the denoiser with :class:`~diffkit.align.LinearDPO`
   through :func:`diffkit.train.fit` (full fine-tune, or LoRA when ``recipe.lora_rank > 0``);
4. save the trained denoiser (``save_pretrained``) to ``out_dir/final``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from diffkit.align.data import Format, ImageError, PreferencePair, decode_image, load_pairs
from diffkit.align.objective import SUPPORTED_MODELS, LinearDPO, LinearDPOConfig, model_kind
from diffkit.core.io import atomic_write_json, load_tensors, save_tensors
from diffkit.core.schedules import DDPM, FlowMatching
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AlignRecipe:
    """A complete ``diffkit align train`` recipe (the YAML files in ``recipes/align/``).

    Attributes:
        dpo: the loss and reference settings (:class:`~diffkit.align.LinearDPOConfig`).
        train: optimizer steps, global batch of pairs, accumulation, LR (:class:`TrainConfig`).
        resolution: square training resolution in pixels (images are resized and center-cropped).
        data_format: "auto", "pickapic", "hpdv3" or "generic".
        hpdv3_models: HPDv3 model filter (both images' generators must be listed); empty: keep all.
        lora_rank: 0 trains the full denoiser; > 0 trains LoRA adapters of this rank instead.
        lora_alpha: LoRA alpha (scale alpha / rank).
        cache_batch_size: images per VAE/text-encoder call while caching.
        max_pairs: use at most this many pairs (0 = all).
        seed: seed of the VAE latent sampling while caching.
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
        raise FileNotFoundError(
            f"{model_dir} is not a diffusers pipeline folder (no model_index.json)"
        )
    index = json.loads((model_dir / "model_index.json").read_text())
    # Components saved as [null, null] (e.g. SD3 without T5) must be passed as None explicitly.
    absent = {
        k: None
        for k, v in index.items()
        if not k.startswith("_") and isinstance(v, list) and v[0] is None
    }
    pipe = DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, **absent)
    model_kind(denoiser_of(pipe))
    return pipe


def denoiser_of(pipe) -> nn.Module:
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None:
        raise ValueError(
            f"{type(pipe).__name__} has no unet or transformer; supported denoisers: "
            f"{', '.join(SUPPORTED_MODELS)}"
        )
    return net


# ----------------------------------------------------------------------------- caching
@torch.no_grad()
def encode_prompts(pipe, prompts: list[str], resolution: int) -> dict[str, torch.Tensor]:
    """Conditioning tensors for each prompt with the pipeline's own ``encode_prompt``."""
    kind = model_kind(denoiser_of(pipe))
    device = "cpu"
    if kind == "SD3Transformer2DModel":
        emb, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return {"encoder_hidden_states": emb.float(), "pooled_projections": pooled.float()}
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL
        emb, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        r = float(resolution)
        time_ids = torch.tensor([[r, r, 0.0, 0.0, r, r]]).repeat(len(prompts), 1)
        return {
            "encoder_hidden_states": emb.float(),
            "text_embeds": pooled.float(),
            "time_ids": time_ids,
        }
    emb, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"encoder_hidden_states": emb.float()}


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """VAE latents ((z - shift) * scale), sampled from the posterior with ``generator``."""
    dist = vae.encode(images.to(vae.dtype)).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).float()


class CachedPairs:
    """Cached latents of winners/losers and per-prompt conditioning, as ``fit`` data."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.x_w, self.x_l = tensors["x_w"], tensors["x_l"]
        self.prompt_index = tensors["prompt_index"]
        self.cond = {k[5:]: v for k, v in tensors.items() if k.startswith("cond.")}

    def __len__(self) -> int:
        return len(self.x_w)

    def get_batch(self, idx: torch.Tensor) -> dict:
        p = self.prompt_index[idx]
        return {
            "x_w": self.x_w[idx],
            "x_l": self.x_l[idx],
            "cond": {k: v[p] for k, v in self.cond.items()},
        }


def build_cache(
    pipe, pairs: list[PreferencePair], recipe: AlignRecipe, cache_dir: Path, progress: bool = False
) -> tuple[CachedPairs, dict]:
    """Encode every pair once (skipping and counting undecodable images); reuse if cached."""
    cache_file = cache_dir / "pairs.safetensors"
    if cache_file.is_file():
        log.info("reusing cached latents and text embeddings in %s", cache_dir)
        info = json.loads((cache_dir / "cache.json").read_text())
        return CachedPairs(load_tensors(cache_file)), info
    g = torch.Generator().manual_seed(recipe.seed)
    prompts: dict[str, int] = {}
    x_w, x_l, pidx, bad = [], [], [], 0
    it = range(0, len(pairs), recipe.cache_batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="caching latents", unit="batch")
    for i in it:
        imgs, keep = [], []
        for pair in pairs[i : i + recipe.cache_batch_size]:
            try:
                a = decode_image(pair.chosen, recipe.resolution)
                b = decode_image(pair.rejected, recipe.resolution)
            except ImageError as e:
                bad += 1
                log.debug("skipping pair: %s", e)
                continue
            imgs += [a, b]
            keep.append(pair)
        if not keep:
            continue
        z = encode_images(pipe.vae, torch.stack(imgs), g)
        x_w.append(z[0::2])
        x_l.append(z[1::2])
        for pair in keep:
            pidx.append(prompts.setdefault(pair.prompt, len(prompts)))
    if not x_w:
        raise ValueError(f"no usable pairs: all {len(pairs)} had a missing or undecodable image")
    names = list(prompts)
    conds: dict[str, list] = {}
    for i in range(0, len(names), recipe.cache_batch_size):
        for k, v in encode_prompts(
            pipe, names[i : i + recipe.cache_batch_size], recipe.resolution
        ).items():
            conds.setdefault(k, []).append(v)
    tensors = {
        "x_w": torch.cat(x_w),
        "x_l": torch.cat(x_l),
        "prompt_index": torch.tensor(pidx, dtype=torch.long),
    }
    tensors.update({f"cond.{k}": torch.cat(v) for k, v in conds.items()})
    info = {
        "pairs": len(pidx),
        "skipped_bad_images": bad,
        "prompts": len(names),
        "latent_shape": list(tensors["x_w"].shape[1:]),
    }
    save_tensors(cache_file, tensors)
    atomic_write_json(cache_dir / "cache.json", info)
    return CachedPairs(tensors), info


def _cache_key(model_dir, data, recipe: AlignRecipe) -> str:
    blob = json.dumps(
        [
            str(Path(model_dir).resolve()),
            str(data),
            recipe.resolution,
            recipe.max_pairs,
            recipe.data_format,
            recipe.seed,
        ]
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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
) -> dict:
    """Load, cache, train and save; returns a summary dict (also written to ``summary.json``)."""
    out_dir = Path(out_dir)
    pipe = load_pipeline(model_dir)
    policy = denoiser_of(pipe).float()
    schedule = schedule_from_scheduler(dict(pipe.scheduler.config))
    kwargs = {}
    if recipe.data_format in ("hpdv3",) or str(data).endswith(".json"):
        kwargs["models"] = recipe.hpdv3_models or None
    pairs, stats = load_pairs(data, recipe.data_format, **kwargs)
    if recipe.max_pairs:
        pairs = pairs[: recipe.max_pairs]
    log.info("loaded %d pairs (%s)", len(pairs), stats.as_dict())
    cache_dir = out_dir / "cache" / _cache_key(model_dir, data, recipe)
    rank = int(os.environ.get("RANK", "0"))  # under torchrun: rank 0 caches, the others wait
    if rank != 0:
        while not (cache_dir / "cache.json").is_file():
            time.sleep(1.0)
    cached, info = build_cache(pipe, pairs, recipe, cache_dir, progress=progress and rank == 0)
    pipe.vae = None  # free the encoders: only the denoiser trains
    for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if hasattr(pipe, name):
            setattr(pipe, name, None)
    if recipe.lora_rank:
        add_lora_(policy, recipe.lora_rank, recipe.lora_alpha)
    policy.train()
    objective = LinearDPO(recipe.dpo, policy, schedule=schedule)
    result = fit(objective, policy, cached, recipe.train, out_dir / "run", progress=progress)
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
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
