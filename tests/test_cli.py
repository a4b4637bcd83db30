"""The CLI as a user meets it: help, errors with exit code 2, zoo commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffkit.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffkit", *args], capture_output=True, text=True)


_HELP_PROBE = """
import sys
from diffkit.cli import main
try:
    main({args!r})
except SystemExit as e:
    code = e.code
heavy = [m for m in ("torch", "diffusers", "transformers", "ray", "pyarrow") if m in sys.modules]
print("EXIT", code, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["tour", "--help"],
        ["zoo", "--help"],
        ["env", "-h"],
        *([name, "--help"] for name in ("curate", "align", "distill", "sparsify", "quantize")),
    ],
)
def test_help_imports_no_torch(args):
    """`diffkit --help` answers without importing torch (that import alone takes seconds)."""
    code = _HELP_PROBE.format(args=args)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip().splitlines()[-1] == "EXIT 0 HEAVY -", r.stdout[-2000:]
    if args == ["--help"]:
        for name in ("tour", "zoo", "env", "curate", "align", "distill", "sparsify", "quantize"):
            assert f" {name} " in r.stdout, name


def test_help_lists_subcommands_through_the_entry_point():
    r = run("--help")
    assert r.returncode == 0
    assert "tour" in r.stdout and "zoo" in r.stdout and "sparsify" in r.stdout


@pytest.mark.parametrize(
    "args,needle",
    [
        (["tour", "--bogus"], "No such option"),
        (["zoo", "train"], "Missing argument"),
        (["zoo", "train", "nope"], "unknown zoo model"),
    ],
)
def test_bad_arguments_one_line_exit_2(args, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_zoo_verify_and_list(capsys):
    with pytest.raises(SystemExit) as e:
        main(["zoo", "verify"])
    assert e.value.code == 0
    assert "ok   digit-classifier" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["zoo", "list"])
    assert e.value.code == 0


def test_every_subcommand_has_help():
    """Every command and sub-command answers --help (in-process: one import of each sub-app), and
    the summary the top-level help shows is the sub-app's own first help line."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from diffkit.cli import SUBCOMMANDS, _register_subcommands, app

    _register_subcommands()  # every sub-app, for real
    root = get_command(app)
    runner = CliRunner()
    assert set(SUBCOMMANDS) == {"curate", "align", "distill", "sparsify", "quantize"}
    seen = 0
    for name, cmd in root.commands.items():
        r = runner.invoke(app, [name, "--help"])
        assert r.exit_code == 0, (name, r.output)
        seen += 1
        for sub in getattr(cmd, "commands", {}):
            r = runner.invoke(app, [name, sub, "--help"])
            assert r.exit_code == 0, (name, sub, r.output)
            assert "Usage" in r.output
            seen += 1
        if name in SUBCOMMANDS:
            first = (cmd.help or "").strip().splitlines()[0]
            assert first.startswith(SUBCOMMANDS[name][1]), (name, first)
    assert seen > 20


def test_env_names_the_machine(capsys):
    with pytest.raises(SystemExit) as e:
        main(["env", "--json"])
    assert e.value.code == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["cpu_kind"] in {"AVX-512+AMX", "AVX-512", "AVX2"} or info["cpu_kind"]
    assert info["torch"].startswith("2.") and info["diffusers"]
    assert info["fast_dtype_cpu"] in {"bfloat16", "float32"}
