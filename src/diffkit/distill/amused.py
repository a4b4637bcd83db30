"""diffusers aMUSEd (Patil et al. 2024, arXiv 2401.01808) as an FPD teacher / tokenizer pair.

aMUSEd is a text-conditional MaskGIT/MUSE model: ``UVit2DModel`` predicts codebook logits
(B, K, h, w) for a partly masked (B, h, w) id grid, conditioned on CLIP hidden states, a pooled CLIP
projection and five "micro-conditions" (width, height, crop top/left, aesthetic score); a ``VQModel``
decodes codes to images; ``AmusedScheduler`` holds the mask id and the sampling schedule.

* :class:`AmusedTeacher` wraps the transformer + scheduler with a table of prompt embeddings
  (condition ids = prompt indices; the null condition is the empty-prompt embedding for CFG). The
  token grid is the transformer's ``config.sample_size`` and the micro-conditions' width/height are
  the grid times the VQ model's scale factor, as ``AmusedPipeline`` computes them (so an
  amused-512 is conditioned at 512x512); a ``grid`` that disagrees with the config is an error.
* :class:`VQTokenizer` wraps the ``VQModel`` (codebook lookup + post-quant conv + decoder, called
  through its own submodules, so decoding is differentiable in the embeddings for the STE).

Nothing here downloads: load local folders with ``from_pretrained(path)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffkit.distill.interfaces import MaskedTeacher


def vae_scale_factor(vq_config) -> int:
    """Pixels per token side of a ``VQModel`` (its config or config dict), as ``AmusedPipeline``."""
    get = vq_config.get if isinstance(vq_config, dict) else lambda k: getattr(vq_config, k)
    return 2 ** (len(get("block_out_channels")) - 1)


def model_grid(transformer_config, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """The token grid of a ``UVit2DModel`` (``config.sample_size`` square); ``grid``, if given, must
    agree with it."""
    get = (
        transformer_config.get
        if isinstance(transformer_config, dict)
        else lambda k: getattr(transformer_config, k)
    )
    size = int(get("sample_size"))
    if grid is not None and tuple(int(g) for g in grid) != (size, size):
        raise ValueError(
            f"grid mismatch: grid={list(grid)} but the transformer's config.sample_size={size} "
            f"means a {size}x{size} token grid; drop the grid setting or fix it"
        )
    return size, size


class AmusedTeacher(MaskedTeacher):
    """``UVit2DModel`` + ``AmusedScheduler`` adapter over a fixed table of prompts.

    Args:
        transformer: a diffusers ``UVit2DModel``.
        scheduler: a diffusers ``AmusedScheduler`` (its ``mask_token_id`` is the mask id).
        prompt_hidden: (P, S, D) encoder hidden states per prompt.
        prompt_pooled: (P, Dp) pooled text embeddings per prompt.
        null_hidden: (S, D) and ``null_pooled`` (Dp,): the empty prompt, for CFG.
        vae_scale_factor: pixels per token side of the VQ model (:func:`vae_scale_factor`).
        grid: optional (h, w) check; the grid is the transformer's ``config.sample_size``.
        aesthetic_score: micro-condition (aMUSEd's default 6).
        crop_coord: micro-condition (top, left) crop (default (0, 0)).
    """

    def __init__(
        self,
        transformer: nn.Module,
        scheduler,
        *,
        prompt_hidden: torch.Tensor,
        prompt_pooled: torch.Tensor,
        null_hidden: torch.Tensor,
        null_pooled: torch.Tensor,
        vae_scale_factor: int,
        grid: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        crop_coord: tuple[int, int] = (0, 0),
    ):
        if type(transformer).__name__ != "UVit2DModel":
            raise ValueError(
                f"AmusedTeacher supports diffusers UVit2DModel, got {type(transformer).__name__}; "
                "for the tiny zoo MaskGIT use ClassConditionalTeacher"
            )
        if type(scheduler).__name__ != "AmusedScheduler":
            raise ValueError(
                f"AmusedTeacher needs an AmusedScheduler, got {type(scheduler).__name__}"
            )
        K = transformer.config.codebook_size
        mask_id = scheduler.config.mask_token_id
        if mask_id >= transformer.config.vocab_size:
            raise ValueError(
                f"mask_token_id={mask_id} is outside the transformer's vocab_size="
                f"{transformer.config.vocab_size}"
            )
        grid = model_grid(transformer.config, grid)
        super().__init__(
            transformer, codebook_size=K, mask_id=mask_id, num_tokens=grid[0] * grid[1]
        )
        self.scheduler = scheduler
        self.grid = tuple(grid)
        self.register_buffer("prompt_hidden", prompt_hidden.float())
        self.register_buffer("prompt_pooled", prompt_pooled.float())
        self.register_buffer("null_hidden", null_hidden.float())
        self.register_buffer("null_pooled", null_pooled.float())
        h, w = grid
        s = int(vae_scale_factor)
        # the order of AmusedPipeline: width, height, crop top, crop left, aesthetic score
        micro = (w * s, h * s, crop_coord[0], crop_coord[1], aesthetic_score)
        self.register_buffer("micro_conds", torch.tensor(micro, dtype=torch.float32))
        self.num_conditions = len(prompt_hidden)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        prompt_hidden: torch.Tensor,
        prompt_pooled: torch.Tensor,
        null_hidden: torch.Tensor,
        null_pooled: torch.Tensor,
        grid: tuple[int, int] | None = None,
        aesthetic_score: float = 6.0,
        crop_coord: tuple[int, int] = (0, 0),
    ) -> AmusedTeacher:
        """Load ``transformer/`` and ``scheduler/`` of a local aMUSEd folder (and the scale factor
        from ``vqvae/config.json``)."""
        from diffusers import AmusedScheduler, UVit2DModel, VQModel

        path = Path(path)
        return cls(
            UVit2DModel.from_pretrained(path / "transformer"),
            AmusedScheduler.from_pretrained(path / "scheduler"),
            prompt_hidden=prompt_hidden,
            prompt_pooled=prompt_pooled,
            null_hidden=null_hidden,
            null_pooled=null_pooled,
            vae_scale_factor=vae_scale_factor(VQModel.load_config(path / "vqvae")),
            grid=grid,
            aesthetic_score=aesthetic_score,
            crop_coord=crop_coord,
        )

    def forward_logits(self, net, tokens, cond):
        B = tokens.shape[0]
        h, w = self.grid
        out = net(
            tokens.view(B, h, w),
            encoder_hidden_states=cond["hidden"],
            pooled_text_emb=cond["pooled"],
            micro_conds=self.micro_conds.expand(B, -1),
        )  # (B, K, h, w)
        return out.permute(0, 2, 3, 1).reshape(B, h * w, -1)

    def condition(self, ids):
        if ids.min() < 0 or ids.max() >= self.num_conditions:
            raise ValueError(
                f"prompt ids must be in [0, {self.num_conditions}), got {ids.tolist()}"
            )
        ids = ids.to(self.prompt_hidden.device)
        return {"hidden": self.prompt_hidden[ids], "pooled": self.prompt_pooled[ids]}

    def null_condition(self, n):
        return {
            "hidden": self.null_hidden.expand(n, -1, -1),
            "pooled": self.null_pooled.expand(n, -1),
        }

    @torch.no_grad()
    def sample(self, cond, steps=12, *, generator=None, guidance_scale=10.0, temperature=1.0,
               choice_temperature=2.0, schedule="cosine"):  # fmt: skip
        """Multi-step sampling with ``AmusedScheduler.step`` (the diffusers aMUSEd loop)."""
        B = len(cond["hidden"])
        h, w = self.grid
        sch = self.scheduler
        sch.set_timesteps(steps, temperature=(choice_temperature, 0.0))
        z = torch.full((B, h, w), self.mask_id, dtype=torch.long, device=self.micro_conds.device)
        for t in sch.timesteps:
            logits = self.guided_logits(z.view(B, -1), cond, guidance_scale) / temperature
            logits = logits.view(B, h, w, -1).permute(0, 3, 1, 2)
            z = sch.step(logits, t, z, generator=generator).prev_sample
        return z.view(B, -1)


class VQTokenizer(nn.Module):
    """diffusers ``VQModel`` as an FPD :class:`~diffkit.distill.Tokenizer` (codes -> images)."""

    def __init__(self, vq: nn.Module, grid: tuple[int, int]):
        super().__init__()
        if type(vq).__name__ != "VQModel":
            raise ValueError(f"VQTokenizer supports diffusers VQModel, got {type(vq).__name__}")
        self.vq = vq.eval().requires_grad_(False)
        self.grid = tuple(grid)
        self.num_tokens = grid[0] * grid[1]
        self.codebook_size = vq.quantize.embedding.weight.shape[0]

    @classmethod
    def from_pretrained(cls, path: str | Path, grid: tuple[int, int]) -> VQTokenizer:
        from diffusers import VQModel

        return cls(VQModel.from_pretrained(Path(path) / "vqvae"), grid)

    @property
    def codebook(self) -> torch.Tensor:
        return self.vq.quantize.embedding.weight

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        h = self.vq.quant_conv(self.vq.encoder(images))
        _, _, (_, _, idx) = self.vq.quantize(h)
        return idx.view(len(images), -1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.codebook[ids]

    def decode(self, emb: torch.Tensor) -> torch.Tensor:
        B, L, C = emb.shape
        h, w = self.grid
        quant = emb.transpose(1, 2).reshape(B, C, h, w)
        spatial = quant if self.vq.config.norm_type == "spatial" else None
        return self.vq.decoder(self.vq.post_quant_conv(quant), spatial)


@torch.no_grad()
def encode_prompts(text_encoder: nn.Module, input_ids: torch.Tensor):
    """aMUSEd's text conditioning: (penultimate hidden states, projected text embeds)."""
    out = text_encoder(input_ids, return_dict=True, output_hidden_states=True)
    return out.hidden_states[-2], out.text_embeds
