"""``diffkit sparsify``: install RoPeSLR on a diffusers Wan transformer and align / fine-tune /
profile it from a YAML recipe.

    diffkit sparsify --model moving-digits-wan --recipe align --out out/rs
    diffkit sparsify --model path/to/transformer --recipe ... --set ropeslr.density=0.05
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from diffkit.attention.recipe import Recipe

log = logging.getLogger(__name__)

#: diffusers classes ``--model <folder>`` may hold (same forward inputs as Wan2.1's transformer).
CLI_CLASSES = ("WanTransformer3DModel", "SkyReelsV2Transformer3DModel")

app = typer.Typer(
    help="RoPeSLR sparse + low-rank attention for video DiTs (Wan2.1): align, fine-tune, profile.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _load_model(spec: str):
    from diffkit import models

    if spec in models.list_models():
        if spec != "moving-digits-wan":
            raise ValueError(
                f"zoo model {spec!r} is not a plain Wan transformer; use moving-digits-wan"
            )
        return models.load(spec)
    path = Path(spec)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"--model {spec!r}: no zoo member of that name and no {cfg_file}")
    cls = json.loads(cfg_file.read_text()).get("_class_name")
    if cls not in CLI_CLASSES:
        raise ValueError(
            f"diffkit sparsify trains {cls}? not supported; supported: {', '.join(CLI_CLASSES)} "
            "(WanVACETransformer3DModel and HunyuanVideoTransformer3DModel work through the "
            "Python API apply_ropeslr_)"
        )
    import diffusers

    return getattr(diffusers, cls).from_pretrained(str(path))


def _dataset(recipe: Recipe, model, seed: int):
    import torch

    from diffkit.data import MovingDigitsConfig, make_moving_digits

    if recipe.data == "moving-digits":
        if model.config.in_channels != 1:
            raise ValueError(
                f"data='moving-digits' needs a 1-channel model, this one has "
                f"in_channels={model.config.in_channels}; use data='noise'"
            )
        f, h, w = recipe.latent_shape
        return make_moving_digits(
            recipe.videos, MovingDigitsConfig(num_frames=f, size=h, max_digits=1), seed=seed
        )

    class Noise:
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(seed)
            c = model.config.in_channels
            self.x = torch.randn(
                recipe.videos, *recipe.latent_shape[:1], c, *recipe.latent_shape[1:], generator=g
            )
            self.txt = torch.randn(
                recipe.videos, recipe.text_tokens, model.config.text_dim, generator=g
            )

        def __len__(self) -> int:
            return len(self.x)

        def get_batch(self, idx):
            return {"x": self.x[idx], "txt": self.txt[idx]}

    return Noise()


def _make_inputs(recipe: Recipe):
    from diffkit.core.schedules import FlowMatching
    from diffkit.models import moving_digits_wan as mdw

    schedule = FlowMatching(shift=recipe.shift)

    def fn(model, batch, ctx):
        x0 = mdw.to_model(batch["x"])
        noise = ctx.randn(*x0.shape[1:])
        t = schedule.shift_sigma(ctx.rand(salt=1).flatten())
        if "txt" in batch:
            txt = batch["txt"]
        else:
            txt = mdw.condition(batch["y"][:, 0], model.config.text_dim)
        kwargs = {
            "hidden_states": schedule.add_noise(x0, noise, t),
            "timestep": schedule.model_t(t),
            "encoder_hidden_states": txt,
        }
        return kwargs, x0, noise, t

    return fn


def run(model_spec: str, recipe: Recipe, out: Path, progress: bool = False) -> dict:
    """Run a recipe; returns the summary written to ``out/summary.json``."""
    import torch

    from diffkit.attention.persist import save_ropeslr
    from diffkit.attention.processors import apply_ropeslr_, remove_ropeslr_
    from diffkit.attention.training import (
        AlignmentObjective,
        DensityAnneal,
        FinetuneObjective,
        freeze_backbone_,
    )
    from diffkit.core.io import atomic_write_json
    from diffkit.train import fit

    model = _load_model(model_spec)
    replaced = apply_ropeslr_(model, recipe.ropeslr)
    data = _dataset(recipe, model, recipe.train.seed)
    make_inputs = _make_inputs(recipe)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"stage": recipe.stage, "model": model_spec}
    if recipe.stage == "profile":
        summary.update(profile_model(model, data, make_inputs))
    else:
        if recipe.stage == "align":
            summary["trainable_params"] = freeze_backbone_(model)
            obj = AlignmentObjective(make_inputs)
        else:
            anneal = None
            if recipe.anneal_steps:
                anneal = DensityAnneal(
                    start=recipe.anneal_start, end=recipe.ropeslr.density, steps=recipe.anneal_steps
                )
            obj = FinetuneObjective(make_inputs, recipe.target, recipe.aux_weight, anneal)
        res = fit(obj, model, data, recipe.train, out / "run", progress=progress)
        summary["final_metrics"] = res.metrics
        save_ropeslr(model, out)  # ropeslr.json + ropeslr.safetensors (load_ropeslr_ reads them)
        if recipe.stage == "finetune":
            remove_ropeslr_(model, replaced)
            model.save_pretrained(out / "transformer")
        summary.update(profile_model(model, data, make_inputs) if recipe.stage == "align" else {})
    atomic_write_json(out / "summary.json", summary)
    del torch
    return summary


def profile_model(model, data, make_inputs, batch: int = 2, reps: int = 3) -> dict:
    """Per-layer relative error, dense vs RoPeSLR forward time, attention share, Amdahl bound."""
    import statistics
    import time

    import torch

    from diffkit.attention.processors import ropeslr_state
    from diffkit.attention.profiler import amdahl, counted_flops
    from diffkit.core.objective import StepContext

    st = ropeslr_state(model)
    n = min(batch, len(data))
    b = data.get_batch(torch.arange(n))
    ctx = StepContext(step=0, generator=torch.Generator(), sample_seeds=torch.arange(n))
    kwargs, *_ = make_inputs(model, b, ctx)
    model.eval()
    with torch.no_grad():
        st.mode, st.losses = "align", []
        model(**kwargs, return_dict=False)
        errs = [float(x) for x in st.losses]
        times = {}
        for mode in ("dense", "sparse"):
            st.mode = mode
            model(**kwargs, return_dict=False)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                model(**kwargs, return_dict=False)
                ts.append(time.perf_counter() - t0)
            times[mode] = statistics.median(ts)
        # FLOPs of the rest of the model: a dense-mode forward, whose CPU SDPA FlopCounterMode
        # does not see (nor does it run under compiled flex, which it cannot trace).
        st.mode = "dense"
        other = counted_flops(lambda: model(**kwargs, return_dict=False))
        st.mode, st.losses = "sparse", []
    grid = st.grid
    L = grid[0] * grid[1] * grid[2]
    cfg = model.config
    heads, d = cfg.num_attention_heads, cfg.attention_head_dim
    attn = 4.0 * L * L * d * heads * cfg.num_layers * n
    share = attn / (attn + max(other, 0.0))
    speed = times["dense"] / times["sparse"]
    return {
        "layer_rel_mse": errs,
        "forward_seconds_dense": times["dense"],
        "forward_seconds_ropeslr": times["sparse"],
        "end_to_end_speedup": speed,
        "self_attention_flop_share": share,
        "amdahl_bound_at_10x_attention": amdahl(share, 10.0),
        "tokens": L,
    }


@app.callback(invoke_without_command=True)
def sparsify(
    model: str = typer.Option(..., help="Zoo name (moving-digits-wan) or a diffusers Wan folder."),
    recipe: Path = typer.Option(
        ..., help="Shipped recipe name (align, finetune, profile) or a YAML path."
    ),
    out: Path = typer.Option(Path("out/sparsify"), help="Output folder."),
    set_: list[str] = typer.Option(None, "--set", help="Override a recipe key: a.b=value."),
) -> None:
    """Install RoPeSLR on a Wan transformer, then align / fine-tune / profile it per the recipe."""
    import torch

    from diffkit import config as cfglib
    from diffkit.attention.recipe import Recipe

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    data = cfglib.apply_overrides(cfglib.read_recipe("attention", recipe), list(set_ or []))
    rec = cfglib.from_dict(Recipe, data)
    summary = run(model, rec, out, progress=True)
    for k, v in summary.items():
        if not isinstance(v, dict):
            typer.echo(f"{k}: {v}")
    typer.echo(f"written: {out.resolve()}")


def __getattr__(name: str) -> Any:
    if name == "Recipe":  # moved to diffkit.attention.recipe (it imports torch through train)
        from diffkit.attention.recipe import Recipe

        return Recipe
    raise AttributeError(f"module 'diffkit.attention.cli' has no attribute {name!r}")
