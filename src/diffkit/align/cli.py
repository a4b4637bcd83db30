"""``diffkit align``: Linear-DPO on a local diffusers model folder, and recipe help."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Preference alignment (Linear-DPO, arXiv 2605.21123) of diffusion and flow models.",
    no_args_is_help=True,
)


def load_recipe(recipe: Path | None, overrides: list[str]):
    """An :class:`AlignRecipe` from a YAML file (or defaults) plus ``key.sub=value`` overrides."""
    from diffkit import config as cfglib
    from diffkit.align.pipeline import AlignRecipe

    data = cfglib.read_recipe("align", recipe) if recipe is not None else {}
    data = cfglib.apply_overrides(data, overrides or [])
    return cfglib.from_dict(AlignRecipe, data)


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(2)


@app.command()
def train(
    model: Path = typer.Option(..., help="Local diffusers pipeline folder (SD1.5, SDXL or SD3)."),
    data: list[Path] = typer.Option(
        ...,
        help="Preference data: Pick-a-Pic parquet(s)/folder, HPDv3 JSON, or JSONL/parquet "
        "with prompt, chosen, rejected. Repeatable.",
    ),
    recipe: Path = typer.Option(
        None, help="Shipped recipe name (e.g. sd15; see `diffkit align recipes`) or a YAML path."
    ),
    out: Path = typer.Option(Path("out/align"), help="Output folder (cache, checkpoints, final)."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a recipe key, e.g. --set train.steps=10. Repeatable."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Resume the checkpoint in OUT/run even if it was made by another recipe, model or "
        "data (by default such a run is refused, naming the changed fields).",
    ),
    device: str = typer.Option(
        None,
        help="Where to cache and train: auto (accelerate's device: the local GPU under "
        "torchrun), cpu, cuda, cuda:N or mps. Default: the recipe's train.device (cpu).",
    ),
    mixed_precision: str = typer.Option(
        None,
        "--mixed-precision",
        help="no, bf16 or fp16: autocast of the forward passes; weights, optimizer state and "
        "the EMA stay fp32 (fp16 adds a gradient scaler). Default: the recipe's (no).",
    ),
    gradient_checkpointing: bool = typer.Option(
        None,
        "--gradient-checkpointing/--no-gradient-checkpointing",
        help="Recompute the denoiser's activations in backward (less memory, more compute).",
    ),
    optimizer: str = typer.Option(
        None,
        help="adamw or adamw_8bit (needs bitsandbytes, the bnb extra). Default: the recipe's.",
    ),
) -> None:
    """Cache VAE latents and text embeddings once, then train the denoiser with Linear-DPO."""
    import json

    import torch

    from diffkit.align.data import DataError
    from diffkit.align.pipeline import ModelFolderError, RecipeError, ResumeError, align_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    flags = {
        "train.device": device,
        "train.mixed_precision": mixed_precision,
        "train.optimizer": optimizer,
        "gradient_checkpointing": gradient_checkpointing,
    }
    overrides = list(set_ or []) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    try:
        cfg = load_recipe(recipe, overrides)
    except ValueError as e:  # an unknown key or a bad value: one line, not a traceback
        _fail(e)
    try:
        summary = align_model(model, list(data), cfg, out, progress=True, force=force)
    except (DataError, ModelFolderError, RecipeError, ResumeError, TimeoutError, ImportError) as e:
        _fail(e)
    if "rank" in summary:  # a non-zero torchrun rank: rank 0 reports
        return
    typer.echo(json.dumps({k: summary[k] for k in ("model", "steps", "data", "cache")}))
    typer.echo(f"trained denoiser: {summary['final']}")


@app.command()
def recipes() -> None:
    """List the shipped recipes and the options every recipe can set."""
    from diffkit import config as cfglib
    from diffkit.align.objective import LinearDPOConfig
    from diffkit.align.pipeline import AlignRecipe

    for name in cfglib.list_recipes("align"):
        typer.echo(f"recipe: {name}  ({cfglib.recipe_path('align', name)})")
    from diffkit.train import TrainConfig

    for prefix, cls in (("", AlignRecipe), ("dpo.", LinearDPOConfig), ("train.", TrainConfig)):
        for name, doc in cfglib.field_docs(cls).items():
            typer.echo(f"  {prefix}{name}: {doc}")


@app.command()
def zoo(
    member: str = typer.Option("digits-unet-eps", help="digits-unet-eps or digits-sd3-flow."),
    recipe: Path = typer.Option(
        None, help="Shipped recipe name (digits_unet or digits_sd3) or a YAML path."
    ),
    out: Path = typer.Option(Path("out/align-zoo"), help="Output folder (checkpoints, metrics)."),
    pairs: int = typer.Option(4000, help="Projection-reward preference pairs to draw."),
    seed: int = typer.Option(0, help="Seed of the pairs, the reward patterns and the samples."),
    set_: list[str] = typer.Option(None, "--set", help="Override a recipe key. Repeatable."),
) -> None:
    """Align a digits zoo model on the toy projection reward; print reward before/after."""
    import json

    import torch

    from diffkit.align.toy import align_zoo_member

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if member not in ("digits-unet-eps", "digits-sd3-flow"):
        raise ValueError(f"member={member!r}; use digits-unet-eps or digits-sd3-flow")
    cfg = load_recipe(recipe, set_)
    summary, _, _ = align_zoo_member(
        member, cfg.dpo, cfg.train, out, n_pairs=pairs, seed=seed, progress=True
    )
    shown = {k: v for k, v in summary.items() if not k.startswith("samples")}
    typer.echo(json.dumps(shown, indent=2, default=float))
