import json

import pytest

from diffkit.attention import read_ropeslr_record
from diffkit.cli import main


def _recipe(tmp_path, stage):
    r = tmp_path / f"{stage}.yaml"
    r.write_text(
        f"stage: {stage}\ndata: noise\nvideos: 4\nlatent_shape: [4, 16, 16]\n"
        "ropeslr:\n  density: 0.25\n  block_size: 16\n  rank: 12\n  backend: reference\n"
        "train:\n  steps: 2\n  batch_size: 2\n  resume: false\n"
    )
    return r


@pytest.mark.parametrize("stage", ["align", "profile"])
def test_sparsify_cli_runs_on_a_diffusers_folder(wan_dir, tmp_path, stage):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(
            [
                "sparsify",
                "--model",
                str(wan_dir),
                "--recipe",
                str(_recipe(tmp_path, stage)),
                "--out",
                str(out),
                "--set",
                "ropeslr.density=0.5",
            ]
        )
    assert e.value.code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stage"] == stage and len(summary["layer_rel_mse"]) == 2
    assert 0 < summary["self_attention_flop_share"] < 1
    if stage == "align":
        assert (out / "ropeslr.safetensors").is_file()
        config, layers = read_ropeslr_record(out)
        assert config.density == 0.5 and config.rank == 12 and layers == [0, 1]


def test_sparsify_cli_bad_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(
            [
                "sparsify",
                "--model",
                str(tmp_path / "nope"),
                "--recipe",
                str(_recipe(tmp_path, "profile")),
            ]
        )
    assert e.value.code == 2
    assert "no zoo member" in capsys.readouterr().err


def test_cli_module_imports_without_torch():
    """`diffkit sparsify --help` stays fast: the sub-app's module imports no torch/diffusers."""
    import subprocess
    import sys

    code = (
        "import sys, diffkit.attention.cli as c; c.app; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
