"""Calibration drivers, rollout comparison and the CLI on the shipped zoo model."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from _quant_tiny import TINY, tiny_model  # noqa: E402

from diffkit import models
from diffkit.data import MovingDigitsConfig, make_moving_digits
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


def test_compare_rollouts_scores_digits_per_frame():
    clf = models.load("digit-classifier")
    cfg = {**TINY, "digit_size": 16}
    data = make_moving_digits(4, MovingDigitsConfig(num_frames=TINY["num_frames"], max_digits=1), 0)
    lat = cw.encode_video(data.videos, cfg)
    labels = torch.stack([data.labels[:, 0], torch.full((4,), -1)], 1)
    out = compare_rollouts(lat, lat, labels, cfg, clf)
    per = out["digit_acc_per_frame"]
    assert len(per) == TINY["num_frames"] and out["agree_with_fp"] == 1.0
    assert abs(sum(per) / len(per) - out["digit_acc"]) < 1e-6 and out["digit_acc"] > 0.8
    wrong = labels.clone()
    wrong[:, 0] = (wrong[:, 0] + 1) % 10  # every frame mislabelled: accuracy falls everywhere
    assert max(compare_rollouts(lat, lat, wrong, cfg, clf)["digit_acc_per_frame"]) < 0.5


def _require_zoo() -> None:
    """Shipped, hash-checked weights are part of the package: missing ones are a failure."""
    for name in ("moving-digits-causal", "digit-classifier"):
        ok, why = models.verify(name)
        assert ok, f"{name}: {why}"


def test_cli_quantize_then_eval(tmp_path):
    _require_zoo()
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


def test_zoo_model_rolls_out_deterministically_and_label_conditioned():
    _require_zoo()
    m = models.load("moving-digits-causal")
    assert isinstance(m, cw.CausalWan)
    labels, noise = calibration_set(4, 0, m.config)
    lat = generate(m, labels, noise)
    c = m.config
    size = c["latent_size"]
    assert lat.shape == (4, c["num_frames"], c["in_channels"], size, size)
    assert bool(torch.isfinite(lat).all())
    assert torch.equal(generate(m, labels, noise), lat)  # same noise, same video
    # the KV cache is an optimisation: recomputing over all clean frames gives the same video
    torch.testing.assert_close(generate(m, labels, noise, use_cache=False), lat, atol=1e-4, rtol=0)
    # the label reaches the output: another digit with the same noise gives another video (by far
    # more than fp32 round-off, whose relative squared size is ~1e-12; no quality bar, so that a
    # retrained zoo model does not move it)
    other = labels.clone()
    other[:, 0] = (other[:, 0] + 5) % m.config["num_classes"]
    moved = (generate(m, other, noise) - lat).pow(2).mean() / lat.pow(2).mean()
    assert float(moved) > 1e-7, float(moved)
