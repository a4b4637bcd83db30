"""Layer-wise AdaRound with a learned activation step, chunk-weighted (Q-ARVD calibration).

AdaRound (Nagel et al., arXiv 2004.10568, eqs. 21-24) learns V so that the weight codes are
floor(W / s) + h(V), h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1) with zeta = 1.1,
gamma = -0.1, minimising

    L = sum_n w_k(n) ||Y_hat_n - Y_n||^2 / sum_n w_k(n) + lambda sum_i (1 - |2 h(V_i) - 1|^beta),

where Y = X W^T + b is the FP layer output, Y_hat uses fake-quantized inputs (per-tensor, step
learned LSQ-style, zero point fixed) and weights, and w_k(n) is the S1 weight of sample n's chunk
(Q-ARVD's chunk-weighted reconstruction). Schedule of the reference code (BRECQ's): 20 % warm-up
without the rounding term, then beta decays linearly from 20 to 2; Adam 2e-3 on V, Adam 4e-5 with
cosine decay on the activation steps. The result is rounded hard (V >= 0 rounds up).

A layer may be split into column groups (S2 dual scale); each group has its own per-row weight
(scale, zero point) and its own activation quantizer, and Y_hat is the sum of the group products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from diffkit.quantize.primitives import QParams, fake_quantize_lsq

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


def init_v(rest: torch.Tensor) -> torch.Tensor:
    """V such that h(V) equals the fractional part ``rest`` in [0, 1)."""
    p = ((rest - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


@dataclass(frozen=True)
class AdaRoundSettings:
    iters: int = 2000
    batch_rows: int = 1024
    lam: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    lr_v: float = 2e-3
    lr_act: float = 4e-5
    learn_act_step: bool = True


def adaround_layer(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    row_weight: torch.Tensor,
    groups: list[torch.Tensor],
    w_qparams: list[QParams | None],
    a_qparams: list[QParams | None],
    settings: AdaRoundSettings,
    generator: torch.Generator,
) -> tuple[list[torch.Tensor | None], list[QParams | None], dict]:
    """Optimise the rounding of every quantized group; returns (codes, act qparams, stats).

    ``codes[g]`` are integer codes (float tensor, (N, K_g)) in [qmin, qmax] for group g, or None
    for a group kept in full precision (``w_qparams[g] is None``).
    """
    n = x.shape[0]
    W = weight.detach().float()
    floors, vs, scales = [], [], []
    for g, qp in zip(groups, w_qparams):
        if qp is None:
            floors.append(None)
            vs.append(None)
            continue
        t = W[:, g] / qp.scale
        fl = torch.floor(t)
        floors.append(fl)
        vs.append(init_v(t - fl).requires_grad_(True))
    for qp in a_qparams:
        scales.append(None if qp is None else qp.scale.detach().clone().requires_grad_(True))
    opt_v = torch.optim.Adam([v for v in vs if v is not None], lr=settings.lr_v)
    act_params = [s for s in scales if s is not None]
    opt_a = (
        torch.optim.Adam(act_params, lr=settings.lr_act)
        if act_params and settings.learn_act_step
        else None
    )
    sched_a = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=settings.iters) if opt_a else None
    )
    warm = int(settings.warmup * settings.iters)

    def qweight(gi: int, hard: bool) -> torch.Tensor:
        qp = w_qparams[gi]
        r = (vs[gi] >= 0).float() if hard else rectified_sigmoid(vs[gi])
        q = torch.clamp(floors[gi] + r + qp.zero_point, qp.qmin, qp.qmax)
        return (q - qp.zero_point) * qp.scale

    def forward(xb: torch.Tensor, hard: bool = False) -> torch.Tensor:
        out = 0.0
        for gi, g in enumerate(groups):
            xg = xb[:, g]
            aq = a_qparams[gi]
            if aq is not None:
                xg = fake_quantize_lsq(xg, scales[gi].abs() + 1e-8, aq.zero_point, aq.qmin, aq.qmax)
            wg = W[:, g] if w_qparams[gi] is None else qweight(gi, hard)
            out = out + xg @ wg.T
        return out + bias if bias is not None else out

    rec = float("nan")
    for it in range(settings.iters):
        idx = torch.randint(0, n, (min(settings.batch_rows, n),), generator=generator)
        xb, wb = x[idx].float(), row_weight[idx].float()
        with torch.no_grad():
            yb = xb @ W.T + (bias if bias is not None else 0.0)
        err = (forward(xb) - yb).pow(2).sum(1)
        loss_rec = (wb * err).sum() / wb.sum().clamp_min(1e-12)
        loss = loss_rec
        if it >= warm:
            frac = (it - warm) / max(1, settings.iters - warm)
            beta = settings.beta_end + (settings.beta_start - settings.beta_end) * (1 - frac)
            reg = sum(
                (1 - (2 * rectified_sigmoid(v) - 1).abs().pow(beta)).sum()
                for v in vs
                if v is not None
            )
            loss = loss + settings.lam * reg
        opt_v.zero_grad(set_to_none=True)
        if opt_a:
            opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_v.step()
        if opt_a:
            opt_a.step()
            sched_a.step()
        rec = float(loss_rec.detach())

    codes: list[torch.Tensor | None] = []
    new_aq: list[QParams | None] = []
    for gi in range(len(groups)):
        qp = w_qparams[gi]
        if qp is None:
            codes.append(None)
        else:
            r = (vs[gi] >= 0).float()
            codes.append(torch.clamp(floors[gi] + r + qp.zero_point, qp.qmin, qp.qmax).detach())
        aq = a_qparams[gi]
        new_aq.append(
            None
            if aq is None
            else QParams(scales[gi].detach().abs() + 1e-8, aq.zero_point, aq.qmin, aq.qmax)
        )
    soft = [
        float(((rectified_sigmoid(v) - 0.5).abs() < 0.49).float().mean())
        for v in vs
        if v is not None
    ]
    stats = {"final_rec_loss": rec, "undecided_frac": sum(soft) / max(1, len(soft))}
    if math.isnan(rec):
        stats["final_rec_loss"] = None
    return codes, new_aq, stats
