"""``diffkit distill --teacher PATH``: FPD on a local diffusers aMUSEd folder.

The folder holds ``transformer/`` (UVit2DModel), ``vqvae/`` (VQModel), ``scheduler/``
(AmusedScheduler), ``text_encoder/`` (CLIPTextModelWithProjection) and ``tokenizer/``
(CLIPTokenizer). The recipe's ``amused:`` section names the prompts (drift groups), the token grid,
and optionally a local DINOv2 folder as the lifter (otherwise set ``fpd.lifter.space: pixel``).
The student is written with ``save_pretrained`` to ``OUT/student``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from diffkit.distill.amused import AmusedTeacher, VQTokenizer, encode_prompts
from diffkit.distill.fpd import FPD, FPDConfig
from diffkit.distill.lifter import Dinov2Backbone
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)


def distill_amused(
    path: str | Path,
    opts: dict,
    fpd_config: FPDConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> Path:
    """Distil the aMUSEd model at ``path``; returns the student folder."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    path, out_dir = Path(path), Path(out_dir)
    if fpd_config.gan_weight > 0 or fpd_config.real_positives > 0:
        raise ValueError(
            "the aMUSEd runner is data-free: set fpd.gan_weight: 0 and fpd.real_positives: 0 "
            f"(got {fpd_config.gan_weight} and {fpd_config.real_positives}); both need a "
            "labelled real image set"
        )
    for sub in ("transformer", "vqvae", "scheduler", "text_encoder", "tokenizer"):
        if not (path / sub).is_dir():
            raise FileNotFoundError(f"{path} is not a local aMUSEd folder: {sub}/ is missing")
    prompts = list(opts.get("prompts", []))
    if len(prompts) < 1:
        raise ValueError("recipe amused.prompts must list at least one prompt")
    grid = tuple(opts.get("grid", (16, 16)))
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    te = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder")
    max_len = int(opts.get("max_length", tok.model_max_length))

    def enc(texts):
        ids = tok(texts, padding="max_length", truncation=True, max_length=max_len,
                  return_tensors="pt").input_ids  # fmt: skip
        return encode_prompts(te, ids)

    hidden, pooled = enc(prompts)
    null_h, null_p = enc([""])
    teacher = AmusedTeacher.from_pretrained(
        path, prompt_hidden=hidden, prompt_pooled=pooled, null_hidden=null_h[0],
        null_pooled=null_p[0], grid=grid,
    )  # fmt: skip
    tokenizer = VQTokenizer.from_pretrained(path, grid)
    backbone = None
    if fpd_config.lifter.space == "feature":
        dino = opts.get("dinov2")
        if not dino:
            raise ValueError(
                "fpd.lifter.space='feature' with aMUSEd needs amused.dinov2: PATH (a local "
                "transformers Dinov2Model folder); or set fpd.lifter.space: pixel"
            )
        from transformers import Dinov2Model

        backbone = Dinov2Backbone(
            Dinov2Model.from_pretrained(dino),
            blocks=tuple(opts.get("dinov2_blocks", (2, 5, 8, 11))),
        )
    fpd = FPD(fpd_config, teacher=teacher, tokenizer=tokenizer, lifter_backbone=backbone)
    student = fpd.make_student()
    torch.manual_seed(train_config.seed)
    fit(fpd, student, fpd.data(), train_config, out_dir / "run", progress=progress)
    student.save_pretrained(out_dir / "student")
    log.info("aMUSEd FPD student written to %s", out_dir / "student")
    return out_dir / "student"
