"""The latent cache of ``diffkit align train``: VAE latents and text embeddings, encoded once.

Every pair's two images are decoded (resize the short side, crop, optional flip), encoded with the
pipeline's VAE (a posterior sample, ``(z - shift) * scale``) and every unique prompt with the
pipeline's own ``encode_prompt``, ``cache_batch_size`` at a time on the chosen device, and saved
to ``OUT/cache/<key>/pairs.safetensors``. :func:`cache_key` hashes what the cache holds, so a
changed filter, image or setting gives a new cache. :class:`CachedPairs` serves the cache to
:func:`diffkit.train.fit` as DPO batches (see :mod:`diffkit.align.objective` for their keys).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from diffkit.align.data import DataError, ImageError, PreferencePair, decode_image
from diffkit.align.objective import SUPPORTED_MODELS, model_kind
from diffkit.core.io import atomic_write_json, load_tensors, save_tensors

if TYPE_CHECKING:
    from diffkit.align.pipeline import AlignRecipe

log = logging.getLogger(__name__)


def denoiser_of(pipe) -> nn.Module:
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if net is None:
        raise ValueError(
            f"{type(pipe).__name__} has no unet or transformer; supported denoisers: "
            f"{', '.join(SUPPORTED_MODELS)}"
        )
    return net


@torch.no_grad()
def encode_prompts(
    pipe, prompts: list[str], resolution: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Conditioning tensors (fp32, on the CPU) for each prompt with the pipeline's own
    ``encode_prompt``, run on ``device`` (where the text encoders are)."""
    kind = model_kind(denoiser_of(pipe))
    if kind == "SD3Transformer2DModel":
        emb, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=False,
        )
        return {
            "encoder_hidden_states": emb.float().cpu(),
            "pooled_projections": pooled.float().cpu(),
        }
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
            "encoder_hidden_states": emb.float().cpu(),
            "text_embeds": pooled.float().cpu(),
            "time_ids": time_ids,
        }
    emb, _ = pipe.encode_prompt(prompts, device, 1, False)
    return {"encoder_hidden_states": emb.float().cpu()}


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """VAE latents ((z - shift) * scale), sampled from the posterior with ``generator``.

    Runs on the VAE's device; the posterior noise comes from the CPU ``generator`` (the same
    samples on every device); returns fp32 on the CPU.
    """
    dist = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    noise = torch.randn(dist.mean.shape, generator=generator).to(dist.mean.device)
    z = dist.mean + dist.std * noise.to(dist.std.dtype)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((z - shift) * vae.config.scaling_factor).float().cpu()


