"""``digits-unet-eps``: a class-conditional diffusers ``UNet2DConditionModel`` on 16x16 digits.

eps-prediction DDPM (scaled-linear betas, T = 1000) trained on pixels (1 channel, no VAE). The class
enters like a text prompt: a learned table maps each label (and a null label 10 for classifier-free
guidance) to ``num_tokens`` tokens of width ``cross_attention_dim``, fed as
``encoder_hidden_states``. So the UNet is exactly the class Stable Diffusion uses, and the class
tokens play the role of cached text embeddings.

Layout of the weights folder (flat, so ``SHA256SUMS`` covers every file)::

    config.json, diffusion_pytorch_model.safetensors   diffusers save_pretrained of the denoiser
    conditioner.safetensors                           the class-token table
    denoiser.json                                     {"kind", "schedule", "num_classes", ...}

:class:`ClassConditionalDenoiser` is shared with :mod:`diffkit.models.digits_sd3`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from diffkit.core.io import atomic_dir, atomic_write_json, load_tensors, save_tensors
from diffkit.core.samplers import ddim_sample, euler_sample, guided
from diffkit.core.schedules import DDPM, FlowMatching

DEFAULT_CONFIG = {
    "kind": "unet",
    "num_classes": 10,
    "num_tokens": 2,
    "image_size": 16,
    "schedule": {"type": "ddpm", "beta_schedule": "scaled_linear", "prediction_type": "epsilon"},
    "model": {
        "sample_size": 16,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": [16, 32],
        "norm_num_groups": 8,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
    },
}


def make_schedule(spec: dict) -> DDPM | FlowMatching:
    spec = dict(spec)
    kind = spec.pop("type")
    return DDPM(**spec) if kind == "ddpm" else FlowMatching(**spec)


class ClassConditionalDenoiser(nn.Module):
    """A diffusers denoiser (``.model``) plus a learned class-token table (``.tokens``).

    ``cond(labels)`` returns the conditioning dict :func:`diffkit.align.predict` takes;
    label ``num_classes`` is the null (unconditional) label.
    """

    def __init__(self, model: nn.Module, config: dict) -> None:
        super().__init__()
        self.model = model
        self.config = config
        k, n = config["num_classes"], config["num_tokens"]
        self.token_dim = self._token_dim()
        self.tokens = nn.Embedding(k + 1, n * self.token_dim)
        nn.init.normal_(self.tokens.weight, std=1.0)
        self.pooled_dim = config["model"].get("pooled_projection_dim", 0)
        self.pooled = nn.Embedding(k + 1, self.pooled_dim) if self.pooled_dim else None
        self.schedule = make_schedule(config["schedule"])

    def _token_dim(self) -> int:
        m = self.config["model"]
        return m.get("cross_attention_dim") or m["joint_attention_dim"]

    @property
    def null_label(self) -> int:
        return self.config["num_classes"]

    def cond(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        B = labels.shape[0]
        out = {"encoder_hidden_states": self.tokens(labels).view(B, -1, self.token_dim)}
        if self.pooled is not None:
            out["pooled_projections"] = self.pooled(labels)
        return out

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        """Model output at schedule time ``t`` (integer step or sigma)."""
        mt = self.schedule.model_t(t)
        if "pooled_projections" in cond:
            return self.model(
                hidden_states=x_t,
                timestep=mt.float(),
                encoder_hidden_states=cond["encoder_hidden_states"],
                pooled_projections=cond["pooled_projections"],
            ).sample
        return self.model(x_t, mt, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.predict(x_t, t, self.cond(labels))

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        steps: int = 20,
        guidance: float = 1.0,
        generator: torch.Generator | None = None,
        denoiser: nn.Module | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Images (B, 1, S, S) for ``labels`` by DDIM (DDPM) or Euler (flow), with CFG.

        ``denoiser`` replaces ``self.model`` (e.g. an aligned copy) while keeping the class tokens.
        """
        net = denoiser if denoiser is not None else self.model
        S, C = self.config["image_size"], self.config["model"]["in_channels"]
        cond, null = self.cond(labels), self.cond(torch.full_like(labels, self.null_label))
        saved, self.model = self.model, net
        try:

            def fn_c(x, t):
                return self.predict(x, t, cond)

            def fn_u(x, t):
                return self.predict(x, t, null)

            fn = guided(fn_c, fn_u, guidance)
            x = noise if noise is not None else (len(labels), C, S, S)
            if isinstance(self.schedule, DDPM):
                out = ddim_sample(fn, self.schedule, x, steps, generator, clip_x0=1.0)
            else:
                out = euler_sample(fn, self.schedule, x, steps, generator)
        finally:
            self.model = saved
        return out.clamp(-1, 1)


def _build_inner(config: dict) -> nn.Module:
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    m = dict(config["model"])
    for k, v in m.items():
        if isinstance(v, list):
            m[k] = tuple(v)
    if config["kind"] == "unet":
        return UNet2DConditionModel(**m)
    return SD3Transformer2DModel(**m)


def build(config: dict) -> ClassConditionalDenoiser:
    """Random-init model from a config dict."""
    return ClassConditionalDenoiser(_build_inner(config), config)


def save_dir(model: ClassConditionalDenoiser, directory: str | Path, extra: dict | None = None):
    """Write the folder (diffusers files + class tokens + wrapper config) as one atomic swap."""
    with atomic_dir(directory) as tmp:
        model.model.save_pretrained(tmp)
        tensors = {"tokens": model.tokens.weight}
        if model.pooled is not None:
            tensors["pooled"] = model.pooled.weight
        save_tensors(tmp / "conditioner.safetensors", tensors)
        atomic_write_json(tmp / "denoiser.json", model.config)
        for name, obj in (extra or {}).items():
            atomic_write_json(tmp / name, obj)
    return Path(directory)


def load_dir(path: str | Path) -> ClassConditionalDenoiser:
    """Load a folder written by :func:`save_dir` (the diffusers part through ``from_pretrained``)."""
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    path = Path(path)
    config = json.loads((path / "denoiser.json").read_text())
    cls = UNet2DConditionModel if config["kind"] == "unet" else SD3Transformer2DModel
    model = ClassConditionalDenoiser(cls.from_pretrained(path), config)
    t = load_tensors(path / "conditioner.safetensors")
    model.tokens.weight.data.copy_(t["tokens"])
    if model.pooled is not None:
        model.pooled.weight.data.copy_(t["pooled"])
    return model
