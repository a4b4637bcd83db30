"""Noise schedules with one shared interface: ``sample_t``, ``add_noise``, ``target``, ``model_t``.

* :class:`DDPM`: variance-preserving diffusion (Ho et al. 2020, arXiv 2006.11239) with
  x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; targets eps (eq. 14) or v = sqrt(abar) eps -
  sqrt(1 - abar) x0 (Salimans & Ho 2022, arXiv 2202.00512, sec. 4). Beta tables match diffusers'
  ``DDPMScheduler`` ("linear", "scaled_linear" as in Stable Diffusion, "squaredcos_cap_v2").
* :class:`FlowMatching`: rectified flow (Liu et al. 2022; SD3, Esser et al. 2024, arXiv 2403.03206)
  with x_t = (1 - s) x0 + s eps and velocity target eps - x0; the SD3 resolution shift
  s' = shift s / (1 + (shift - 1) s) (eq. 23) as in diffusers' ``FlowMatchEulerDiscreteScheduler``.

``t`` is the schedule's own time: an integer step in [0, T) for DDPM, a float noise level
sigma in [0, 1] for flow matching. ``model_t(t)`` converts it to what a diffusers model takes
(the integer step, or sigma * num_train_timesteps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - v.dim())).to(like.dtype)


@dataclass(frozen=True, kw_only=True)
class DDPM:
    """Discrete variance-preserving schedule.

    Attributes:
        num_train_timesteps: number of discrete steps T.
        beta_start: first beta (SD: 0.00085).
        beta_end: last beta (SD: 0.012).
        beta_schedule: "linear", "scaled_linear" (SD1.5/SDXL) or "squaredcos_cap_v2" (cosine).
        prediction_type: "epsilon" or "v_prediction".
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "scaled_linear"
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(
                f"DDPM.num_train_timesteps must be >= 2, got {self.num_train_timesteps}"
            )
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(
                f"DDPM needs 0 < beta_start < beta_end < 1, got beta_start={self.beta_start}, "
                f"beta_end={self.beta_end}"
            )
        if self.beta_schedule not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
            raise ValueError(f"DDPM.beta_schedule={self.beta_schedule!r} is not supported")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(
                f"DDPM.prediction_type={self.prediction_type!r}; use 'epsilon' or 'v_prediction'"
            )

    kind = "ddpm"

    @property
    def betas(self) -> torch.Tensor:
        T = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return torch.linspace(self.beta_start, self.beta_end, T, dtype=torch.float64)
        if self.beta_schedule == "scaled_linear":
            return (
                torch.linspace(self.beta_start**0.5, self.beta_end**0.5, T, dtype=torch.float64)
                ** 2
            )

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor(
            [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)], dtype=torch.float64
        )

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """abar_t for t = 0..T-1 (float64)."""
        return torch.cumprod(1.0 - self.betas, dim=0)

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, device="cpu"
    ) -> torch.Tensor:
        """Uniform integer steps in [0, T)."""
        return torch.randint(0, self.num_train_timesteps, (n,), generator=generator).to(device)

    def _coeffs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ac = self.alphas_cumprod.to(like.device)[t.long()]
        return _bcast(ac.sqrt(), like), _bcast((1 - ac).sqrt(), like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a, s = self._coeffs(t, x0)
        return a * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        a, s = self._coeffs(t, x0)
        return a * noise - s * x0

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        return t.long()

    def to_x0_eps(
        self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a model prediction at step ``t`` into (x0, eps) estimates."""
        a, s = self._coeffs(t, x_t)
        if self.prediction_type == "epsilon":
            eps = pred
            x0 = (x_t - s * eps) / a
        else:
            x0 = a * x_t - s * pred
            eps = s * x_t + a * pred
        return x0, eps


@dataclass(frozen=True, kw_only=True)
class FlowMatching:
    """Rectified-flow schedule, velocity target ``eps - x0``.

    Attributes:
        shift: SD3 timestep shift (1.0 = none; SD3-medium uses 3.0).
        num_train_timesteps: scale between sigma and the model's timestep input.
        t_sampling: "uniform" sigma, or "logit_normal" (SD3's default weighting, m=0, s=1).
        logit_mean: mean of the logit-normal.
        logit_std: std of the logit-normal.
    """

    shift: float = 1.0
    num_train_timesteps: int = 1000
    t_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    kind = "flow"

    def __post_init__(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"FlowMatching.shift must be > 0, got {self.shift}")
        if self.t_sampling not in ("uniform", "logit_normal"):
            raise ValueError(f"FlowMatching.t_sampling={self.t_sampling!r} is not supported")
        if self.logit_std <= 0:
            raise ValueError(f"FlowMatching.logit_std must be > 0, got {self.logit_std}")

    def shift_sigma(self, sigma: torch.Tensor) -> torch.Tensor:
        """SD3 eq. 23: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
        return self.shift * sigma / (1 + (self.shift - 1) * sigma)

    def sample_t(
        self, n: int, generator: torch.Generator | None = None, device="cpu"
    ) -> torch.Tensor:
        if self.t_sampling == "uniform":
            u = torch.rand(n, generator=generator)
        else:
            u = torch.sigmoid(
                self.logit_mean + self.logit_std * torch.randn(n, generator=generator)
            )
        return self.shift_sigma(u).to(device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = _bcast(t, x0)
        return (1 - s) * x0 + s * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def model_t(self, t: torch.Tensor) -> torch.Tensor:
        return t * self.num_train_timesteps

    def sigmas(self, steps: int, device="cpu") -> torch.Tensor:
        """Inference noise levels 1 -> 0 (steps + 1 values, last is 0), shifted."""
        s = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        return self.shift_sigma(s).float().to(device)

    def to_x0_eps(
        self, x_t: torch.Tensor, pred: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        s = _bcast(t, x_t)
        return x_t - s * pred, x_t + (1 - s) * pred


Schedule = DDPM | FlowMatching
