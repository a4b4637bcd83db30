"""The real CLI path on tiny random pipelines of the exact diffusers classes, saved and reloaded."""

from __future__ import annotations

import json

import pytest
import torch
from _align_tiny import png_bytes, save_tiny_sd3, save_tiny_sd15, save_tiny_sdxl

from diffkit.align import LinearDPOConfig
from diffkit.align.objective import predict
from diffkit.align.pipeline import (
    AlignRecipe,
    add_lora_,
    align_model,
    denoiser_of,
    load_pipeline,
    schedule_from_scheduler,
)
from diffkit.core.io import load_tensors
from diffkit.core.schedules import DDPM, FlowMatching
from diffkit.train import TrainConfig, latest_checkpoint

SAVERS = {"sd15": save_tiny_sd15, "sdxl": save_tiny_sdxl, "sd3": save_tiny_sd3}


def _data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    rows = []
    for i in range(5):
        (d / f"w{i}.png").write_bytes(png_bytes(2 * i, 20))
        (d / f"l{i}.png").write_bytes(png_bytes(2 * i + 1, 20))
        rows.append({"prompt": f"digit {i % 2}", "chosen": f"w{i}.png", "rejected": f"l{i}.png"})
    (d / "bad.png").write_bytes(b"\x89PNG broken")
    rows.append({"prompt": "bad", "chosen": "bad.png", "rejected": "l0.png"})
    f = d / "pairs.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


def _run_cli(args):
    from diffkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_cli_trains_a_saved_pipeline(family, tmp_path):
    model_dir = tmp_path / family
    (save_tiny_sd15 if family == "sd15" else save_tiny_sd3)(model_dir)
    data = _data(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "dpo: {loss: linear, beta: 500.0, eta: 0.001, reference: ema, ema_decay: 0.9}\n"
        "train: {steps: 2, batch_size: 2, lr: 1.0e-3, log_every: 1}\n"
        "resolution: 16\ncache_batch_size: 3\n"
    )
    out = tmp_path / "out"
    args = [
        "align",
        "train",
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--recipe",
        str(recipe),
        "--out",
        str(out),
        "--set",
        "train.grad_accum=2",
    ]
    _run_cli(args)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["cache"] == {
        "pairs": 5,
        "skipped_bad_images": 1,
        "prompts": 2,
        "latent_shape": [4, 8, 8],
    }
    from diffusers import SD3Transformer2DModel, UNet2DConditionModel

    cls = UNet2DConditionModel if family == "sd15" else SD3Transformer2DModel
    sub = "unet" if family == "sd15" else "transformer"
    before = cls.from_pretrained(model_dir / sub)
    after = cls.from_pretrained(out / "final")
    diff = [not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters())]
    assert sum(diff) > 0.9 * len(diff)  # (almost) every tensor moved after 2 steps
    # The cache is built once and reused.
    cache = next((out / "cache").glob("*/pairs.safetensors"))
    stamp = cache.stat().st_mtime_ns
    _run_cli(args[:-2] + ["--out", str(out), "--set", "train.steps=3"])
    assert cache.stat().st_mtime_ns == stamp
    assert json.loads((out / "summary.json").read_text())["steps"] == 3  # resumed 2 -> 3


def test_recipe_validation():
    with pytest.raises(ValueError, match="resolution"):
        AlignRecipe(resolution=30)
    from diffkit.align import LinearDPOConfig

    with pytest.raises(ValueError, match="lora_rank"):
        AlignRecipe(dpo=LinearDPOConfig(reference="lora_base"))


def test_schedule_from_scheduler_configs():
    s = schedule_from_scheduler({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
    assert isinstance(s, FlowMatching) and s.shift == 3.0
    s = schedule_from_scheduler(
        {
            "_class_name": "PNDMScheduler",
            "beta_schedule": "scaled_linear",
            "prediction_type": "v_prediction",
        }
    )
    assert isinstance(s, DDPM) and s.prediction_type == "v_prediction"


def _probe(net, family):
    """The denoiser's output on fixed random inputs (conditioning shaped for ``family``)."""
    g = torch.Generator().manual_seed(7)
    width = 64 if family == "sdxl" else 32
    cond = {"encoder_hidden_states": torch.randn(2, 5, width, generator=g)}
    if family == "sdxl":
        cond.update(
            text_embeds=torch.randn(2, 32, generator=g), time_ids=16 * torch.rand(2, 6, generator=g)
        )
    if family == "sd3":
        cond["pooled_projections"] = torch.randn(2, 64, generator=g)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([0.3, 0.8]) if family == "sd3" else torch.tensor([300, 800])
    with torch.no_grad():
        return predict(net, x, t * (1000 if family == "sd3" else 1), cond)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_lora_output_loads_in_diffusers(family, tmp_path):
    """``pipe.load_lora_weights(final)`` on a fresh pipeline reproduces the trained policy.

    alpha (8) != rank (4): a file without the adapter's alpha would load at scale 1, not 2.
    """
    model_dir = SAVERS[family](tmp_path / family)
    recipe = AlignRecipe(
        dpo=LinearDPOConfig(reference="lora_base", beta=500.0),
        train=TrainConfig(steps=3, batch_size=2, lr=3e-2, log_every=1),
        resolution=16,
        lora_rank=4,
        lora_alpha=8.0,
    )
    out = tmp_path / "out"
    align_model(model_dir, _data(tmp_path), recipe, out)
    final = out / "final"
    keys = load_tensors(final / "pytorch_lora_weights.safetensors")
    prefix = "unet." if family != "sd3" else "transformer."
    assert keys and all(k.startswith(prefix) for k in keys)

    # The trained policy, rebuilt independently: base weights + adapters + the last checkpoint.
    net = denoiser_of(load_pipeline(model_dir)).float()
    base = _probe(net, family)
    add_lora_(net, 4, 8.0)
    net.load_state_dict(load_tensors(latest_checkpoint(out / "run") / "model.safetensors"))
    trained = _probe(net, family)

    fresh = load_pipeline(model_dir)
    fresh.load_lora_weights(str(final))
    loaded = _probe(denoiser_of(fresh), family)
    assert (loaded - trained).abs().max() <= 1e-5
    # ... and it is not the base model: 3 steps at this LR move the output well beyond 1e-5.
    assert (loaded - base).abs().max() > 1e-3
