"""What a run shows while it trains: held-out preference metrics and validation images.

* **Held-out metrics** (as TRL's DPO trainer evaluates): the objective's metrics on pairs kept out
  of training (``holdout_pairs``), with one fixed noise / timestep draw so that every evaluation
  sees the same noising; ``eval/implicit_acc`` (share of pairs with margin m < 0) and
  ``eval/reward_margin`` (mean implicit reward r = -(beta/2) m) are the numbers to watch.
* **Validation images** (as the Linear-DPO and diffusers DPO scripts do): fixed prompts sampled
  with fixed seeds from the policy, the reference and the EMA of the policy (when the run keeps
  one), with the pipeline's own scheduler and classifier-free guidance on the cached empty prompt;
  saved as PNGs under ``run/validation/step_XXXXXXXX/`` and to TensorBoard.

Both run on rank 0 every ``eval_every`` optimizer steps and at the last step
(:class:`ValidationCallback`, a callback of :func:`diffkit.train.fit`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from diffkit.align.objective import LinearDPO, predict

log = logging.getLogger(__name__)


@torch.no_grad()
def heldout_metrics(
    objective: LinearDPO, model: nn.Module, data, *, batch_size: int, seed: int
) -> dict[str, float]:
    """The objective's metrics averaged over ``data`` (no prompt dropout, fixed noise draws)."""
    ev = copy.copy(objective)
    ev.config = dataclasses.replace(objective.config, cond_dropout=0.0)
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    was = model.training
    model.eval()
    sums: dict[str, float] = {}
    try:
        for i in range(0, len(data), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(data)))
            batch = _to_device(data.get_batch(idx), device)
            out = ev(model, batch, generator=g)
            for k, v in {"loss": out.loss, **out.metrics}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
    finally:
        model.train(was)
    return {k: v / len(data) for k, v in sums.items()}


