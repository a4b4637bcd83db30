"""``diffkit distill``: FPD one-step distillation from a YAML recipe; ``diffkit distill sample``.

diffkit distill --recipe digits            # the tiny zoo teacher
diffkit distill --recipe amused --teacher PATH   # local aMUSEd folder
diffkit distill --recipe ... --set fpd.remask_max=0.3 --set train.steps=100
diffkit distill sample --model digits-fpd --out grid.png         # or --model OUT/student
diffkit distill sample --model OUT/student --prompt "a red apple" --out samples/  # aMUSEd student
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)

app = typer.Typer(
    help="FPD: distil a masked-token (MaskGIT-style) generator into a one-step student.",
    invoke_without_command=True,
    add_completion=False,
)


def _configs(recipe: Path | None, overrides: list[str]):
    from diffkit import config as cfglib
    from diffkit.distill.fpd import FPDConfig
    from diffkit.train import TrainConfig

    data = cfglib.read_recipe("distill", recipe) if recipe else {}
    data = cfglib.apply_overrides(data, overrides or [])
    unknown = set(data) - {"fpd", "train", "out", "eval_samples_per_class", "amused"}
    if unknown:
        raise ValueError(
            f"unknown recipe section(s) {sorted(unknown)}; valid: fpd, train, out, "
            "eval_samples_per_class, amused"
        )
    fpd = cfglib.from_dict(FPDConfig, data.get("fpd", {}), "fpd.")
    train = cfglib.from_dict(TrainConfig, data.get("train", {}), "train.")
    return data, fpd, train


@app.callback()
def distill(
    ctx: typer.Context,
    recipe: Path = typer.Option(
        None,
        help="Shipped recipe name (digits, amused) or a YAML path with `fpd:` and `train:` sections.",
    ),
    teacher: Path = typer.Option(
        None,
        help="Local diffusers aMUSEd folder (transformer/, vqvae/, scheduler/, text_encoder/, "
        "tokenizer/); default: the tiny zoo teacher digits-maskgit.",
    ),
    out: Path = typer.Option(None, help="Output folder (default: the recipe's `out`)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a recipe key, e.g. fpd.r_init=0.9"
    ),
) -> None:
    """Train a one-step FPD student (runs when no subcommand is given)."""
    if ctx.invoked_subcommand is not None:
        return
    if recipe is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    import torch

    data, fpd_cfg, train_cfg = _configs(recipe, set_)
    out_dir = Path(out or data.get("out", "out/distill"))
    if teacher is not None:
        from diffkit.distill.amused_run import distill_amused

        path = distill_amused(teacher, data.get("amused", {}), fpd_cfg, train_cfg, out_dir)
        typer.echo(f"student: {path}")
        return
    from diffkit.core.io import atomic_write_json, save_model_dir
    from diffkit.distill.evaluate import evaluate_samples
    from diffkit.distill.pipeline import (
        distill_digits,
        load_digits_zoo,
        sample_digits,
        write_sample_mode,
    )
    from diffkit.report import make_grid

    zoo = load_digits_zoo()
    student, last = distill_digits(fpd_cfg, train_cfg, out_dir / "run", zoo=zoo, progress=True)
    save_model_dir(out_dir / "student", student.state_dict(), student.config)
    write_sample_mode(out_dir / "student", fpd_cfg.sample_mode)
    n = int(data.get("eval_samples_per_class", 50))
    labels = torch.arange(10).repeat_interleave(n)
    images, ids = sample_digits(zoo.teacher, zoo.tokenizer, labels, student=student, seed=0,
                                mode=fpd_cfg.sample_mode)  # fmt: skip
    metrics = evaluate_samples(images, labels, ids=ids, codebook_size=zoo.teacher.codebook_size)
    atomic_write_json(out_dir / "metrics.json", {"train": last, "eval": metrics})
    k = min(n, 10)
    show = (torch.arange(10)[:, None] * n + torch.arange(k)).flatten()
    _save_png(make_grid(images[show], nrow=k, scale=3), out_dir / "samples.png")
    typer.echo(json.dumps({k: round(v, 4) for k, v in metrics.items()}))
    typer.echo(f"student: {out_dir / 'student'}  samples: {out_dir / 'samples.png'}")


def _save_png(arr, path: Path) -> None:
    import io

    from PIL import Image

    from diffkit.core.io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


@app.command()
def sample(
    model: str = typer.Option(
        "digits-fpd",
        help="Zoo member (digits-fpd, digits-maskgit), a student folder written by `diffkit "
        "distill`, or an aMUSEd student folder written by `diffkit distill --teacher`.",
    ),
    out: Path = typer.Option(
        None,
        help="Digits: the PNG grid to write (default out/distill/samples.png). aMUSEd: a folder, "
        "one PNG per image, PROMPT_SAMPLE.png (default out/distill/samples/).",
    ),
    prompt: list[str] = typer.Option(
        None, "--prompt", help="aMUSEd students: a prompt (repeatable; or --prompts-file)."
    ),
    prompts_file: Path = typer.Option(
        None, help="aMUSEd students: a .txt (one prompt a line) or .jsonl prompt file."
    ),
    per_class: int = typer.Option(
        8, min=1, help="Samples per class (one grid row each), or per prompt for aMUSEd."
    ),
    steps: int = typer.Option(8, min=1, help="Teacher steps (only for digits-maskgit)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    mode: str = typer.Option(
        "auto",
        help="Student tokens: argmax | categorical | auto (the mode recorded with the student: "
        "its training routing, FPDConfig.sample_mode; categorical if none is recorded).",
    ),
) -> None:
    """Write samples: a class grid (one-step student or the multi-step teacher), or the images of
    an aMUSEd student for the given prompts."""
    if mode not in ("auto", "argmax", "categorical"):
        raise typer.BadParameter(f"--mode {mode!r}: use auto, argmax or categorical")
    if (Path(model) / "model_index.json").is_file():
        _sample_amused(Path(model), out, prompt, prompts_file, per_class, seed, mode)
        return
    if prompt or prompts_file:
        raise typer.BadParameter(
            f"--prompt needs an aMUSEd student folder (with model_index.json); {model} is not one"
        )
    import time

    import torch

    from diffkit import models
    from diffkit.distill.pipeline import load_digits_zoo, sample_digits, sample_mode_of
    from diffkit.models.maskgit import load_dir
    from diffkit.report import make_grid

    out = out or Path("out/distill/samples.png")
    zoo = load_digits_zoo()
    labels = torch.arange(10).repeat_interleave(per_class)
    student = None
    if mode == "auto":
        mode = sample_mode_of(model) if model != "digits-maskgit" else "categorical"
    if model != "digits-maskgit":
        student = models.load(model) if model in models.list_models() else load_dir(model).eval()
    t0 = time.perf_counter()
    images, _ = sample_digits(zoo.teacher, zoo.tokenizer, labels, student=student, steps=steps,
                              seed=seed, mode=mode)  # fmt: skip
    dt = time.perf_counter() - t0
    _save_png(make_grid(images, nrow=per_class, scale=3), out)
    nfe = 1 if student is not None else 2 * steps
    typer.echo(f"{len(images)} samples ({nfe} NFE each) in {dt:.2f} s -> {out}")


def _sample_amused(model: Path, out, prompt, prompts_file, per_prompt, seed, mode) -> None:
    import numpy as np
    import torch

    from diffkit.distill.amused_pipeline import AmusedOneStepPipeline
    from diffkit.distill.amused_run import load_prompts

    prompts = list(prompt or []) + (load_prompts(str(prompts_file)) if prompts_file else [])
    if not prompts:
        raise typer.BadParameter("an aMUSEd student needs --prompt TEXT (or --prompts-file)")
    out = out or Path("out/distill/samples")
    if out.suffix.lower() == ".png":
        raise typer.BadParameter(f"--out {out}: aMUSEd samples go to a folder, one PNG each")
    pipe = AmusedOneStepPipeline.from_pretrained(model)
    images = pipe(prompts, num_images_per_prompt=per_prompt, output_type="np",
                  generator=torch.Generator().manual_seed(seed),
                  sample_mode=None if mode == "auto" else mode).images  # fmt: skip
    arr = (images * 255).round().astype(np.uint8)  # as diffusers' numpy_to_pil
    for i, img in enumerate(arr):
        _save_png(img, out / f"{i // per_prompt:03d}_{i % per_prompt:02d}.png")
    typer.echo(f"{len(arr)} images (1 NFE each, {pipe.config.sample_mode if mode == 'auto' else mode} "
               f"tokens) -> {out}/")  # fmt: skip


@app.command()
def options() -> None:
    """List every recipe field (FPDConfig under `fpd:`, TrainConfig under `train:`) with its doc."""
    import dataclasses

    from diffkit.config import field_docs
    from diffkit.distill.fpd import FPDConfig
    from diffkit.distill.lifter import LifterConfig
    from diffkit.train import TrainConfig

    for section, cls in (("fpd", FPDConfig), ("fpd.lifter", LifterConfig), ("train", TrainConfig)):
        docs = field_docs(cls)
        typer.echo(f"{section}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if dataclasses.is_dataclass(default):
                default = "(see below)"
            typer.echo(f"  {f.name} = {default!r}: {docs.get(f.name, '')}")
