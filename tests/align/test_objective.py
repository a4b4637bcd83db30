"""LinearDPO on tiny diffusers UNet2DConditionModel / SD3Transformer2DModel (spec section f)."""

from __future__ import annotations

import math

import pytest
import torch
from _align_tiny import make_pairs, tiny_sd3, tiny_unet
from torch import nn

from diffkit.align import LinearDPO, LinearDPOConfig, model_kind, paired_errors
from diffkit.core.schedules import DDPM, FlowMatching


def schedule_for(kind):
    return DDPM() if kind == "unet" else FlowMatching(shift=3.0)


def test_supported_classes_and_error_lists_them():
    assert model_kind(tiny_unet()) == "UNet2DConditionModel"
    assert model_kind(tiny_sd3()) == "SD3Transformer2DModel"
    with pytest.raises(ValueError, match="Linear.*not supported.*UNet2DConditionModel.*SD3"):
        LinearDPO(LinearDPOConfig(), nn.Linear(2, 2), schedule=DDPM())


@pytest.mark.parametrize(
    "bad",
    [
        dict(beta=0.0),
        dict(beta=-5.0),
        dict(eta=0.5),
        dict(eta=-1e-3),
        dict(ema_decay=0.0),
        dict(ema_decay=1.5),
        dict(reference="nope"),
        dict(loss="kto"),
    ],
)
def test_config_validation_names_the_field(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):
        LinearDPOConfig(**bad)


def test_policy_equals_reference_at_start(model_and_pairs):
    kind, model, pairs = model_and_pairs
    g = torch.Generator().manual_seed(0)
    obj = LinearDPO(
        LinearDPOConfig(loss="sigmoid", beta=5000.0, reference="frozen"),
        model,
        schedule=schedule_for(kind),
    )
    out = obj(model, pairs, generator=g)
    assert out.metrics["margin"].abs().item() < 1e-6
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-3)
    obj = LinearDPO(LinearDPOConfig(loss="linear", beta=500.0), model, schedule=schedule_for(kind))
    out = obj(model, pairs, generator=torch.Generator().manual_seed(0))
    assert out.metrics["weight"].item() == pytest.approx(0.5, abs=1e-3)


def test_pairs_share_t_and_noise(model_and_pairs):
    kind, model, pairs = model_and_pairs
    same = dict(pairs, x_l=pairs["x_w"].clone())
    obj = LinearDPO(LinearDPOConfig(reference="frozen"), model, schedule=schedule_for(kind))
    out = obj(model, same, generator=torch.Generator().manual_seed(0))
    assert out.metrics["mse_w"].item() == pytest.approx(out.metrics["mse_l"].item(), rel=1e-6)


def test_identical_winner_loser_zero_gradient(model_and_pairs):
    kind, model, pairs = model_and_pairs
    same = dict(pairs, x_l=pairs["x_w"].clone())

    def grad_l1(batch, loss):
        model.zero_grad()
        obj = LinearDPO(
            LinearDPOConfig(loss=loss, reference="frozen"), model, schedule=schedule_for(kind)
        )
        obj(model, batch, generator=torch.Generator().manual_seed(1)).loss.backward()
        return sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None).item()

    for loss in ("linear", "sigmoid"):
        # zero up to float round-off of the batched 2B forward
        assert grad_l1(same, loss) < 1e-4 * grad_l1(pairs, loss)


def test_linear_gradient_equals_weighted_mse_gradient(model_and_pairs):
    """Autograd through the real model equals the closed form w * grad(Delta_theta) / B."""
    kind, model, pairs = model_and_pairs
    sched = schedule_for(kind)
    obj = LinearDPO(
        LinearDPOConfig(loss="linear", beta=50.0, eta=0.1, reference="frozen"),
        model,
        schedule=sched,
    )
    # perturb the policy so that m != 0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    out = obj(model, pairs, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(pairs["x_w"].shape, generator=g)
    u = torch.rand(len(noise), generator=g)
    from diffkit.align import t_from_uniform

    t = t_from_uniform(sched, u, torch.randn(len(noise), generator=g))
    ew, el = paired_errors(model, sched, pairs["x_w"], pairs["x_l"], pairs["cond"], noise, t)
    with torch.no_grad():
        rw, rl = paired_errors(
            obj.reference.module, sched, pairs["x_w"], pairs["x_l"], pairs["cond"], noise, t
        )
    w = (0.5 + 0.2 * 50.0 * ((ew - el) - (rw - rl))).clamp(0.1, 0.9).detach()
    ref_grads = torch.autograd.grad(
        (w * (ew - el)).mean(), list(model.parameters()), allow_unused=True
    )
    for a, b in zip(grads, ref_grads):
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in obj.reference.module.parameters())


