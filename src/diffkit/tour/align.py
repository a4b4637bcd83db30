"""Tour section: Linear-DPO aligns the digits UNet zoo model to a toy projection reward."""

from __future__ import annotations

import dataclasses
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
    # The baseline a user would otherwise run: Diffusion-DPO (sigmoid loss, frozen reference),
    # same beta, data, noise, steps and learning rate; only the loss and the reference differ.
    arms = {
        "Diffusion-DPO (sigmoid, frozen ref)": dataclasses.replace(
            dpo, loss="sigmoid", reference="frozen"
        ),
        "Linear-DPO (linear, EMA ref)": dpo,
    }
    res = {}
    for name, cfg in arms.items():
        ctx.status(f"align: {steps} steps of {name} on digits-unet-eps")
        with tempfile.TemporaryDirectory() as tmp:
            res[name], _, _ = align_zoo_member(
                "digits-unet-eps",
                cfg,
                train,
                tmp,
                n_pairs=2000,
                eval_per_class=per_class,
                sampler_steps=8,
                seed=ctx.seed,
            )
    s = res["Linear-DPO (linear, EMA ref)"]
    section.text(
        "Linear-DPO (arXiv 2605.21123) fine-tunes a diffusion model on preference pairs with the "
        "loss mean(w (L(x_w) - L(x_l))), where L is the denoising error and the detached weight "
        "w = clamp(0.5 + 0.2 beta m, eta, 1 - eta) depends on the margin m against a reference "
        "network, here an fp32 EMA of the policy. The pairs are training digits of the same "
        "class ranked (with Bradley-Terry noise) by a fixed *projection reward* "
        "R(x, k) = <x, P_k>, a smooth random pattern per class: a known reward, so the effect can "
        "be measured exactly. It is not the evaluation network. Beside it runs the baseline, "
        "Diffusion-DPO (sigmoid loss against a frozen reference), with everything else equal."
    )
    metrics = [
        ("mean reward of samples, base", lambda r: r["reward_before"]),
        ("mean reward of samples, aligned", lambda r: r["reward_after"]),
        ("paired-noise win-rate vs base", lambda r: r["win_rate_vs_base"]),
        ("drift: held-out denoising MSE / base - 1", lambda r: r["drift"]),
        (
            "training implicit accuracy (last step)",
            lambda r: r["train_metrics"].get("implicit_acc"),
        ),
        (
            "mean per-pair gradient weight (last step; linear: w in [eta, 1 - eta], "
            "sigmoid: (beta/2) sigmoid(beta m / 2))",
            lambda r: r["train_metrics"].get("weight"),
        ),
        ("L2 norm of theta - theta_ref (last step)", lambda r: r["train_metrics"].get("drift")),
    ]
    section.table(
        [{"metric": m, **{arm: get(r) for arm, r in res.items()}} for m, get in metrics],
        f"digits-unet-eps after {s['steps']} steps of 8 pairs, one seed (same pairs, training "
        "noise and sampling noise in both arms; single-run differences are within seed noise, see "
        "the benchmark for seeds)",
    )
    n = min(60, len(s["samples_before"]))
    idx = torch.arange(n)
    section.image(
        make_grid(s["samples_before"][idx], nrow=per_class * 2, scale=2),
        "base model samples (classes in rows of two)",
    )
    section.image(
        make_grid(s["samples_after"][idx], nrow=per_class * 2, scale=2),
        "Linear-DPO aligned samples, same noise",
    )
    section.text(
        "Full comparison of {sigmoid, linear} x {frozen, EMA 0.9/0.99/0.999} on a tiny 8x8 UNet "
        "with a learnable ink reward, 4 learning rates, 5 seeds and null, linear_pure and "
        "flipped-label controls: `python benchmarks/align.py` (prepare, run, memory, report; "
        "results in benchmarks/results/align.md)."
    )
