"""The real CLI path on tiny random pipelines of the exact diffusers classes, saved and reloaded."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _align_tiny import png_bytes, save_tiny_sd3, save_tiny_sd15, save_tiny_sdxl

from diffkit.align import LinearDPOConfig
from diffkit.align.cache import cache_key
from diffkit.align.data import load_pairs
from diffkit.align.objective import predict
from diffkit.align.pipeline import (
    AlignRecipe,
    RecipeError,
    ResumeError,
    _wait_for,
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


def _recipe(steps, **dpo):
    return AlignRecipe(
        dpo=LinearDPOConfig(**{"reference": "ema", "ema_decay": 0.9, **dpo}),
        train=TrainConfig(steps=steps, batch_size=2, lr=1e-3, checkpoint_every=2),
        resolution=16,
    )


def _ckpt_model(out, step):
    return load_tensors(out / "run" / "checkpoints" / f"step_{step:08d}" / "model.safetensors")


def test_resume_is_bit_identical_and_refuses_a_changed_run(tmp_path):
    model_dir = save_tiny_sd15(tmp_path / "sd15")
    data = [_data(tmp_path)]
    align_model(model_dir, data, _recipe(4), tmp_path / "a")  # straight through
    align_model(model_dir, data, _recipe(2), tmp_path / "b")  # stopped at 2 ...
    align_model(model_dir, data, _recipe(4), tmp_path / "b")  # ... resumed from the cache on disk
    a, b = _ckpt_model(tmp_path / "a", 4), _ckpt_model(tmp_path / "b", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ResumeError, match=r"dpo\.beta: 500\.0 -> 100\.0"):
        align_model(model_dir, data, _recipe(6, beta=100.0), tmp_path / "b")
    more = data + [data[0]]  # the same file twice: other data contents
    with pytest.raises(ResumeError, match="data: "):
        align_model(model_dir, more, _recipe(6), tmp_path / "b")
    summary = align_model(model_dir, data, _recipe(6, beta=100.0), tmp_path / "b", force=True)
    assert summary["steps"] == 6


def test_constraints_checked_before_caching(tmp_path):
    model_dir = save_tiny_sd15(tmp_path / "sd15")
    recipe = AlignRecipe(train=TrainConfig(steps=1, batch_size=3, grad_accum=2), resolution=16)
    with pytest.raises(RecipeError, match="batch_size=3"):
        align_model(model_dir, [_data(tmp_path)], recipe, tmp_path / "out")
    assert not (tmp_path / "out" / "cache").exists()


def test_cache_key_follows_data_contents_and_filters(tmp_path):
    f = _data(tmp_path)
    recipe = AlignRecipe(resolution=16)
    pairs, _ = load_pairs(f)
    key = cache_key(tmp_path, pairs, recipe)
    assert cache_key(tmp_path, load_pairs(f)[0], recipe) == key
    assert cache_key(tmp_path, pairs[:-1], recipe) != key  # a filter dropping one pair
    (tmp_path / "data" / "w0.png").write_bytes(png_bytes(99, 20))  # same path, new image
    assert cache_key(tmp_path, load_pairs(f)[0], recipe) != key
    assert cache_key(tmp_path, pairs, AlignRecipe(resolution=24)) != key


def test_ranks_wait_for_the_cache_with_a_timeout(tmp_path):
    with pytest.raises(TimeoutError, match="rank 0"):
        _wait_for(tmp_path / "cache.json", 0.01)


def _cli_error(args, capsys) -> str:
    from diffkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()  # library warnings may come first
    assert err[-1].startswith("error: ") and not any("Traceback" in line for line in err), err
    return err[-1]


def test_cli_one_line_errors(tmp_path, capsys):
    model_dir = save_tiny_sd15(tmp_path / "sd15")
    data = _data(tmp_path)
    base = ["align", "train", "--out", str(tmp_path / "out"), "--set", "resolution=16"]
    msg = _cli_error(base + ["--model", str(tmp_path), "--data", str(data)], capsys)
    assert "no model_index.json" in msg
    (model_dir / "unet" / "config.json").write_text("{broken")
    msg = _cli_error(base + ["--model", str(model_dir), "--data", str(data)], capsys)
    assert "cannot load the diffusers pipeline" in msg
    msg = _cli_error(
        base + ["--model", str(model_dir), "--data", str(data), "--set", "data_format=pickapic"],
        capsys,
    )
    assert "needs parquet" in msg
    msg = _cli_error(
        base + ["--model", str(model_dir), "--data", str(data), "--set", "dpo.betta=1"], capsys
    )
    assert "betta" in msg


def _fit(out, **train):
    from _align_tiny import PairData, make_pairs, tiny_unet

    from diffkit.align import LinearDPO
    from diffkit.train import fit

    net = tiny_unet()
    obj = LinearDPO(LinearDPOConfig(reference="ema", ema_decay=0.9), net, schedule=DDPM())
    cfg = TrainConfig(**{"steps": 2, "batch_size": 4, "lr": 1e-3, "log_every": 1, **train})
    return fit(obj, net, PairData(make_pairs("unet")), cfg, out)


def test_mixed_precision_autocasts_and_keeps_fp32_state(tmp_path):
    """bf16 / fp16 autocast: the forward runs in low precision (the MSEs move by a little, not
    by nothing), while weights, optimizer state and the EMA reference stay fp32."""
    fp32 = _fit(tmp_path / "no", mixed_precision="no").metrics
    bf16 = _fit(tmp_path / "bf16", mixed_precision="bf16").metrics
    assert math.isfinite(bf16["loss"]) and bf16["skipped_nonfinite"] == 0
    rel = abs(bf16["mse_w"] - fp32["mse_w"]) / fp32["mse_w"]
    assert 0 < rel < 0.05  # bf16 keeps 8 mantissa bits: ~0.4% per op, far from 5%
    ckpt = latest_checkpoint(tmp_path / "bf16")
    assert {v.dtype for v in load_tensors(ckpt / "model.safetensors").values()} == {torch.float32}
    trainer = torch.load(ckpt / "trainer.pt", weights_only=False)
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer["optimizer"]["state"].values())
    ema = torch.load(ckpt / "objective.pt", weights_only=False)["reference"]
    assert {v.dtype for k, v in ema.items() if k.startswith("module.")} == {torch.float32}
    # fp16 adds a gradient scaler, saved with the checkpoint for resume.
    fp16 = _fit(tmp_path / "fp16", mixed_precision="fp16").metrics
    assert math.isfinite(fp16["loss"])
    trainer = torch.load(latest_checkpoint(tmp_path / "fp16") / "trainer.pt", weights_only=False)
    assert "scaler" in trainer


def test_gradient_checkpointing_gives_the_same_gradients():
    from _align_tiny import make_pairs, tiny_unet

    from diffkit.align import LinearDPO

    pairs = make_pairs("unet")

    def grads(checkpointing):
        net = tiny_unet()
        if checkpointing:
            net.enable_gradient_checkpointing()
        net.train()
        obj = LinearDPO(LinearDPOConfig(loss="sigmoid", reference="frozen"), net, schedule=DDPM())
        loss = obj(net, pairs, generator=torch.Generator().manual_seed(0)).loss
        return torch.autograd.grad(loss, [p for p in net.parameters()], allow_unused=True)

    for a, b in zip(grads(False), grads(True)):
        assert (a is None) == (b is None)
        if a is not None:  # the same ops recomputed: equal up to fp32 round-off
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_adamw_8bit_without_bitsandbytes_is_a_clear_error(monkeypatch):
    import sys

    from diffkit.train import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'diffkit\[bnb\]'"):
        make_optimizer(TrainConfig(optimizer="adamw_8bit"), [torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp8")


@pytest.mark.gpu
def test_cuda_bf16_with_checkpointing(tmp_path):
    """On a GPU: cache on the device, train in bf16 with gradient checkpointing, fp32 state."""
    model_dir = save_tiny_sd15(tmp_path / "sd15")
    recipe = AlignRecipe(
        dpo=LinearDPOConfig(reference="ema", ema_decay=0.9),
        train=TrainConfig(steps=2, batch_size=2, lr=1e-3, device="cuda", mixed_precision="bf16"),
        resolution=16,
        gradient_checkpointing=True,
    )
    summary = align_model(model_dir, [_data(tmp_path)], recipe, tmp_path / "out")
    assert summary["steps"] == 2 and math.isfinite(summary["metrics"]["loss"])
    ckpt = latest_checkpoint(tmp_path / "out" / "run")
    assert {v.dtype for v in load_tensors(ckpt / "model.safetensors").values()} == {torch.float32}


def test_sdxl_per_image_size_and_crop_conditioning(tmp_path):
    """SDXL time ids are per image (original size, crop top-left, target size), the winner's in
    ``cond`` and the loser's in ``cond_l``; random crops move the crop; flips mirror pairs."""
    import io

    from PIL import Image

    from diffkit.align.cache import build_cache

    pipe = load_pipeline(save_tiny_sdxl(tmp_path / "sdxl"))
    d = tmp_path / "data"
    d.mkdir()
    rows = []
    for i, (w_size, l_size) in enumerate([((32, 20), (20, 40)), ((16, 16), (48, 24))]):
        for name, (w, h) in (("w", w_size), ("l", l_size)):
            img = Image.open(io.BytesIO(png_bytes(10 * i + len(name), 48))).resize((w, h))
            img.save(d / f"{name}{i}.png")
        rows.append({"prompt": f"p{i}", "chosen": f"w{i}.png", "rejected": f"l{i}.png"})
    (d / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pairs, _ = load_pairs(d / "pairs.jsonl")

    cached, _ = build_cache(pipe, pairs, AlignRecipe(resolution=16), tmp_path / "c0")
    batch = cached.get_batch(torch.tensor([0, 1]))
    # (orig h, orig w, crop top, crop left, target h, target w); centre crops of the resized image
    expected_w = [[20, 32, 0, 5, 16, 16], [16, 16, 0, 0, 16, 16]]
    expected_l = [[40, 20, 8, 0, 16, 16], [24, 48, 0, 8, 16, 16]]
    assert batch["cond"]["time_ids"].tolist() == expected_w
    assert batch["cond_l"]["time_ids"].tolist() == expected_l
    assert set(batch["uncond"]) == {"encoder_hidden_states", "text_embeds"}

    recipe = AlignRecipe(resolution=16, random_crop=True, random_flip=True, seed=3)
    moved, _ = build_cache(pipe, pairs, recipe, tmp_path / "c1")
    crops = moved.get_batch(torch.tensor([0, 1]))["cond"]["time_ids"][:, 2:4]
    assert not torch.equal(crops, batch["cond"]["time_ids"][:, 2:4])
    assert not torch.equal(moved.x_w, cached.x_w)


def test_train_help_documents_every_option():
    import typer.main

    from diffkit.align.cli import app

    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help, name
        for param in command.params:
            if param.name != "help":
                assert getattr(param, "help", None), f"{name} --{param.name} has no help"


@pytest.mark.parametrize("family", ["sd15", "sdxl", "sd3"])
def test_heldout_metrics_and_validation_images(family, tmp_path):
    """eval.jsonl holds held-out implicit accuracy and reward margin at every eval step; the
    fixed-seed validation images of the frozen reference repeat exactly, the policy's move."""
    import numpy as np
    from PIL import Image

    model_dir = SAVERS[family](tmp_path / family)
    recipe = AlignRecipe(
        dpo=LinearDPOConfig(reference="frozen", beta=500.0, cond_dropout=0.2),
        train=TrainConfig(steps=3, batch_size=2, lr=3e-2, ema_decay=0.5),
        resolution=16,
        holdout_pairs=2,
        eval_every=2,
        validation_prompts=("a cat", "b"),
        validation_steps=2,
        validation_guidance=2.0,
    )
    run = tmp_path / "out" / "run"
    summary = align_model(model_dir, [_data(tmp_path)], recipe, tmp_path / "out")
    lines = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [2, 3] and summary["heldout"] == lines[-1]
    for x in lines:
        assert 0 <= x["eval/implicit_acc"] <= 1
        assert x["eval/reward_margin"] == pytest.approx(-250.0 * x["eval/margin"], rel=1e-6)

    def png(step, name):
        return np.asarray(Image.open(run / "validation" / f"step_{step:08d}" / f"{name}.png"))

    for name in ("policy_01", "reference_01", "ema_01"):
        assert png(3, name).shape == (16, 16, 3)
    assert np.array_equal(png(2, "reference_00"), png(3, "reference_00"))
    assert not np.array_equal(png(3, "policy_00"), png(3, "reference_00"))
