"""Reference strategies through diffkit.train.fit: EMA timing, fp32, resume, LoRA (spec f.7, f.8)."""

from __future__ import annotations

import pytest
import torch
from _align_tiny import PairData, make_pairs, tiny_sd3, tiny_unet

from diffkit.align import EMAReference, LinearDPO, LinearDPOConfig, LoRAReference
from diffkit.core.schedules import DDPM, FlowMatching
from diffkit.train import NonFiniteError, TrainConfig, fit


def _run(model, cfg, tmp, steps=3, accum=1, **kw):
    obj = LinearDPO(cfg, model, schedule=DDPM())
    res = fit(
        obj,
        model,
        PairData(make_pairs("unet", 8)),
        TrainConfig(steps=steps, batch_size=4, grad_accum=accum, lr=1e-3, log_every=1, **kw),
        tmp,
    )
    return obj, res


def test_ema_formula_fp32_and_decay_one_is_frozen():
    model = tiny_unet()
    ref = EMAReference(model, decay=0.9)
    assert all(p.dtype == torch.float32 for p in ref.module.parameters())
    before = {n: p.detach().clone() for n, p in ref.module.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ref.update(model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(
            dict(ref.module.named_parameters())[n], 0.9 * before[n] + 0.1 * p.detach()
        )
    frozen = EMAReference(model, decay=1.0)
    snap = {n: p.clone() for n, p in frozen.module.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    frozen.update(model)
    assert all(torch.equal(snap[n], p) for n, p in frozen.module.named_parameters())


def test_ema_updates_once_per_optimizer_step_under_accumulation(tmp_path):
    model = tiny_unet()
    obj, _ = _run(
        model, LinearDPOConfig(reference="ema", ema_decay=0.9), tmp_path, steps=3, accum=2
    )
    assert obj.reference.ema.num_updates == 3


def test_every_trainable_parameter_changes_frozen_ones_do_not(tmp_path):
    model = tiny_unet()
    model.time_embedding.requires_grad_(False)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    init = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    _run(model, LinearDPOConfig(reference="ema", ema_decay=0.9), tmp_path, steps=2)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n
        else:
            assert not torch.equal(p, init[n]), f"{n} did not change"


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    cfg = LinearDPOConfig(loss="linear", beta=50.0, reference="ema", ema_decay=0.9)
    full = tiny_unet()
    obj_full, _ = _run(full, cfg, tmp_path / "full", steps=4)
    part = tiny_unet()
    _run(part, cfg, tmp_path / "part", steps=2)
    resumed = tiny_unet()  # fresh process: same pretrained start, state restored from checkpoint
    obj_res, res = _run(resumed, cfg, tmp_path / "part", steps=4)
    assert res.step == 4
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    for a, b in zip(obj_full.reference.module.parameters(), obj_res.reference.module.parameters()):
        assert torch.equal(a, b)
    assert obj_res.reference.ema.num_updates == 4


def test_nan_loss_steps_are_skipped_then_abort(tmp_path):
    model = tiny_unet()
    pairs = make_pairs("unet", 8)
    pairs["x_w"][:] = float("nan")
    obj = LinearDPO(LinearDPOConfig(reference="ema"), model, schedule=DDPM())
    with pytest.raises(NonFiniteError, match="consecutive"):
        fit(
            obj,
            model,
            PairData(pairs),
            TrainConfig(steps=5, batch_size=4, max_consecutive_nonfinite=3),
            tmp_path,
        )
    assert obj.reference.ema.num_updates == 0


@pytest.mark.parametrize("kind", ["lora_base", "lora_ema"])
def test_lora_reference_has_no_second_model(kind, tmp_path):
    from peft import LoraConfig

    model = tiny_sd3()
    model.requires_grad_(False)
    model.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    base = {n: p.clone() for n, p in model.named_parameters() if "lora_" not in n}
    obj = LinearDPO(
        LinearDPOConfig(reference=kind, ema_decay=0.5), model, schedule=FlowMatching(shift=3.0)
    )
    assert isinstance(obj.reference, LoRAReference) and not hasattr(obj.reference, "module")
    fit(
        obj,
        model,
        PairData(make_pairs("sd3", 8)),
        TrainConfig(steps=3, batch_size=4, lr=1e-2, log_every=1),
        tmp_path,
    )
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    lora = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert lora and all(p.abs().sum() > 0 for p in lora.values())  # B starts at 0 and moved
    if kind == "lora_ema":
        assert obj.reference.num_updates == 3
        n0 = next(iter(lora))
        assert not torch.equal(obj.reference.shadow[n0], lora[n0].detach())
    # the reference forward leaves the policy's adapters as they were
    with obj.reference.model(model):
        pass
    assert all(torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)


def test_lora_reference_needs_adapters():
    with pytest.raises(ValueError, match="no LoRA parameters"):
        LinearDPO(LinearDPOConfig(reference="lora_base"), tiny_unet(), schedule=DDPM())
