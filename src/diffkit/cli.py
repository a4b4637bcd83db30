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

# Method subcommands: name -> (module exposing `app: typer.Typer`, one-line summary). Only the
# subcommand a command line names is imported, so `diffkit --help` and `diffkit tour --help` import
# none of them (each method's CLI module imports torch lazily too). The top-level help lists each
# one by its summary; a test checks that the summary is the sub-app's own help's first line.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "curate": (
        "diffkit.curate.cli",
        "MONET-style image-text curation: local by default, Ray at scale.",
    ),
    "align": (
        "diffkit.align.cli",
        "Preference alignment (Linear-DPO, arXiv 2605.21123) of diffusion and flow models.",
    ),
    "distill": (
        "diffkit.distill.cli",
        "FPD: distil a masked-token (MaskGIT-style) generator into a one-step student.",
    ),
    "sparsify": (
        "diffkit.attention.cli",
        "RoPeSLR sparse + low-rank attention for video DiTs (Wan2.1): align, fine-tune, profile.",
    ),
    "quantize": (
        "diffkit.quantize.cli",
        "Q-ARVD post-training quantization of autoregressive video diffusion models",
    ),
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


@app.command()
def env(
    as_json: bool = typer.Option(False, "--json", help="Print the record as JSON."),
) -> None:
    """Print the machine record that every benchmark writes into its results.

    Versions, CPU kind and flags, torch threads, GPU, and the dtype diffkit picks as the fast one.
    """
    import json

    from diffkit.core.machine import machine_info

    info = machine_info()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if isinstance(v, list):
            v = " ".join(map(str, v)) or "-"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items())
        typer.echo(f"{k:<16} {v if v is not None else '-'}")


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


def _first_command(argv: list[str]) -> str | None:
    """The subcommand a command line names (the first word that is not an option)."""
    for a in argv:
        if not a.startswith("-"):
            return a
    return None


def _register_subcommands(argv: list[str] | None = None) -> None:
    """Register the method sub-apps: the one ``argv`` names for real (importing its module), the
    others as lightweight entries that only carry their summary for the top-level help. With
    ``argv=None`` every sub-app is imported and registered for real."""
    import importlib

    wanted = _first_command(argv) if argv is not None else None
    real = {g.name for g in app.registered_groups if g.name not in _STUBS}
    for name, (module, summary) in SUBCOMMANDS.items():
        if name in real:
            continue
        if argv is None or name == wanted:
            if name in _STUBS:  # a summary-only entry from an earlier call: replace it
                app.registered_groups.remove(_STUBS.pop(name))
            app.add_typer(importlib.import_module(module).app, name=name)
        elif name not in _STUBS:
            app.add_typer(typer.Typer(help=summary), name=name, help=summary)
            _STUBS[name] = app.registered_groups[-1]


_STUBS: dict = {}  # name -> the summary-only registration standing in for a sub-app


def _kind(e: BaseException) -> set[str]:
    # Typer may vendor click; match click's exception classes by name, not identity.
    return {c.__name__ for c in type(e).__mro__}


def main(argv: list[str] | None = None) -> None:
    _register_subcommands(sys.argv[1:] if argv is None else argv)
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
