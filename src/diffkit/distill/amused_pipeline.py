"""A one-step diffusers pipeline for an FPD-distilled aMUSEd student (arXiv 2605.21484).

The student is a ``UVit2DModel`` trained by :func:`diffkit.distill.amused_run.distill_amused`. It
reads the FPD start state z_init (a fraction ``r_init`` of the token grid set to the mask id, the
rest uniformly random codes; :func:`diffkit.distill.fpd.student_input`) and one forward pass
gives the logits of every token; tokens are its argmax or one categorical draw per position
(``sample_mode``, the student's training routing), decoded by the VQ model: 1 NFE, no CFG.

``AmusedPipeline`` with one step cannot do this exactly: its scheduler keeps the unmasked start
codes and only fills the masked ones. This pipeline keeps the aMUSEd layout (``vqvae``,
``tokenizer``, ``text_encoder``, ``transformer``, ``scheduler``; the scheduler supplies the mask
id) and records ``r_init`` and ``sample_mode`` in ``model_index.json``, so a saved student folder
loads with ``AmusedOneStepPipeline.from_pretrained(path)``. The text conditioning and the
micro-conditions are computed as ``AmusedPipeline`` computes them.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

from diffkit.distill.amused import vae_scale_factor
from diffkit.distill.fpd import draw_tokens, student_input


class AmusedOneStepPipeline(DiffusionPipeline):
    """One-step text-to-image sampling with an FPD aMUSEd student.

    Args:
        vqvae, tokenizer, text_encoder, transformer, scheduler: the aMUSEd components
            (``transformer`` = the student).
        r_init: masked fraction of the start state the student was trained on.
        sample_mode: "argmax" or "categorical" (``FPDConfig.sample_mode`` of its training).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vqvae"

    def __init__(
        self,
        vqvae,
        tokenizer,
        text_encoder,
        transformer,
        scheduler,
        r_init: float = 0.95,
        sample_mode: str = "categorical",  # "categorical" | "argmax"
    ):
        super().__init__()
        if not 0.0 <= r_init <= 1.0:
            raise ValueError(f"AmusedOneStepPipeline r_init must be in [0, 1], got {r_init}")
        if sample_mode not in ("categorical", "argmax"):
            raise ValueError(f"AmusedOneStepPipeline sample_mode={sample_mode!r}")
        self.register_modules(
            vqvae=vqvae,
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            transformer=transformer,
            scheduler=scheduler,
        )
        self.register_to_config(r_init=float(r_init), sample_mode=sample_mode)
        self.vae_scale_factor = vae_scale_factor(vqvae.config)
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_normalize=False
        )

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate CLIP hidden states, projected text embeds), as ``AmusedPipeline``."""
        ids = self.tokenizer(
            prompts, return_tensors="pt", padding="max_length", truncation=True,
            max_length=self.tokenizer.model_max_length,
        ).input_ids.to(self._execution_device)  # fmt: skip
        out = self.text_encoder(ids, return_dict=True, output_hidden_states=True)
        return out.hidden_states[-2], out.text_embeds

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        *,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        sample_mode: Literal["categorical", "argmax"] | None = None,
        temperature: float = 1.0,
        micro_conditioning_aesthetic_score: float = 6.0,
        micro_conditioning_crop_coord: tuple[int, int] = (0, 0),
        output_type: Literal["pil", "np", "pt", "latent"] = "pil",
        return_dict: bool = True,
    ):
        """Images for each prompt, ``num_images_per_prompt`` each, in the order p0, p0, .., p1.

        ``generator`` (a CPU generator) draws the start state and, in categorical mode, the
        tokens; the same seed gives the same images on any device. ``output_type="latent"``
        returns the token grids (B, h, w).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        mode = sample_mode or self.config.sample_mode
        hidden, pooled = self.encode_prompt(prompts)
        hidden = hidden.repeat_interleave(num_images_per_prompt, 0)
        pooled = pooled.repeat_interleave(num_images_per_prompt, 0)
        B = len(hidden)
        h = w = int(self.transformer.config.sample_size)
        s = self.vae_scale_factor
        crop = micro_conditioning_crop_coord
        micro = torch.tensor(
            [w * s, h * s, crop[0], crop[1], micro_conditioning_aesthetic_score],
            device=hidden.device, dtype=hidden.dtype,
        ).expand(B, -1)  # fmt: skip
        K = int(self.transformer.config.codebook_size)
        z = student_input(
            B, h * w, K, self.scheduler.config.mask_token_id, self.config.r_init, generator
        ).to(hidden.device)  # (B, L)
        logits = self.transformer(
            z.view(B, h, w), micro_conds=micro, pooled_text_emb=pooled,
            encoder_hidden_states=hidden,
        )  # (B, K, h, w)  # fmt: skip
        logits = logits.permute(0, 2, 3, 1).reshape(B, h * w, K)
        ids = draw_tokens(logits, mode, temperature=temperature, generator=generator)
        ids = ids.view(B, h, w)
        if output_type == "latent":
            images = ids
        else:
            C = self.vqvae.config.latent_channels
            images = self.vqvae.decode(ids, force_not_quantize=True, shape=(B, h, w, C))
            images = self.image_processor.postprocess(images.sample.clip(0, 1), output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images) if return_dict else (images,)
