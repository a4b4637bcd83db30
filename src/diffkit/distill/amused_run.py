"""``diffkit distill --teacher PATH``: FPD (arXiv 2605.21484) on a local diffusers aMUSEd folder.

The folder holds ``transformer/`` (UVit2DModel), ``vqvae/`` (VQModel), ``scheduler/``
(AmusedScheduler), ``text_encoder/`` (CLIPTextModelWithProjection) and ``tokenizer/``
(CLIPTokenizer). The recipe's ``amused:`` section (:class:`AmusedRunConfig`) names the prompts
(drift groups; a list, or a .txt / .jsonl file), optionally checks the token grid, sets the
micro-conditions that are not sizes, and optionally a local DINOv2 folder as the lifter
(otherwise set ``fpd.lifter.space: pixel``). The token grid and the micro-conditions' width and
height come from the model's config.

``OUT/student`` is a self-contained :class:`~diffkit.distill.amused_pipeline.AmusedOneStepPipeline`
folder: the student transformer (the EMA weights when ``train.ema_decay`` > 0), the teacher's
VQ model, text encoder, tokenizer and scheduler, and the sampling mode and start state
(``r_init``) in ``model_index.json`` and ``sampling.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from diffkit.core.ema import EMA
from diffkit.distill.amused import AmusedTeacher, VQTokenizer, encode_prompts
from diffkit.distill.fpd import FPD, FPDConfig
from diffkit.distill.lifter import Dinov2Backbone
from diffkit.train import TrainConfig, fit

log = logging.getLogger(__name__)

SAMPLING_FILE = "sampling.json"


@dataclass(frozen=True, kw_only=True)
class AmusedRunConfig:
    """The recipe's ``amused:`` section.

    Attributes:
        prompts: the drift groups: a list of prompts, or the path of a text file (one prompt a
            line; blank lines skipped) or a .jsonl file (one JSON string, or an object with a
            "prompt" field, a line).
        grid: optional check of the token grid [h, w]; the grid is the transformer's
            ``config.sample_size`` and a different value is an error.
        max_length: CLIP tokenizer length (default: the tokenizer's ``model_max_length``); saved
            with the student's tokenizer.
        aesthetic_score: aMUSEd micro-condition (its default 6).
        crop_coord: aMUSEd micro-condition, the (top, left) crop (default [0, 0]).
        dinov2: local transformers ``Dinov2Model`` folder for feature-space drift.
        dinov2_blocks: DINOv2 blocks used as feature maps.
        mixed_precision: "no" or "bf16" autocast through accelerate; null = accelerate's own
            setting (``accelerate launch --mixed_precision`` / ``accelerate config``, else "no").
            fp16 is refused: it needs a loss scaler, which diffkit.train.fit does not run.
        cpu: run on the CPU even when accelerate finds a GPU (default: accelerate's device).
    """

    prompts: tuple[str, ...] | str = ()
    grid: tuple[int, int] | None = None
    max_length: int | None = None
    aesthetic_score: float = 6.0
    crop_coord: tuple[int, int] = (0, 0)
    dinov2: str | None = None
    dinov2_blocks: tuple[int, ...] = (2, 5, 8, 11)
    mixed_precision: Literal["no", "bf16"] | None = None
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.mixed_precision not in (None, "no", "bf16"):
            raise ValueError(
                f"AmusedRunConfig.mixed_precision={self.mixed_precision!r}; use 'no' or 'bf16' "
                "(fp16 needs a loss scaler, which diffkit.train.fit does not run)"
            )
        if not self.prompts:
            raise ValueError(
                "AmusedRunConfig.prompts must list at least one prompt or name a .txt/.jsonl file"
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"AmusedRunConfig.max_length must be >= 2, got {self.max_length}")


def load_prompts(prompts: tuple[str, ...] | list[str] | str) -> list[str]:
    """A list of prompts from a list, or from a text file (one a line) or a .jsonl file."""
    if not isinstance(prompts, str):
        return list(prompts)
    path = Path(prompts)
    if not path.is_file():
        raise ValueError(
            f"amused.prompts={prompts!r} is not a file; give a list of prompts, or the path of a "
            ".txt file (one prompt a line) or a .jsonl file"
        )
    lines = [(i, ln.strip()) for i, ln in enumerate(path.read_text().splitlines(), 1)]
    lines = [(i, ln) for i, ln in lines if ln]
    if path.suffix != ".jsonl":
        out = [ln for _, ln in lines]
    else:
        out = []
        for i, ln in lines:
            item = json.loads(ln)
            if isinstance(item, dict) and isinstance(item.get("prompt"), str):
                item = item["prompt"]
            if not isinstance(item, str):
                raise ValueError(
                    f"{path}:{i}: a JSONL line must be a string or an object with a string "
                    f"'prompt' field, got {ln[:60]!r}"
                )
            out.append(item)
    if not out:
        raise ValueError(f"{path} holds no prompts")
    return out


def load_amused(path: str | Path, run: AmusedRunConfig) -> tuple[AmusedTeacher, VQTokenizer, list]:
    """Teacher adapter, tokenizer and the prompt list of the aMUSEd folder ``path``."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    path = Path(path)
    for sub in ("transformer", "vqvae", "scheduler", "text_encoder", "tokenizer"):
        if not (path / sub).is_dir():
            raise FileNotFoundError(f"{path} is not a local aMUSEd folder: {sub}/ is missing")
    prompts = load_prompts(run.prompts)
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    te = CLIPTextModelWithProjection.from_pretrained(path / "text_encoder")
    max_len = run.max_length or tok.model_max_length

    def enc(texts):
        ids = tok(texts, padding="max_length", truncation=True, max_length=max_len,
                  return_tensors="pt").input_ids  # fmt: skip
        return encode_prompts(te, ids)

    hidden, pooled = enc(prompts)
    null_h, null_p = enc([""])
    teacher = AmusedTeacher.from_pretrained(
        path, prompt_hidden=hidden, prompt_pooled=pooled, null_hidden=null_h[0],
        null_pooled=null_p[0], grid=run.grid, aesthetic_score=run.aesthetic_score,
        crop_coord=run.crop_coord,
    )  # fmt: skip
    return teacher, VQTokenizer.from_pretrained(path, teacher.grid), prompts


def save_student(
    path: str | Path, student: torch.nn.Module, out: str | Path, *, r_init: float,
    sample_mode: str, max_length: int | None = None,
) -> Path:  # fmt: skip
    """Write ``out`` as an AmusedOneStepPipeline folder: ``student`` + the teacher's other parts."""
    from diffusers import AmusedScheduler, VQModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    from diffkit.core.io import atomic_write_json
    from diffkit.distill.amused_pipeline import AmusedOneStepPipeline

    path, out = Path(path), Path(out)
    tok = CLIPTokenizer.from_pretrained(path / "tokenizer")
    if max_length:
        tok.model_max_length = max_length
    pipe = AmusedOneStepPipeline(
        vqvae=VQModel.from_pretrained(path / "vqvae"),
        tokenizer=tok,
        text_encoder=CLIPTextModelWithProjection.from_pretrained(path / "text_encoder"),
        transformer=student,
        scheduler=AmusedScheduler.from_pretrained(path / "scheduler"),
        r_init=r_init,
        sample_mode=sample_mode,
    )
    pipe.save_pretrained(out)
    atomic_write_json(out / SAMPLING_FILE, {"sample_mode": sample_mode, "r_init": r_init})
    return out


class _Autocast:
    """The objective under accelerate's autocast; its checkpoint state passes through."""

    def __init__(self, objective: FPD, accelerator):
        self.objective, self.accelerator = objective, accelerator

    def __call__(self, model, batch, ctx):
        with self.accelerator.autocast():
            return self.objective(model, batch, ctx)

    def state_dict(self) -> dict:
        return self.objective.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.objective.load_state_dict(state)


def make_accelerator(run: AmusedRunConfig):
    """accelerate's ``Accelerator`` for the run's device and mixed precision (bf16 or none)."""
    from accelerate import Accelerator

    acc = Accelerator(mixed_precision=run.mixed_precision, cpu=run.cpu)
    if acc.mixed_precision not in ("no", "bf16"):
        raise ValueError(
            f"mixed precision {acc.mixed_precision!r} (from accelerate's configuration) is not "
            "supported by the aMUSEd runner; use no or bf16 (fp16 needs a loss scaler)"
        )
    return acc


def distill_amused(
    path: str | Path,
    opts: dict | AmusedRunConfig,
    fpd_config: FPDConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
) -> Path:
    """Distil the aMUSEd model at ``path``; returns the student (pipeline) folder."""
    from diffkit import config as cfglib

    path, out_dir = Path(path), Path(out_dir)
    if fpd_config.gan_weight > 0 or fpd_config.real_positives > 0:
        raise ValueError(
            "the aMUSEd runner is data-free: set fpd.gan_weight: 0 and fpd.real_positives: 0 "
            f"(got {fpd_config.gan_weight} and {fpd_config.real_positives}); both need a "
            "labelled real image set"
        )
    run = opts if isinstance(opts, AmusedRunConfig) else cfglib.from_dict(
        AmusedRunConfig, opts, "amused."
    )  # fmt: skip
    teacher, tokenizer, prompts = load_amused(path, run)
    log.info("aMUSEd teacher: %d prompts, grid %s, micro-conditions %s", len(prompts),
             teacher.grid, teacher.micro_conds.tolist())  # fmt: skip
    backbone = None
    if fpd_config.lifter.space == "feature":
        if not run.dinov2:
            raise ValueError(
                "fpd.lifter.space='feature' with aMUSEd needs amused.dinov2: PATH (a local "
                "transformers Dinov2Model folder); or set fpd.lifter.space: pixel or embedding"
            )
        from transformers import Dinov2Model

        backbone = Dinov2Backbone(Dinov2Model.from_pretrained(run.dinov2), blocks=run.dinov2_blocks)
    acc = make_accelerator(run)
    teacher, tokenizer = teacher.to(acc.device), tokenizer.to(acc.device)
    backbone = backbone.to(acc.device) if backbone is not None else None
    log.info("device %s, mixed precision %s", acc.device, acc.mixed_precision)
    fpd = FPD(fpd_config, teacher=teacher, tokenizer=tokenizer, lifter_backbone=backbone)
    student = fpd.make_student()  # fp32 weights; autocast runs the forward in bf16 if asked
    torch.manual_seed(train_config.seed)
    ema = EMA(student, train_config.ema_decay) if train_config.ema_decay > 0 else None
    objective = _Autocast(fpd, acc)
    fit(objective, student, fpd.data(), train_config, out_dir / "run", ema=ema, progress=progress)
    if ema is not None:  # the saved student is the EMA, as for the digits runs
        ema.copy_to(student)
    out = save_student(
        path, student.eval().cpu(), out_dir / "student", r_init=fpd_config.r_init,
        sample_mode=fpd_config.sample_mode, max_length=run.max_length,
    )  # fmt: skip
    log.info("aMUSEd FPD student written to %s", out)
    return out
