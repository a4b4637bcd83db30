"""Samplers with one signature style: ``sample(model_fn, schedule_or_spec, x_or_shape, steps, generator)``.

* :func:`ddim_sample`: DDIM (Song et al. 2021, arXiv 2010.02502, eq. 12), eta = 0 deterministic.
* :func:`euler_sample`: Euler integration of the flow-matching ODE dx/dsigma = v (SD3).
* :func:`maskgit_sample`: MaskGIT confidence-ordered parallel decoding (Chang et al. 2022, arXiv
  2202.04200, sec. 3.2) with classifier-free guidance on logits and linearly annealed
  choice temperature (Gumbel noise on the confidences), as in the MUSE/aMUSEd samplers.

``model_fn(x, t)`` receives the *schedule's* time (integer step or sigma) and returns the model's
prediction (eps or v for DDPM, velocity for flow). Wrap a conditional model with
:func:`guided` for classifier-free guidance.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diffkit.core.masking import MaskSchedule, gamma
from diffkit.core.schedules import DDPM, FlowMatching

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(cond_fn: ModelFn, uncond_fn: ModelFn, scale: float) -> ModelFn:
    """Classifier-free guidance: uncond + scale * (cond - uncond) (Ho & Salimans 2022)."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if scale == 1.0:
            return cond_fn(x, t)
        u = uncond_fn(x, t)
        return u + scale * (cond_fn(x, t) - u)

    return fn


def _start(x_or_shape, generator) -> torch.Tensor:
    if isinstance(x_or_shape, torch.Tensor):
        return x_or_shape
    return torch.randn(tuple(x_or_shape), generator=generator)


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    schedule: DDPM,
    x_or_shape: torch.Tensor | tuple[int, ...],
    steps: int = 20,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    clip_x0: float | None = None,
) -> torch.Tensor:
    """DDIM from pure noise to x0 with ``steps`` evenly spaced "trailing" timesteps (the first is T - 1)."""
    if steps < 1 or steps > schedule.num_train_timesteps:
        raise ValueError(f"steps must be in [1, {schedule.num_train_timesteps}], got {steps}")
    x = _start(x_or_shape, generator)
    T = schedule.num_train_timesteps
    ac = schedule.alphas_cumprod
    ts = (torch.arange(steps) * (T // steps)).flip(0) + (T - 1 - (steps - 1) * (T // steps))
    for i, t in enumerate(ts.tolist()):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        pred = model_fn(x, tt)
        x0, eps = schedule.to_x0_eps(x, pred, tt)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        a_prev = ac[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
        a_t = ac[t].item()
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        dir_xt = (1 - a_prev - sigma**2) ** 0.5 * eps
        x = a_prev**0.5 * x0 + dir_xt
        if sigma > 0:
            x = x + sigma * torch.randn(x.shape, generator=generator)
    return x


@torch.no_grad()
def euler_sample(
    model_fn: ModelFn,
    schedule: FlowMatching,
    x_or_shape: torch.Tensor | tuple[int, ...],
    steps: int = 20,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Euler steps x <- x + (sigma_next - sigma) * v over shifted sigmas from 1 to 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = _start(x_or_shape, generator)
    sig = schedule.sigmas(steps)
    for i in range(steps):
        t = torch.full((x.shape[0],), float(sig[i]))
        v = model_fn(x, t)
        x = x + (sig[i + 1] - sig[i]) * v
    return x


LogitsFn = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def maskgit_sample(
    logits_fn: LogitsFn,
    shape: tuple[int, int],
    mask_id: int,
    steps: int = 8,
    generator: torch.Generator | None = None,
    uncond_logits_fn: LogitsFn | None = None,
    guidance_scale: float = 1.0,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    schedule: MaskSchedule = "cosine",
    tokens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Confidence-based parallel decoding of a (B, L) token grid in ``steps`` passes.

    Args:
        logits_fn: tokens (B, L) with ``mask_id`` at masked places -> logits (B, L, K).
        shape: (B, L).
        mask_id: id of the mask token (outside [0, K)).
        steps: number of forward passes T; every token is decoded after T steps.
        uncond_logits_fn: unconditional logits for CFG (None disables guidance).
        guidance_scale: CFG scale s: logits = u + s (c - u).
        temperature: softmax temperature for sampling the tokens.
        choice_temperature: start value of the Gumbel noise on confidences, annealed linearly to 0.
        schedule: mask schedule gamma.
        tokens: optional partially decoded start (mask_id where unknown).
    """
    B, L = shape
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = torch.full((B, L), mask_id, dtype=torch.long) if tokens is None else tokens.clone()
    for step in range(steps):
        masked = x == mask_id
        if not masked.any():
            break
        logits = logits_fn(x).float()
        if uncond_logits_fn is not None and guidance_scale != 1.0:
            u = uncond_logits_fn(x).float()
            logits = u + guidance_scale * (logits - u)
        probs = torch.softmax(logits / max(temperature, 1e-6), dim=-1)
        sampled = torch.multinomial(probs.view(B * L, -1), 1, generator=generator).view(B, L)
        conf = torch.gather(probs, -1, sampled[..., None])[..., 0].log()
        # Linear annealing of the choice noise (MaskGIT / MUSE).
        t_anneal = choice_temperature * (1.0 - (step + 1) / steps)
        if t_anneal > 0:
            u01 = torch.rand(B, L, generator=generator).clamp_(1e-20, 1.0)
            conf = conf + t_anneal * -torch.log(-torch.log(u01))
        sampled = torch.where(masked, sampled, x)
        conf = torch.where(masked, conf, torch.full_like(conf, float("inf")))
        n_masked_now = masked.sum(1)
        n_keep_masked = torch.floor(gamma((step + 1) / steps, schedule) * L).long()
        n_keep_masked = torch.minimum(n_keep_masked.expand(B), n_masked_now - 1).clamp(min=0)
        if step == steps - 1:
            n_keep_masked = torch.zeros_like(n_keep_masked)
        order = conf.argsort(dim=1)  # lowest confidence first
        ranks = order.argsort(dim=1)
        remask = ranks < n_keep_masked[:, None]
        x = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
    return x
