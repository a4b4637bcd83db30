"""Tour section: Linear-DPO aligns the digits UNet zoo model to a toy projection reward."""

from __future__ import annotations

import tempfile

TITLE = "Align: Linear-DPO with an EMA reference"
ORDER = 30


def build(section, ctx) -> None:
    import torch

    from diffkit.align import LinearDPOConfig
    from diffkit.align.toy import align_zoo_member
    from diffkit.report import make_grid
    from diffkit.train import TrainConfig

    steps = 20 if ctx.fast else 50
    per_class = 5 if ctx.fast else 12
    # beta: calibrated so that beta * std(m) ~ 1.5 at the start (benchmarks/align.py)
    dpo = LinearDPOConfig(loss="linear", beta=160.0, eta=1e-3, reference="ema", ema_decay=0.99)
    train = TrainConfig(
        steps=steps,
        batch_size=8,
        lr=2e-4 if ctx.fast else 1e-4,
        log_every=steps,
        resume=False,
        seed=ctx.seed,
    )
    ctx.status(f"align: {steps} Linear-DPO steps on digits-unet-eps")
    with tempfile.TemporaryDirectory() as tmp:
        s, _, _ = align_zoo_member(
            "digits-unet-eps",
            dpo,
            train,
            tmp,
            n_pairs=2000,
            eval_per_class=per_class,
            sampler_steps=8,
            seed=ctx.seed,
        )
    section.text(
        "Linear-DPO (arXiv 2605.21123) fine-tunes a diffusion model on preference pairs with the "
        "loss mean(w (L(x_w) - L(x_l))), where L is the denoising error and the detached weight "
        "w = clamp(0.5 + 0.2 beta m, eta, 1 - eta) depends on the margin m against a reference "
        "network, here an fp32 EMA of the policy. The pairs are training digits of the same "
        "class ranked (with Bradley-Terry noise) by a fixed *projection reward* "
        "R(x, k) = <x, P_k>, a smooth random pattern per class: a known reward, so the effect can "
        "be measured exactly. It is not the evaluation network."
    )
    tm = s["train_metrics"]
    section.table(
        [
            {"metric": "mean reward of samples, base", "value": s["reward_before"]},
            {"metric": "mean reward of samples, aligned", "value": s["reward_after"]},
            {"metric": "paired-noise win-rate vs base", "value": s["win_rate_vs_base"]},
            {"metric": "drift: held-out denoising MSE / base - 1", "value": s["drift"]},
            {"metric": "training implicit accuracy (last step)", "value": tm.get("implicit_acc")},
            {"metric": "mean weight w (last step)", "value": tm.get("weight")},
            {"metric": "L2 norm of theta - theta_ref (last step)", "value": tm.get("drift")},
        ],
        f"digits-unet-eps after {s['steps']} steps of 8 pairs (same sampling noise before/after)",
    )
    n = min(60, len(s["samples_before"]))
    idx = torch.arange(n)
    section.image(
        make_grid(s["samples_before"][idx], nrow=per_class * 2, scale=2),
        "base model samples (classes in rows of two)",
    )
    section.image(
        make_grid(s["samples_after"][idx], nrow=per_class * 2, scale=2),
        "aligned samples, same noise",
    )
    section.text(
        "Full comparison of {sigmoid, linear} x {frozen, EMA} on both zoo models, with an LR "
        "sweep, seeds and a null control: `python benchmarks/align.py` "
        "(results in benchmarks/results/align.md)."
    )
