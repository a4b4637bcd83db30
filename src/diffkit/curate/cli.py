"""``diffkit curate``: run the pipeline, (re)build its report, generate the test corpus."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="MONET-style image-text curation: local by default, Ray at scale.",
    no_args_is_help=True,
)


@app.command()
def run(
    input: str = typer.Option(
        ...,
        "--input",
        "-i",
        help="Folder of images, a folder of Parquet shards or WebDataset tars, or one "
        ".parquet/.jsonl/.csv/.tar file; a local path or an fsspec URL (s3://, gs://, memory://).",
    ),
    metadata: str = typer.Option(
        None,
        "--metadata",
        "-m",
        help="JSONL/CSV/Parquet table listing the rows; its `path` column is relative to --input.",
    ),
    column: list[str] = typer.Option(
        None,
        "--column",
        help="Map a role to your column name: path|caption|url|license|id|source|image=NAME "
        "(repeatable).",
    ),
    out: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Run folder (resumes if it exists); a local path or an fsspec URL, which gets the "
        "outputs after the run (the run itself happens in a local cache folder).",
    ),
    config: Path = typer.Option(
        None, "--config", "-c", help="Shipped recipe name (local, models) or a YAML path."
    ),
    set_: list[str] = typer.Option(
        None, "--set", help="Override a config key: key.sub=value (repeatable)."
    ),
    executor: str = typer.Option("local", help="local | ray"),
    workers: int = typer.Option(1, help="Processes for CPU stages (local executor)."),
    retry_failed: bool = typer.Option(
        False, "--retry-failed", help="Re-run only shards with failed rows."
    ),
    report: bool = typer.Option(True, help="Write <out>/report/report.html at the end."),
    keep_work: bool = typer.Option(
        False, "--keep-work", help="Keep <out>/work (intermediate shards) after a clean run."
    ),
) -> None:
    """Curate INPUT into OUT: kept/ and dropped/ Parquet, WebDataset tars, manifest, report."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from diffkit.curate.executors import LocalExecutor, RayExecutor
    from diffkit.curate.locations import is_remote, local_path, local_run_dir, publish
    from diffkit.curate.pipeline import Pipeline, load_config

    torch.set_num_threads(1)
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor={executor!r}; options: local, ray")
    sets = list(set_ or [])
    if metadata is not None:
        sets.append(f"input.metadata={metadata}")
    for item in column or []:
        role, sep, name = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--column {item!r} must look like ROLE=NAME, e.g. caption=text")
        sets.append(f"input.columns.{role.strip()}={name.strip()}")
    cfg = load_config(config, sets)
    pipe = Pipeline.from_config(cfg)
    ex = LocalExecutor(workers) if executor == "local" else RayExecutor(num_cpus=max(2, workers))
    run_dir = local_run_dir(out) if is_remote(out) else local_path(out)
    bars: dict = {}
    with Progress(
        TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        transient=False,
    ) as prog:  # fmt: skip

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = prog.add_task(stage, total=max(total, 1))
            prog.update(bars[stage], completed=done if total else 1, total=max(total, 1))

        summary = pipe.run(
            input, run_dir, ex, retry_failed=retry_failed, progress=progress, keep_work=True
        )
    ex.close()
    typer.echo(
        f"{summary['rows_in']} rows in, {summary['kept']} kept, {summary['dropped']} dropped, "
        f"{summary['errors']} errors -> {run_dir / 'manifest.json'}"
    )
    if report:
        from diffkit.curate.report import build_report

        typer.echo(f"report: {build_report(run_dir)}")
    if not keep_work and summary["errors"] == 0:  # kept while the report read its images
        import shutil

        shutil.rmtree(run_dir / "work", ignore_errors=True)
    if is_remote(out):
        typer.echo(f"published {publish(run_dir, out)} files to {out} (run folder {run_dir})")


@app.command("report")
def report_cmd(out: Path = typer.Argument(..., help="Run folder of `diffkit curate run`.")) -> None:
    """(Re)build OUT/report/report.html from a finished run."""
    from diffkit.curate.report import build_report

    typer.echo(f"report: {build_report(out)}")


@app.command("make-corpus")
def make_corpus_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to create (replaced atomically)."),
    n_base: int = typer.Option(400, help="Distinct base images; the corpus has ~4-5x rows."),
    seed: int = typer.Option(0, help="Seed for every random choice."),
) -> None:
    """Generate the seeded test corpus with planted duplicates, corrupt files and ground truth."""
    from diffkit.curate.corpus import CorpusConfig, make_corpus

    info = make_corpus(out, CorpusConfig(n_base=n_base, seed=seed))
    typer.echo(
        f"{info['rows']} rows -> {out} ({', '.join(f'{k}={v}' for k, v in info['roles'].items())})"
    )


@app.command()
def options() -> None:
    """List every config section and option with its help."""
    import dataclasses

    from diffkit.config import field_docs
    from diffkit.curate.pipeline import CurateConfig

    docs = field_docs(CurateConfig)
    for f in dataclasses.fields(CurateConfig):
        typer.echo(f"{f.name}: {docs.get(f.name, '')}")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            sub = field_docs(type(default))
            for g in dataclasses.fields(default):
                typer.echo(
                    f"  {f.name}.{g.name} = {getattr(default, g.name)!r}: {sub.get(g.name, '')}"
                )
