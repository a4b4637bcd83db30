"""The ``diffkit`` command line: a table of subcommands.

Heavy imports happen inside the commands, so ``diffkit --help`` stays fast. Bad arguments or
configuration give a one-line error and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="diffkit",
    help="Curate, align, distill, sparsify and quantize diffusion models. "
    "Start with `diffkit tour` (runs everything on the bundled tiny zoo).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
zoo_app = typer.Typer(
    help="The tiny model zoo shipped with diffkit: list, retrain, verify.", no_args_is_help=True
)
app.add_typer(zoo_app, name="zoo")

# Method subcommands: name -> module exposing `app: typer.Typer`. A subcommand is registered only
# when its module exists (its method is implemented); nothing is a placeholder.
SUBCOMMANDS: dict[str, str] = {
    "curate": "diffkit.curate.cli",
    "align": "diffkit.align.cli",
    "distill": "diffkit.distill.cli",
    "sparsify": "diffkit.attention.cli",
    "quantize": "diffkit.quantize.cli",
}


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug-level logs.")) -> None:
    _setup_logging(verbose)


@app.command()
def tour(
    out: Path = typer.Option(
        Path("out/tour"), help="Folder for report.html, report.md and figures."
    ),
    fast: bool = typer.Option(
        False, help="Smaller sample counts (for smoke tests); figures are noisier."
    ),
    seed: int = typer.Option(0, help="Seed for every random choice in the tour."),
    only: list[str] = typer.Option(
        None, help="Run only these sections (by module name, e.g. data); repeatable."
    ),
) -> None:
    """Run every stage on the bundled tiny zoo and write an HTML report."""
    import torch
    from rich.console import Console

    from diffkit.tour import run_tour

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    console = Console(stderr=True)
    with console.status("tour") as st:
        path, summary = run_tour(
            out, fast=fast, seed=seed, only=only, status=lambda m: st.update(m)
        )
    for row in summary:
        mark = "[green]ok[/]" if row["ok"] else f"[red]FAILED[/] {row['error']}"
        console.print(f"  {row['section']:<12} {row['seconds']:>6.1f} s  {mark}")
    typer.echo(f"report: {path.resolve()}")
    if not all(r["ok"] for r in summary):
        raise typer.Exit(1)


@zoo_app.command("list")
def zoo_list() -> None:
    """List zoo models, whether their weights are present, and their recorded metrics."""
    from rich.console import Console
    from rich.table import Table

    from diffkit import models

    t = Table("name", "weights", "description", "metrics")
    for name in models.list_models():
        ok, msg = models.verify(name)
        m = models.metrics(name)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in m.items() if isinstance(v, float))
        t.add_row(
            name, "[green]ok[/]" if ok else f"[red]{msg}[/]", models.entry(name).description, shown
        )
    Console().print(t)


@zoo_app.command("train")
def zoo_train(
    name: str = typer.Argument(..., help="Zoo model to retrain (see `diffkit zoo list`)."),
    seed: int = typer.Option(0, help="Training seed; the shipped weights use 0."),
) -> None:
    """Retrain one zoo model from scratch and overwrite its shipped weights and hashes."""
    from diffkit import models, zoo

    models.entry(name)
    result = zoo.train(name, seed=seed, progress=True)
    typer.echo(
        f"{name}: " + ", ".join(f"{k}={v}" for k, v in result.items() if not isinstance(v, dict))
    )


@zoo_app.command("verify")
def zoo_verify() -> None:
    """Check every zoo model's files against its recorded SHA-256 hashes (exit 1 on mismatch)."""
    from diffkit import models

    bad = 0
    for name in models.list_models():
        ok, msg = models.verify(name)
        typer.echo(f"{'ok  ' if ok else 'FAIL'} {name}: {msg}")
        bad += not ok
    if bad:
        raise typer.Exit(1)


def _register_subcommands() -> None:
    import importlib.util

    for name, module in SUBCOMMANDS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            app.add_typer(importlib.import_module(module).app, name=name)


def _kind(e: BaseException) -> set[str]:
    # Typer may vendor click; match click's exception classes by name, not identity.
    return {c.__name__ for c in type(e).__mro__}


def main(argv: list[str] | None = None) -> None:
    _register_subcommands()
    try:
        rv = app(args=argv, standalone_mode=False)
    except Exception as e:
        kinds = _kind(e)
        ctx = getattr(e, "ctx", None)
        if "NoArgsIsHelpError" in kinds:
            typer.echo(ctx.get_help() if ctx else str(e))
            sys.exit(0)
        if "UsageError" in kinds:
            where = ctx.command_path if ctx else "diffkit"
            typer.echo(f"error: {e.format_message()} (see `{where} --help`)", err=True)
            sys.exit(2)
        if "Exit" in kinds:
            sys.exit(getattr(e, "exit_code", 0))
        if "Abort" in kinds:
            typer.echo("aborted", err=True)
            sys.exit(130)
        if isinstance(e, (ValueError, FileNotFoundError)):
            typer.echo(f"error: {e}", err=True)
            sys.exit(2)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)
