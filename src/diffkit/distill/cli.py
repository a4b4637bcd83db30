"""``diffkit distill``: FPD one-step distillation from a YAML recipe; ``diffkit distill sample``.

diffkit distill --recipe digits            # the tiny zoo teacher
diffkit distill --recipe amused --teacher PATH   # local aMUSEd folder
diffkit distill --recipe ... --set fpd.remask_max=0.3 --set train.steps=100
diffkit distill sample --model digits-fpd --out grid.png         # or --model OUT/student
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

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
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
    metrics = evaluate_samples(images, labels, ids=ids, codebook_size=64)
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
        help="Zoo member (digits-fpd, digits-maskgit) or a "
        "student folder written by `diffkit distill`.",
    ),
    out: Path = typer.Option(Path("out/distill/samples.png"), help="PNG grid to write."),
    per_class: int = typer.Option(8, min=1, help="Samples per class (one row per class)."),
    steps: int = typer.Option(8, min=1, help="Teacher steps (only for digits-maskgit)."),
    seed: int = typer.Option(0, help="Sampling seed."),
    mode: str = typer.Option(
        "auto",
        help="Student tokens: argmax | categorical | auto (the mode recorded with the student: "
        "its training routing, FPDConfig.sample_mode; categorical if none is recorded).",
    ),
) -> None:
    """Write a grid of class-conditional samples (one-step student, or the multi-step teacher)."""
    import time

    import torch

    from diffkit import models
    from diffkit.distill.pipeline import load_digits_zoo, sample_digits, sample_mode_of
    from diffkit.models.maskgit import load_dir
    from diffkit.report import make_grid

    zoo = load_digits_zoo()
    labels = torch.arange(10).repeat_interleave(per_class)
    if mode not in ("auto", "argmax", "categorical"):
        raise typer.BadParameter(f"--mode {mode!r}: use auto, argmax or categorical")
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