class CachedPairs:
    """Cached latents of winners/losers and per-prompt conditioning, as ``fit`` data."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        # Contiguous: the VAE returns channels-last latents, and a run on those rounds differently
        # from one on the same values reloaded from disk (a resumed run would drift by ~1e-7).
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        self.x_w, self.x_l = tensors["x_w"], tensors["x_l"]
        self.prompt_index = tensors["prompt_index"]
        self.weight = tensors.get("weight", torch.ones(len(self.x_w)))
        self.cond = {k[5:]: v for k, v in tensors.items() if k.startswith("cond.")}
        self.uncond = {k[7:]: v for k, v in tensors.items() if k.startswith("uncond.")}
        # SDXL: per-image time ids (original size, crop top-left, target size), not per prompt.
        self.time_ids_w = self.time_ids_l = None
        if "time_ids" in self.cond and "size_crop_w" in tensors:
            target = self.cond.pop("time_ids")[:1, 4:]  # (1, 2): the training resolution
            n = len(self.x_w)
            self.time_ids_w = torch.cat([tensors["size_crop_w"], target.expand(n, 2)], 1)
            self.time_ids_l = torch.cat([tensors["size_crop_l"], target.expand(n, 2)], 1)

    def __len__(self) -> int:
        return len(self.x_w)

    def get_batch(self, idx: torch.Tensor) -> dict:
        p = self.prompt_index[idx]
        batch = {
            "x_w": self.x_w[idx],
            "x_l": self.x_l[idx],
            "cond": {k: v[p] for k, v in self.cond.items()},
            "weight": self.weight[idx],
        }
        if self.uncond:
            batch["uncond"] = {k: v.expand(len(idx), *v.shape[1:]) for k, v in self.uncond.items()}
        if self.time_ids_w is not None:
            batch["cond"]["time_ids"] = self.time_ids_w[idx]
            batch["cond_l"] = {"time_ids": self.time_ids_l[idx]}
        return batch

    def subset(self, idx: torch.Tensor) -> CachedPairs:
        """The pairs ``idx`` (e.g. a held-out split); the per-prompt tables are shared."""
        out = copy.copy(self)
        for name in ("x_w", "x_l", "prompt_index", "weight", "time_ids_w", "time_ids_l"):
            value = getattr(self, name)
            setattr(out, name, None if value is None else value[idx])
        return out


def build_cache(
    pipe,
    pairs: list[PreferencePair],
    recipe: AlignRecipe,
    cache_dir: Path,
    progress: bool = False,
    device: torch.device | str = "cpu",
) -> tuple[CachedPairs, dict]:
    """Encode every pair once, ``cache_batch_size`` images per VAE / text-encoder call on
    ``device`` (skipping and counting undecodable images); reuse if cached."""
    cache_file = cache_dir / "pairs.safetensors"
    if cache_file.is_file():
        log.info("reusing cached latents and text embeddings in %s", cache_dir)
        info = json.loads((cache_dir / "cache.json").read_text())
        return CachedPairs(load_tensors(cache_file)), info
    for name in ("vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, name, None) is not None:
            getattr(pipe, name).to(device)
    g = torch.Generator().manual_seed(recipe.seed)
    g_aug = torch.Generator().manual_seed(recipe.seed + 1)  # crops and flips, one draw per pair
    prompts: dict[str, int] = {}
    x_w, x_l, pidx, weights, meta, bad = [], [], [], [], [], 0
    it = range(0, len(pairs), recipe.cache_batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="caching latents", unit="batch")
    for i in it:
        imgs, keep = [], []
        for pair in pairs[i : i + recipe.cache_batch_size]:
            # One crop position and one flip per pair (both images alike), drawn for every pair
            # so that a skipped pair does not shift the others' draws.
            crop_flip = torch.rand(3, generator=g_aug).tolist()
            aug = {
                "crop": tuple(crop_flip[:2]) if recipe.random_crop else None,
                "flip": recipe.random_flip and crop_flip[2] < 0.5,
                "return_meta": True,
            }
            try:
                a, meta_a = decode_image(pair.chosen, recipe.resolution, **aug)
                b, meta_b = decode_image(pair.rejected, recipe.resolution, **aug)
            except ImageError as e:
                bad += 1
                log.debug("skipping pair: %s", e)
                continue
            imgs += [a, b]
            keep.append(pair)
            meta.append([meta_a, meta_b])
        if not keep:
            continue
        z = encode_images(pipe.vae, torch.stack(imgs), g)
        x_w.append(z[0::2])
        x_l.append(z[1::2])
        for pair in keep:
            pidx.append(prompts.setdefault(pair.prompt, len(prompts)))
            weights.append(pair.weight)
    if not x_w:
        raise DataError(
            f"no usable pairs: all {len(pairs)} had a missing or undecodable image "
            f"(e.g. {pairs[0].chosen if isinstance(pairs[0].chosen, str) else 'image bytes'})"
        )
    names = list(prompts)
    conds: dict[str, list] = {}
    for i in range(0, len(names), recipe.cache_batch_size):
        for k, v in encode_prompts(
            pipe, names[i : i + recipe.cache_batch_size], recipe.resolution, device
        ).items():
            conds.setdefault(k, []).append(v)
    sizes = torch.tensor(meta, dtype=torch.float32)  # (N, 2, 4): orig h, w, crop top, left
    tensors = {
        "x_w": torch.cat(x_w),
        "x_l": torch.cat(x_l),
        "prompt_index": torch.tensor(pidx, dtype=torch.long),
        "weight": torch.tensor(weights, dtype=torch.float32),
        "size_crop_w": sizes[:, 0],
        "size_crop_l": sizes[:, 1],
    }
    tensors.update({f"cond.{k}": torch.cat(v) for k, v in conds.items()})
    # The empty prompt's text conditioning, for cond_dropout (SDXL's time ids are per image).
    empty = encode_prompts(pipe, [""], recipe.resolution, device)
    tensors.update({f"uncond.{k}": v for k, v in empty.items() if k != "time_ids"})
    info = {
        "pairs": len(pidx),
        "skipped_bad_images": bad,
        "prompts": len(names),
        "latent_shape": list(tensors["x_w"].shape[1:]),
    }
    save_tensors(cache_file, tensors)
    atomic_write_json(cache_dir / "cache.json", info)
    return CachedPairs(tensors), info


def _image_fingerprint(src) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(src)).digest()
    try:
        st = os.stat(src)
        return f"{src}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    except OSError:
        return f"{src}\0missing".encode()


def _model_fingerprint(model_dir: Path) -> list:
    """Path, size and mtime of the files that shape the cache: the index, VAE and text encoders."""
    model_dir = Path(model_dir).resolve()
    files = [model_dir / "model_index.json"]
    for sub in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
        if sub.is_dir() and sub.name.startswith(("vae", "text_encoder", "tokenizer")):
            files += sorted(f for f in sub.rglob("*") if f.is_file())
    out = [str(model_dir)]
    for f in files:
        if f.is_file():
            st = f.stat()
            out.append([str(f.relative_to(model_dir)), st.st_size, st.st_mtime_ns])
    return out


def cache_key(model_dir, pairs: list[PreferencePair], recipe: AlignRecipe) -> str:
    """A hash of what the cache holds: the selected pairs' contents (so every data filter and
    ``max_pairs`` count), the model's encoders, the resolution, the VAE sampling seed and batch."""
    h = hashlib.sha256()
    settings = [
        "cache-v2",  # v2: pair weights, per-image size/crop, empty-prompt conditioning
        _model_fingerprint(model_dir),
        recipe.resolution,
        recipe.seed,
        recipe.random_crop,
        recipe.random_flip,
    ]
    h.update(json.dumps(settings + [recipe.cache_batch_size]).encode())
    for pair in pairs:
        h.update(pair.prompt.encode() + b"\0")
        h.update(_image_fingerprint(pair.chosen))
        h.update(_image_fingerprint(pair.rejected))
        h.update(struct.pack("<d", pair.weight))
    return h.hexdigest()[:16]
