"""``diffkit quantize``: quantize a zoo model from a YAML recipe; ``diffkit quantize eval DIR``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Q-ARVD post-training quantization of autoregressive video diffusion models "
    "(`diffkit quantize --model zoo:moving-digits-causal --config qarvd-w4a8 "
    "--out DIR`, then `diffkit quantize eval DIR`).",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _load_fp(source: str):
    from diffkit import models

    if not source.startswith("zoo:"):
        raise ValueError(
            f"--model {source!r}: the CLI quantizes zoo models (zoo:moving-digits-causal); use the "
            "Python API (docs/quantize.md) for diffusers SkyReelsV2Transformer3DModel folders"
        )
    name = source[4:]
    if models.entry(name).module != "diffkit.models.causal_wan":
        raise ValueError(
            f"zoo model {name!r} is not an autoregressive video model; use moving-digits-causal"
        )
    return models.load(name)


@app.callback()
def run(
    ctx: typer.Context,
    model: str = typer.Option(
        "zoo:moving-digits-causal", help="zoo:NAME of the model to quantize."
    ),
    config: Path = typer.Option(
        None, help="Shipped recipe name (qarvd-w4a8, rtn-w8a8) or a YAML path."
    ),
    out: Path = typer.Option(None, help="Output folder for the quantized model."),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a recipe key, e.g. quantize.iters=100."
    ),
) -> None:
    """Prepare -> calibrate (tagged rollouts) -> convert, then save packed weights to OUT."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None or out is None:
        raise typer.BadParameter(
            "--config and --out are required (or use `diffkit quantize eval DIR`)"
        )
    import dataclasses

    import torch

    from diffkit.config import apply_overrides, read_recipe
    from diffkit.quantize import (
        config_from_dict,
        format_summary,
        quantize_,
        save_quantized,
        summary,
    )
    from diffkit.quantize.targets import calibrate_causal

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    recipe = apply_overrides(read_recipe("quantize", config), set_ or [])
    cfg = config_from_dict(recipe.get("quantize", {}))
    cal = {"rollouts": 4, "seed": 0, **recipe.get("calibration", {})}
    fp = _load_fp(model)
    quantize_(fp, dataclasses.replace(cfg, step="prepare"))
    typer.echo(f"calibrating with {cal['rollouts']} tagged rollouts ...", err=True)
    calibrate_causal(fp, n=int(cal["rollouts"]), seed=int(cal["seed"]))
    typer.echo(f"converting ({type(cfg).__name__}, W{cfg.w_bits}A{cfg.a_bits}) ...", err=True)
    quantize_(fp, dataclasses.replace(cfg, step="convert"), progress=True)
    report = save_quantized(fp, out, source=model)
    typer.echo(format_summary(summary(fp)))
    typer.echo(
        f"saved {out}: quantized layers {report['quantized_bytes']} B vs fp32 {report['fp32_bytes']} B "
        f"({report['ratio']:.3f}x), backend {fp.quantize_info['backend']}"
    )


@app.command("eval")
def eval_(
    directory: Path = typer.Argument(..., help="Folder written by `diffkit quantize`."),
    n: int = typer.Option(8, help="Videos to compare against the FP rollout (identical noise)."),
    seed: int = typer.Option(100, help="Seed of the evaluation noise and labels."),
    backend: str = typer.Option("auto", help="auto | onednn | cuda | simulate."),
) -> None:
    """Per-chunk error vs the FP rollout, bytes at rest, and rollout speed."""
    import torch

    from diffkit import models
    from diffkit.quantize import load_quantized
    from diffkit.quantize.targets import evaluate_causal

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    meta_path = directory / "quant.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"no quant.json in {directory}; create it with `diffkit quantize`")
    source = json.loads(meta_path.read_text()).get("source", "")
    fp = _load_fp(source)
    q = load_quantized(_load_fp(source), directory, backend=backend)
    res = evaluate_causal(fp, q, n=n, seed=seed, classifier=models.load("digit-classifier"))
    typer.echo(
        f"model {source}, {q.quantize_info.get('config_type')}, backend {q.quantize_info['backend']}"
    )
    typer.echo("chunk  latent-MSE    PSNR(dB)")
    for k, (m, p) in enumerate(zip(res["chunk_mse"], res["chunk_psnr"])):
        typer.echo(f"{k:>5}  {m:10.3e}  {p:8.2f}")
    b = res["bytes"]
    typer.echo(
        f"video MSE {res['video_mse']:.3e}; Frechet (FP-ref) {res['frechet_fp_ref']:.3f}; "
        f"digit agreement with FP {res['agree_with_fp']:.3f}"
    )
    typer.echo(
        f"bytes: {b['quantized_bytes']} quantized vs {b['fp32_bytes']} fp32 ({b['ratio']:.3f}x)"
    )
    typer.echo(
        "rollout seconds (1 video, median of 3): "
        + ", ".join(f"{k} {v:.3f}" for k, v in res["rollout_seconds"].items())
    )
