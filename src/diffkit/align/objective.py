"""Linear-DPO as a training objective for diffusion (eps / v) and flow-matching models.

One objective for both families (Linear-DPO, arXiv 2605.21123, "unified reverse-SDE objective";
its code computes the same expression for SD1.5/SDXL and SD3): every preference pair shares one
timestep t and one noise eps; both images are noised with the schedule of
:mod:`diffkit.core.schedules` and regressed on the schedule's target (eps, v, or eps - x0 for flow
with SD3's shifted sigmas); the per-sample error is the fp32 MSE over C x H x W:

    L_theta(x) = mean || y - f_theta(x_t, t, c) ||^2

The DPO loss of :mod:`diffkit.align.losses` then combines the policy's and the reference's errors.
No timestep weighting by default (``time_weighting="flow_eps"`` multiplies flow errors by
(1 - sigma)^2, which is what running the eps-form on a flow model would do).

Usage with :func:`diffkit.train.fit`: ``fit(LinearDPO(cfg, policy, schedule=...), policy, pairs,
train_cfg, out)``. ``fit`` calls ``after_step`` once per optimizer step (the EMA reference update)
and saves ``state_dict()`` (the EMA) in every checkpoint.

A batch is a dict ``{"x_w": (B, C, H, W), "x_l": (B, C, H, W), "cond": {name: (B, ...)}}`` where
``cond`` holds the model's conditioning (see :func:`predict`), with optional entries:

* ``"weight"`` (B,): per-pair weights (the loss is mean_i(weight_i * loss_i); see
  :mod:`diffkit.align.losses`);
* ``"cond_l"``: conditioning entries that differ for the loser (SDXL's per-image ``time_ids``:
  original size and crop of each image); ``cond`` then holds the winner's;
* ``"uncond"``: the empty prompt's conditioning (B, ...), used with probability
  ``cond_dropout`` per pair in place of the prompt's text entries (Diffusion-DPO and Linear-DPO
  train SD1.5/SDXL with 20% empty prompts).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from diffkit.align.losses import LOSSES
from diffkit.align.reference import FrozenReference, ReferenceKind, make_reference
from diffkit.core.objective import LossOutput, StepContext
from diffkit.core.schedules import DDPM, FlowMatching

log = logging.getLogger(__name__)

SUPPORTED_MODELS = ("UNet2DConditionModel", "SD3Transformer2DModel")
_REQUIRED_COND = {
    "UNet2DConditionModel": ("encoder_hidden_states",),
    "SD3Transformer2DModel": ("encoder_hidden_states", "pooled_projections"),
}


@dataclass(frozen=True, kw_only=True)
class LinearDPOConfig:
    """Settings of :class:`LinearDPO`.

    Attributes:
        loss: "linear" (Linear-DPO: detached hard-sigmoid weight clipped to [eta, 1 - eta]),
            "sigmoid" (Diffusion-DPO), "linear_pure" (w = 0.5), "hinge" or "ipo".
        beta: DPO beta in the Diffusion-DPO convention (sigmoid loss -log sigma(-beta/2 m));
            for "linear" it sets the linear zone |m| <= (0.5 - eta) / (0.2 beta).
        eta: clip of the Linear-DPO weight, in [0, 0.5).
        reference: "frozen" copy, fp32 "ema" of the policy, "lora_base" (the policy with LoRA
            adapters disabled) or "lora_ema" (EMA of the adapter weights only).
        ema_decay: d in (0, 1] for "ema"/"lora_ema": theta_ref <- d theta_ref + (1 - d) theta
            once per optimizer step; 1 equals a frozen reference.
        time_weighting: "none" (the paper's code) or "flow_eps" ((1 - sigma)^2 on flow models,
            the eps-form weighting; no effect on DDPM).
        sft_weight: weight of an optional SFT anchor, sft_weight * mean L_theta(x_w); 0 = off.
        log_drift: log ||theta - theta_ref|| every step (one pass over the parameters).
        cond_dropout: probability that a pair trains on the empty prompt (the batch's ``uncond``)
            instead of its own (the paper's code: 0.2 for SD1.5 / SDXL, 0 for SD3).
    """

    loss: Literal["linear", "sigmoid", "linear_pure", "hinge", "ipo"] = "linear"
    beta: float = 500.0
    eta: float = 1e-3
    reference: ReferenceKind = "ema"
    ema_decay: float = 0.99
    time_weighting: Literal["none", "flow_eps"] = "none"
    sft_weight: float = 0.0
    log_drift: bool = True
    cond_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"LinearDPOConfig.loss={self.loss!r}; use one of {sorted(LOSSES)}")
        if not self.beta > 0:
            raise ValueError(f"LinearDPOConfig.beta must be > 0, got {self.beta}")
        if not 0 <= self.eta < 0.5:
            raise ValueError(f"LinearDPOConfig.eta must be in [0, 0.5), got {self.eta}")
        if self.reference not in ("frozen", "ema", "lora_base", "lora_ema"):
            raise ValueError(
                f"LinearDPOConfig.reference={self.reference!r}; use 'frozen', 'ema', "
                "'lora_base' or 'lora_ema'"
            )
        if not 0 < self.ema_decay <= 1:
            raise ValueError(f"LinearDPOConfig.ema_decay must be in (0, 1], got {self.ema_decay}")
        if self.time_weighting not in ("none", "flow_eps"):
            raise ValueError(
                f"LinearDPOConfig.time_weighting={self.time_weighting!r}; use 'none' or 'flow_eps'"
            )
        if self.sft_weight < 0:
            raise ValueError(f"LinearDPOConfig.sft_weight must be >= 0, got {self.sft_weight}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(
                f"LinearDPOConfig.cond_dropout must be in [0, 1), got {self.cond_dropout}"
            )


# ----------------------------------------------------------------------------- model adapters
def model_kind(model: nn.Module) -> str:
    """The supported diffusers class ``model`` is (or derives from); error listing them if none."""
    for cls in type(model).__mro__:
        if cls.__name__ in SUPPORTED_MODELS:
            return cls.__name__
    raise ValueError(
        f"model class {type(model).__name__} is not supported by diffkit.align; supported: "
        f"{', '.join(SUPPORTED_MODELS)}"
    )


def predict(
    model: nn.Module, x_t: torch.Tensor, t_model: torch.Tensor, cond: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """One forward of a supported diffusers denoiser.

    ``cond`` keys: ``encoder_hidden_states`` (all); ``pooled_projections`` (SD3); ``text_embeds``
    and ``time_ids`` (SDXL UNets, passed as ``added_cond_kwargs``).
    """
    kind = model_kind(model)
    missing = [k for k in _REQUIRED_COND[kind] if k not in cond]
    if missing:
        raise ValueError(f"{kind} needs conditioning {missing}; got keys {sorted(cond)}")
    dtype = next(model.parameters()).dtype
    c = {k: v.to(dtype) for k, v in cond.items()}
    x_t = x_t.to(dtype)
    if kind == "UNet2DConditionModel":
        kwargs = {}
        if "text_embeds" in c or "time_ids" in c:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": c["text_embeds"],
                "time_ids": c["time_ids"],
            }
        return model(
            x_t, t_model, encoder_hidden_states=c["encoder_hidden_states"], **kwargs
        ).sample
    return model(
        hidden_states=x_t,
        timestep=t_model.to(dtype),
        encoder_hidden_states=c["encoder_hidden_states"],
        pooled_projections=c["pooled_projections"],
    ).sample


# ----------------------------------------------------------------------------- noising
def t_from_uniform(
    schedule: DDPM | FlowMatching, u: torch.Tensor, z: torch.Tensor | None = None
) -> torch.Tensor:
    """Map per-pair uniforms ``u`` (and normals ``z`` for logit-normal) to schedule times."""
    if isinstance(schedule, DDPM):
        T = schedule.num_train_timesteps
        return (u * T).long().clamp(0, T - 1)
    if schedule.t_sampling == "logit_normal":
        if z is None:
            raise ValueError("logit-normal time sampling needs normals z")
        s = torch.sigmoid(schedule.logit_mean + schedule.logit_std * z)
    else:
        s = u
    return schedule.shift_sigma(s)


def paired_errors(
    model: nn.Module,
    schedule: DDPM | FlowMatching,
    x_w: torch.Tensor,
    x_l: torch.Tensor,
    cond: Mapping[str, torch.Tensor],
    noise: torch.Tensor,
    t: torch.Tensor,
    time_weighting: str = "none",
    cond_l: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample fp32 MSEs (L(x_w), L(x_l)) with one shared (t, eps) per pair; one 2B forward.

    ``cond_l`` overrides conditioning entries for the losers (e.g. SDXL's per-image time ids).
    """
    x0 = torch.cat([x_w, x_l]).float()
    eps = torch.cat([noise, noise]).float()
    tt = torch.cat([t, t])  # (2B,): winner i and loser i share t_i and eps_i
    x_t = schedule.add_noise(x0, eps, tt)
    y = schedule.target(x0, eps, tt)
    cond_l = cond_l or {}
    c = {k: torch.cat([v, cond_l.get(k, v)]) for k, v in cond.items()}
    pred = predict(model, x_t, schedule.model_t(tt), c)
    err = (pred.float() - y).pow(2).flatten(1).mean(1)
    if time_weighting == "flow_eps" and isinstance(schedule, FlowMatching):
        err = err * (1 - tt.float()) ** 2
    B = x_w.shape[0]
    return err[:B], err[B:]


class LinearDPO:
    """The Linear-DPO objective ``objective(model, batch, ctx) -> LossOutput``.

    Args:
        config: loss, beta, eta, reference strategy and EMA decay.
        policy: the model being trained (a supported diffusers class); used to build the reference.
        schedule: :class:`~diffkit.core.schedules.DDPM` (eps or v) or ``FlowMatching``.
        reference: an already built reference strategy (overrides ``config.reference``).
    """

    def __init__(
        self,
        config: LinearDPOConfig,
        policy: nn.Module,
        schedule: DDPM | FlowMatching,
        reference: FrozenReference | None = None,
    ) -> None:
        model_kind(policy)
        if not isinstance(schedule, (DDPM, FlowMatching)):
            raise ValueError(
                f"schedule {type(schedule).__name__} is not supported; use DDPM or FlowMatching"
            )
        self.config = config
        self.schedule = schedule
        self.reference = reference or make_reference(config.reference, policy, config.ema_decay)
        self.loss_fn = LOSSES[config.loss]

    # -- randomness: per pair, independent of how the batch is split across ranks
    def _draw(self, ctx: StepContext | None, x: torch.Tensor, generator: torch.Generator | None):
        B = x.shape[0]
        if ctx is not None:
            noise = ctx.randn(*x.shape[1:])
            u = ctx.rand(1, salt=1)[:, 0]
            z = ctx.randn(1, salt=2)[:, 0]
        else:
            noise = torch.randn(x.shape, generator=generator)
            u = torch.rand(B, generator=generator)
            z = torch.randn(B, generator=generator)
        return noise.to(x.device), t_from_uniform(self.schedule, u, z).to(x.device)

    def _dropout(self, batch, ctx: StepContext | None, generator: torch.Generator | None):
        """The batch's conditioning with the prompt's text entries replaced by the empty
        prompt's for a ``cond_dropout`` share of pairs (drawn per pair, split-independent)."""
        cond, p = batch["cond"], self.config.cond_dropout
        if p == 0:
            return cond
        uncond = batch.get("uncond")
        if uncond is None:
            raise ValueError("LinearDPOConfig.cond_dropout > 0 needs the batch's 'uncond' entry")
        B = batch["x_w"].shape[0]
        u = ctx.rand(1, salt=3)[:, 0] if ctx is not None else torch.rand(B, generator=generator)
        drop = u.to(batch["x_w"].device) < p  # (B,)
        out = dict(cond)
        for k, v in uncond.items():
            mask = drop.view(-1, *([1] * (v.dim() - 1)))
            out[k] = torch.where(mask, v.to(cond[k].dtype), cond[k])
        return out

    def _check_batch(self, batch) -> None:
        if not isinstance(batch, Mapping) or not {"x_w", "x_l", "cond"} <= set(batch):
            got = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"a DPO batch needs keys x_w, x_l, cond; got {got}")
        if batch["x_w"].shape != batch["x_l"].shape:
            raise ValueError(
                f"winner and loser shapes differ: {tuple(batch['x_w'].shape)} vs "
                f"{tuple(batch['x_l'].shape)}"
            )

    def __call__(
        self,
        model: nn.Module,
        batch: Mapping,
        ctx: StepContext | None = None,
        generator: torch.Generator | None = None,
    ) -> LossOutput:
        self._check_batch(batch)
        cfg = self.config
        x_w, x_l = batch["x_w"], batch["x_l"]
        noise, t = self._draw(ctx, x_w, generator)
        cond = self._dropout(batch, ctx, generator)
        cond_l = batch.get("cond_l")
        # Reference first: the LoRA-EMA strategy swaps adapter weights in place for its forward.
        with torch.no_grad(), self.reference.model(model) as ref:
            was = ref.training
            ref.eval()
            ref_w, ref_l = paired_errors(
                ref, self.schedule, x_w, x_l, cond, noise, t, cfg.time_weighting, cond_l
            )
            ref.train(was)
        err_w, err_l = paired_errors(
            model, self.schedule, x_w, x_l, cond, noise, t, cfg.time_weighting, cond_l
        )
        pair_weight = batch.get("weight")
        if pair_weight is not None:
            pair_weight = pair_weight.to(err_w.device)
        loss, w = self.loss_fn(
            err_w, err_l, ref_w, ref_l, beta=cfg.beta, eta=cfg.eta, pair_weight=pair_weight
        )
        if cfg.sft_weight > 0:
            sft = err_w if pair_weight is None else pair_weight * err_w
            loss = loss + cfg.sft_weight * sft.mean()
        m = ((err_w - err_l) - (ref_w - ref_l)).detach()
        metrics = {
            "mse_w": err_w.detach().mean(),
            "mse_l": err_l.detach().mean(),
            "ref_mse_w": ref_w.mean(),
            "ref_mse_l": ref_l.mean(),
            "margin": m.mean(),
            "beta_margin_std": cfg.beta * m.std() if m.numel() > 1 else torch.tensor(0.0),
            "implicit_acc": (m < 0).float().mean(),
            # TRL's rewards/margins: r = -(beta/2) m, chosen reward minus rejected reward
            "reward_margin": (-0.5 * cfg.beta * m).mean(),
            "weight": w.mean(),
        }
        if cfg.loss == "linear":
            metrics["clip_low_frac"] = (w <= cfg.eta + 1e-12).float().mean()
            metrics["clip_high_frac"] = (w >= 1 - cfg.eta - 1e-12).float().mean()
        if cfg.log_drift:
            metrics["drift"] = torch.tensor(self.reference.drift(model))
        return LossOutput(loss, metrics)

    # -- hooks used by diffkit.train.fit
    def after_step(self, model: nn.Module, step: int) -> None:
        """Called once per optimizer step, after ``optimizer.step()``: updates an EMA reference."""
        self.reference.update(model)

    def state_dict(self) -> dict:
        return {"reference_kind": self.reference.kind, "reference": self.reference.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("reference_kind") != self.reference.kind:
            raise ValueError(
                f"checkpoint holds a {state.get('reference_kind')!r} reference, this run uses "
                f"{self.reference.kind!r}"
            )
        self.reference.load_state_dict(state["reference"])
