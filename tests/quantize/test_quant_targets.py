"""Calibration drivers, rollout comparison and the CLI on the shipped zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _quant_tiny import TINY, tiny_model  # noqa: E402

from diffkit import models
from diffkit.models import causal_wan as cw
from diffkit.quantize.targets import calibration_set, compare_rollouts, generate

REPO = Path(__file__).resolve().parents[2]


def test_generate_in_batches_with_prefix_equals_one_batch():
    m = tiny_model()
    labels, noise = calibration_set(3, 0, TINY)
    full = generate(m, labels, noise, batch=3)
    split = generate(m, labels, noise, batch=2, start_chunk=1, prefix=full)
    torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)


def test_compare_rollouts_zero_error_against_itself():
    m = tiny_model()
    labels, noise = calibration_set(2, 0, TINY)
    lat = generate(m, labels, noise)
    out = compare_rollouts(lat, lat, labels, TINY)
    assert out["video_mse"] == 0.0 and len(out["chunk_mse"]) == 2
    noisy = compare_rollouts(lat, lat + 0.1 * torch.randn_like(lat), labels, TINY)
    assert noisy["video_mse"] > 0 and noisy["chunk_psnr"][0] < 200


def _zoo_ready() -> bool:
    return models.verify("moving-digits-causal")[0] and models.verify("digit-classifier")[0]


@pytest.mark.skipif(not _zoo_ready(), reason="zoo weights missing")
def test_cli_quantize_then_eval(tmp_path):
    from typer.testing import CliRunner

    from diffkit.quantize.cli import app

    out = tmp_path / "q"
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["--model", "zoo:moving-digits-causal", "--config",
         "qarvd-w4a8", "--out", str(out),
         "--set", "quantize.iters=3", "--set", "calibration.rollouts=1"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "quant.json").read_text())
    assert meta["source"] == "zoo:moving-digits-causal" and meta["bytes"]["ratio"] < 0.2
    res = runner.invoke(app, ["eval", str(out), "--n", "2"])
    assert res.exit_code == 0, res.output
    assert "latent-MSE" in res.output and "rollout seconds" in res.output


def test_cli_rejects_non_zoo_model(tmp_path):
    from typer.testing import CliRunner

    from diffkit.quantize.cli import app

    res = CliRunner().invoke(
        app,
        ["--model", "some/folder", "--config", "rtn-w8a8",
         "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert res.exit_code != 0
    assert "zoo:moving-digits-causal" in str(res.exception)


def test_zoo_model_loads_and_rolls_out():
    if not _zoo_ready():
        pytest.skip("zoo weights missing")
    m = models.load("moving-digits-causal")
    labels, noise = calibration_set(1, 0, m.config)
    assert generate(m, labels, noise).shape == (1, 12, 16, 8, 8)
    assert isinstance(m, cw.CausalWan)
