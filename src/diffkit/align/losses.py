"""Preference losses over per-sample denoising errors: Linear-DPO and Diffusion-DPO.

All losses take four per-pair vectors of per-sample MSEs (shape (B,)):

* ``err_w``, ``err_l``: the policy's errors L_theta(x_w), L_theta(x_l) (carry gradients);
* ``ref_err_w``, ``ref_err_l``: the reference's errors (no gradients; detached here anyway).

With Delta_theta = err_w - err_l and Delta_ref = ref_err_w - ref_err_l the **margin** is
m = Delta_theta - Delta_ref and the **implicit reward** r = -(beta / 2) m (Diffusion-DPO, Wallace et
al., arXiv 2311.12908, eq. 14; Linear-DPO, arXiv 2605.21123, ``inside_term`` in its code).

**beta convention.** beta is the Diffusion-DPO / Linear-DPO-code beta: the sigmoid loss is
-log sigma(-(beta/2) m) (the diffusers example folds the 1/2 into beta, so its beta 2500 is our
5000). Linear-DPO uses beta only inside its weight w = clamp(0.5 + 0.2 beta m, eta, 1 - eta).

Each loss returns ``(loss, weight)`` where ``weight`` is the detached per-pair gradient weight
dloss/dDelta_theta (times B), so callers can log clip fractions.

**Pair weights.** Every loss takes an optional ``pair_weight`` (B,) (HPDv3 ``confidence``, the
generic format's ``weight``): the loss becomes mean_i(pair_weight_i * loss_i), so a pair of weight
0 contributes nothing and weights of 1 give the plain mean. The normaliser is B, not the sum of the
weights, so the value does not depend on how a global batch is split into micro-batches or ranks.
The returned per-pair ``weight`` is the DPO weight before ``pair_weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(err_w, err_l, ref_err_w, ref_err_l) -> None:
    shapes = {tuple(t.shape) for t in (err_w, err_l, ref_err_w, ref_err_l)}
    if len(shapes) != 1 or err_w.dim() != 1:
        raise ValueError(
            "DPO losses need four per-pair vectors of the same shape (B,), got shapes "
            f"{[tuple(t.shape) for t in (err_w, err_l, ref_err_w, ref_err_l)]}"
        )


def _mean(x: torch.Tensor, pair_weight: torch.Tensor | None) -> torch.Tensor:
    if pair_weight is None:
        return x.mean()
    if pair_weight.shape != x.shape:
        raise ValueError(
            f"pair_weight must have shape {tuple(x.shape)}, got {tuple(pair_weight.shape)}"
        )
    return (pair_weight.detach().to(x.dtype) * x).mean()


def margin(err_w, err_l, ref_err_w, ref_err_l) -> torch.Tensor:
    """m = (L_theta(x_w) - L_theta(x_l)) - (L_ref(x_w) - L_ref(x_l)), per pair."""
    _check(err_w, err_l, ref_err_w, ref_err_l)
    return (err_w - err_l) - (ref_err_w - ref_err_l).detach()


def linear_dpo_weight(m: torch.Tensor, beta: float, eta: float) -> torch.Tensor:
    """Linear-DPO's detached hard-sigmoid weight w = clamp(0.5 + 0.2 beta m, eta, 1 - eta).

    Keras-style hard sigmoid (slope 0.2, intercept 0.5) of beta m, clipped to [eta, 1 - eta]
    (``clip_ratio`` in arXiv 2605.21123's code). Equivalently clamp(0.5 - 0.4 r, eta, 1 - eta).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0 <= eta < 0.5:
        raise ValueError(f"eta must be in [0, 0.5), got {eta}")
    return (0.5 + 0.2 * beta * m.detach()).clamp(eta, 1.0 - eta)


def linear_dpo_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    eta: float = 1e-3,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-DPO (arXiv 2605.21123, sec. 3 and its ``--linear_dpo`` code path).

    loss = mean_pairs( w * (L_theta(x_w) - L_theta(x_l)) ),  w = stopgrad(clamp(0.5 + 0.2 beta m,
    eta, 1 - eta)). The gradient w.r.t. Delta_theta is w / B: no beta prefactor; beta sets the
    width |m| <= (0.5 - eta) / (0.2 beta) of the linear zone. The reference enters only through w.
    The value can be negative and is unbounded below: log the margin, not the loss.

    Returns:
        (scalar loss, detached per-pair weights w).
    """
    m = margin(err_w, err_l, ref_err_w, ref_err_l)
    w = linear_dpo_weight(m, beta, eta)
    return _mean(w * (err_w - err_l), pair_weight), w


def linear_pure_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float = 1.0,
    eta: float = 0.0,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted contrastive regression: w = 0.5 for every pair (ignores the reference)."""
    _check(err_w, err_l, ref_err_w, ref_err_l)
    w = torch.full_like(err_w, 0.5).detach()
    return _mean(w * (err_w - err_l), pair_weight), w


def sigmoid_dpo_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    eta: float = 0.0,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffusion-DPO (Wallace et al., arXiv 2311.12908, eq. 14): mean(-log sigma(-(beta/2) m)).

    d loss / d Delta_theta = (beta/2) sigma((beta/2) m) / B: an exponential switch whose weight
    vanishes on pairs already ranked right. ``eta`` is unused (accepted for a uniform signature).

    Returns:
        (scalar loss, detached per-pair gradient weights (beta/2) sigma((beta/2) m)).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    m = margin(err_w, err_l, ref_err_w, ref_err_l)
    loss = _mean(-F.logsigmoid(-0.5 * beta * m), pair_weight)
    return loss, (0.5 * beta * torch.sigmoid(0.5 * beta * m)).detach()


def ipo_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    eta: float = 0.0,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """IPO-style squared loss (Azar et al., arXiv 2310.12036) on the implicit reward.

    loss = mean((r - 1)^2) / beta with r = -(beta/2) m: it pulls every pair to the target reward 1
    instead of pushing margins without bound. Secondary option; not part of the paper.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    m = margin(err_w, err_l, ref_err_w, ref_err_l)
    r = -0.5 * beta * m
    loss = _mean((r - 1.0) ** 2, pair_weight) / beta
    return loss, (-(r - 1.0)).detach()


def hinge_dpo_loss(
    err_w: torch.Tensor,
    err_l: torch.Tensor,
    ref_err_w: torch.Tensor,
    ref_err_l: torch.Tensor,
    beta: float,
    eta: float = 0.0,
    pair_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinge (SLiC, arXiv 2305.10425) on the implicit reward: mean(relu(1 - r))."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    m = margin(err_w, err_l, ref_err_w, ref_err_l)
    r = -0.5 * beta * m
    return _mean(F.relu(1.0 - r), pair_weight), ((r < 1.0).float() * 0.5 * beta).detach()


LOSSES = {
    "linear": linear_dpo_loss,
    "sigmoid": sigmoid_dpo_loss,
    "linear_pure": linear_pure_loss,
    "ipo": ipo_loss,
    "hinge": hinge_dpo_loss,
}
