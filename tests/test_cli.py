"""The CLI as a user meets it: help, errors with exit code 2, zoo commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from diffkit.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffkit", *args], capture_output=True, text=True)


def test_help_lists_subcommands_and_is_fast_to_import():
    r = run("--help")
    assert r.returncode == 0
    assert "tour" in r.stdout and "zoo" in r.stdout
    code = "import sys; import diffkit.cli; print('diffusers' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


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
    from diffkit.cli import SUBCOMMANDS, _register_subcommands, app

    _register_subcommands()
    import typer

    names = {g.name for g in app.registered_groups} | {
        c.name or c.callback.__name__ for c in app.registered_commands
    }
    for name in names:
        r = run(name, "--help")
        assert r.returncode == 0, (name, r.stderr)
    assert set(SUBCOMMANDS) >= {"curate", "align", "distill", "sparsify", "quantize"}
    assert typer  # imported for the registry types