@torch.no_grad()
def sample_latents(
    model: nn.Module,
    scheduler,
    cond: Mapping[str, torch.Tensor],
    uncond: Mapping[str, torch.Tensor] | None,
    shape: tuple[int, ...],
    *,
    steps: int,
    guidance: float,
    seed: int,
) -> torch.Tensor:
    """Sample (N, C, H, W) latents for N prompts' conditioning with a diffusers scheduler.

    Classifier-free guidance when ``guidance > 1`` and ``uncond`` is given: pred = u + g (c - u).
    The initial noise comes from a CPU generator seeded with ``seed`` (same images on any device).
    """
    device = next(model.parameters()).device
    sched = copy.deepcopy(scheduler)  # set_timesteps mutates the scheduler
    sched.set_timesteps(steps, device=device)
    n = next(iter(cond.values())).shape[0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g).to(device) * getattr(sched, "init_noise_sigma", 1.0)
    cfg = guidance > 1 and uncond is not None
    c = dict(cond)
    if cfg:  # (2N, ...): empty prompt first, then the prompts
        c = {k: torch.cat([uncond.get(k, v), v]) for k, v in cond.items()}
    was = model.training
    model.eval()
    try:
        for t in sched.timesteps:
            xin = torch.cat([x, x]) if cfg else x
            if hasattr(sched, "scale_model_input"):
                xin = sched.scale_model_input(xin, t)
            pred = predict(model, xin, t.expand(len(xin)).to(device), c).float()
            if cfg:
                u, p = pred.chunk(2)
                pred = u + guidance * (p - u)
            x = sched.step(pred, t, x, generator=g).prev_sample  # g: DDPM's step noise
    finally:
        model.train(was)
    return x


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor) -> list:
    """PIL images from latents ((z / scale) + shift, through the VAE decoder)."""
    from PIL import Image

    shift = getattr(vae.config, "shift_factor", None) or 0.0
    z = z / vae.config.scaling_factor + shift
    img = vae.decode(z.to(vae.device, vae.dtype)).sample.float().clamp(-1, 1)  # (N, 3, H, W)
    arr = ((img + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class ValidationCallback:
    """``fit`` callback: held-out metrics and validation images every ``every`` steps.

    Args:
        objective: the run's :class:`LinearDPO` (its reference gives the reference images).
        model: the policy being trained.
        out_dir: the run folder (``eval.jsonl``, ``validation/``, ``tb/``).
        every: steps between evaluations; the last step (``last``) is always evaluated.
        heldout: held-out pairs (``get_batch``) or None.
        prompts: validation prompt texts, and ``prompt_cond`` / ``uncond`` their conditioning.
        vae, scheduler: decode and sample the validation images.
        ema: an EMA of the policy (:class:`diffkit.core.ema.EMA`) or None.
    """

    def __init__(
        self,
        objective: LinearDPO,
        model: nn.Module,
        out_dir: str | Path,
        *,
        every: int,
        last: int,
        heldout=None,
        batch_size: int = 16,
        prompts: tuple[str, ...] = (),
        prompt_cond: Mapping[str, torch.Tensor] | None = None,
        uncond: Mapping[str, torch.Tensor] | None = None,
        vae=None,
        scheduler=None,
        latent_shape: tuple[int, ...] = (),
        steps: int = 20,
        guidance: float = 5.0,
        ema=None,
        seed: int = 0,
    ) -> None:
        self.objective, self.model, self.out_dir = objective, model, Path(out_dir)
        self.every, self.last, self.heldout, self.batch_size = every, last, heldout, batch_size
        self.prompts, self.prompt_cond, self.uncond = prompts, prompt_cond, uncond
        self.vae, self.scheduler, self.latent_shape = vae, scheduler, latent_shape
        self.steps, self.guidance, self.ema, self.seed = steps, guidance, ema, seed
        self._writer = None

    def writer(self):
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tb"))
            except Exception:  # tensorboard not installed
                self._writer = False
        return self._writer or None

    def __call__(self, step: int, metrics: dict) -> None:
        if step % self.every and step != self.last:
            return
        if self.heldout is not None:
            m = heldout_metrics(
                self.objective, self.model, self.heldout, batch_size=self.batch_size, seed=self.seed
            )
            line = {"step": step, **{f"eval/{k}": v for k, v in m.items()}}
            with open(self.out_dir / "eval.jsonl", "a") as f:
                f.write(json.dumps(line) + "\n")
            if self.writer():
                for k, v in line.items():
                    if k != "step":
                        self.writer().add_scalar(k, v, step)
            log.info(
                "step %d held-out: implicit_acc %.3f reward_margin %.4g",
                step,
                m["implicit_acc"],
                m["reward_margin"],
            )
        if self.prompts and self.vae is not None:
            self.images(step)
        if self.writer():
            self.writer().flush()

    def images(self, step: int) -> None:
        folder = self.out_dir / "validation" / f"step_{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        device = next(self.model.parameters()).device
        cond = {k: v.to(device) for k, v in self.prompt_cond.items()}
        uncond = {k: v.to(device) for k, v in (self.uncond or {}).items()}
        kw = dict(steps=self.steps, guidance=self.guidance, seed=self.seed)
        models = {"policy": None, "reference": None}
        if self.ema is not None:
            models["ema"] = self.ema.module
        for which in models:
            if which == "reference":
                with self.objective.reference.model(self.model) as ref:
                    z = sample_latents(ref, self.scheduler, cond, uncond, self.latent_shape, **kw)
            else:
                net = self.model if which == "policy" else models[which]
                z = sample_latents(net, self.scheduler, cond, uncond, self.latent_shape, **kw)
            for i, img in enumerate(decode_latents(self.vae, z)):
                img.save(folder / f"{which}_{i:02d}.png")
                if self.writer():
                    import numpy as np

                    self.writer().add_image(
                        f"validation/{which}/{i:02d}", np.asarray(img), step, dataformats="HWC"
                    )


def _to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x