def test_flow_eps_identity():
    """eps - eps_hat = (1 - sigma)(v - v_hat) for a flow model (why flow_eps weighting exists)."""
    s = FlowMatching(shift=3.0)
    g = torch.Generator().manual_seed(0)
    x0, eps, v_hat = (torch.randn(4, 3, generator=g) for _ in range(3))
    sig = s.shift_sigma(torch.rand(4, generator=g))
    xt = s.add_noise(x0, eps, sig)
    v = s.target(x0, eps, sig)
    _, eps_hat = s.to_x0_eps(xt, v_hat, sig)
    torch.testing.assert_close(eps - eps_hat, (1 - sig)[:, None] * (v - v_hat))
    # DDPM noising matches a.1
    d = DDPM()
    t = torch.tensor([0, 500, 999])
    ac = d.alphas_cumprod[t].float()[:, None]
    x0 = torch.randn(3, 2)
    e = torch.randn(3, 2)
    torch.testing.assert_close(d.add_noise(x0, e, t), ac.sqrt() * x0 + (1 - ac).sqrt() * e)


def test_mismatched_shapes_error():
    model = tiny_unet()
    pairs = make_pairs("unet")
    obj = LinearDPO(LinearDPOConfig(), model, schedule=DDPM())
    with pytest.raises(ValueError, match="shapes differ"):
        obj(model, dict(pairs, x_l=pairs["x_l"][:, :, :4]))
    with pytest.raises(ValueError, match="x_w, x_l, cond"):
        obj(model, {"x": pairs["x_w"]})
    with pytest.raises(ValueError, match="pooled_projections"):
        sd3 = tiny_sd3()
        LinearDPO(LinearDPOConfig(), sd3, schedule=FlowMatching())(sd3, pairs)


def test_sdxl_unet_with_added_time_ids_and_pooled_text():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
    )
    g = torch.Generator().manual_seed(0)
    n = 4
    pairs = {
        "x_w": torch.randn(n, 4, 8, 8, generator=g),
        "x_l": torch.randn(n, 4, 8, 8, generator=g),
        "cond": {
            "encoder_hidden_states": torch.randn(n, 5, 64, generator=g),
            "text_embeds": torch.randn(n, 32, generator=g),
            "time_ids": torch.tensor([[16.0, 16, 0, 0, 16, 16]]).repeat(n, 1),
        },
    }
    obj = LinearDPO(LinearDPOConfig(reference="ema"), unet, schedule=DDPM())
    out = obj(unet, pairs, generator=g)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert unet.add_embedding.linear_1.weight.grad.abs().sum() > 0  # the added embeds are used


def test_batch_pair_weights_reach_the_loss(model_and_pairs):
    """A batch's ``weight`` scales each pair's loss: all-zero weights give a zero loss, and
    doubling every weight doubles it (same t and noise from the same generator)."""
    kind, model, pairs = model_and_pairs
    obj = LinearDPO(
        LinearDPOConfig(loss="sigmoid", beta=500.0, reference="frozen"),
        model,
        schedule=schedule_for(kind),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))

    def loss(weight):
        batch = dict(pairs, weight=weight) if weight is not None else pairs
        return obj(model, batch, generator=torch.Generator().manual_seed(5)).loss

    n = len(pairs["x_w"])
    assert loss(torch.zeros(n)).item() == 0.0
    torch.testing.assert_close(loss(torch.full((n,), 2.0)), 2 * loss(None))


def test_reward_margin_and_cond_dropout(model_and_pairs):
    """reward_margin = -(beta/2) * margin (TRL's rewards/margins); cond_dropout swaps in the
    empty prompt for exactly the pairs whose per-pair uniform (salt 3) falls below the rate."""
    from diffkit.core.objective import StepContext

    kind, model, pairs = model_and_pairs
    g = torch.Generator().manual_seed(11)
    uncond = {k: torch.randn(v.shape, generator=g) for k, v in pairs["cond"].items()}
    ctx = StepContext(
        step=0, generator=torch.Generator(), sample_seeds=torch.arange(len(pairs["x_w"]))
    )
    drop = ctx.rand(1, salt=3)[:, 0] < 0.5
    assert 0 < int(drop.sum()) < len(drop)  # these seeds drop some pairs, not all

    def run(cond_dropout, batch):
        obj = LinearDPO(
            LinearDPOConfig(reference="frozen", beta=500.0, cond_dropout=cond_dropout),
            model,
            schedule=schedule_for(kind),
        )
        return obj(model, batch, ctx)

    out = run(0.5, dict(pairs, uncond=uncond))
    manual = {
        k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), uncond[k], v)
        for k, v in pairs["cond"].items()
    }
    ref = run(0.0, dict(pairs, cond=manual))
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    torch.testing.assert_close(out.metrics["reward_margin"], -250.0 * out.metrics["margin"])
    with pytest.raises(ValueError, match="uncond"):
        run(0.5, pairs)
