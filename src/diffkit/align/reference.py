"""Reference networks for DPO: frozen copy, fp32 EMA, LoRA adapter-off base, EMA of LoRA weights.

Every strategy exposes the same small interface used by :class:`diffkit.align.LinearDPO`:

* ``with strategy.model(policy) as ref: ref(...)``: a module to run the reference forward with
  (the policy itself with adapters disabled / EMA adapter weights swapped in, for the LoRA ones);
* ``update(policy)``: called once per *optimizer* step (after ``optimizer.step()``);
* ``state_dict()`` / ``load_state_dict()``: what a checkpoint must hold to resume exactly;
* ``drift(policy)``: ||theta - theta_ref|| over the trained parameters (a diagnostic).

The EMA rule theta_ref <- d theta_ref + (1 - d) theta is Linear-DPO's moving reference (arXiv
2605.21123, ``utils/train_utils.py::ModelEMA``), kept in fp32 and updated after the optimizer step
(the reference code kept it in fp16, updated it before the step in its SD3 script, and did not save
it in checkpoints; all three are fixed here).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn

from diffkit.core.ema import EMA

log = logging.getLogger(__name__)

ReferenceKind = Literal["frozen", "ema", "lora_base", "lora_ema"]


def _lora_params(policy: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in policy.named_parameters() if "lora_" in n}


class FrozenReference:
    """A frozen fp32 deep copy of the policy at construction (the Diffusion-DPO reference).

    It is not saved in checkpoints: it equals the pretrained weights the policy is built from.
    """

    kind = "frozen"

    def __init__(self, policy: nn.Module) -> None:
        self.module = copy.deepcopy(policy).float().eval().requires_grad_(False)

    @contextlib.contextmanager
    def model(self, policy: nn.Module) -> Iterator[nn.Module]:
        yield self.module

    def update(self, policy: nn.Module) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    @torch.no_grad()
    def drift(self, policy: nn.Module) -> float:
        ref = dict(self.module.named_parameters())
        sq = 0.0
        for n, p in policy.named_parameters():
            if p.requires_grad:
                sq += float((p.detach().float() - ref[n]).pow(2).sum())
        return sq**0.5


class EMAReference(FrozenReference):
    """fp32 EMA of the policy, theta_ref <- d theta_ref + (1 - d) theta once per optimizer step.

    Starts as a copy of the policy (step 0); d = 1 is exactly the frozen reference.
    """

    kind = "ema"

    def __init__(self, policy: nn.Module, decay: float = 0.99) -> None:
        self.ema = EMA(policy, decay)
        self.module = self.ema.module

    def update(self, policy: nn.Module) -> None:
        self.ema.update(policy)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


class LoRAReference:
    """Reference for a policy trained through LoRA adapters (peft), with no second model.

    ``decay=None``: the reference is the base model, i.e. the policy with its adapters disabled
    (as in diffusers' DPO example). ``decay=d``: the reference is the base plus an fp32 EMA of the
    adapter weights, swapped into the policy for the reference forward and swapped back after.
    """

    def __init__(self, policy: nn.Module, decay: float | None = None) -> None:
        lora = _lora_params(policy)
        if not lora:
            raise ValueError(
                f"{type(policy).__name__} has no LoRA parameters; add adapters first "
                "(policy.add_adapter(peft.LoraConfig(...))) or use reference='frozen'/'ema'"
            )
        if decay is not None and not 0 < decay <= 1:
            raise ValueError(f"LoRA EMA decay must be in (0, 1], got {decay}")
        self.decay = decay
        self.kind = "lora_base" if decay is None else "lora_ema"
        self.shadow = {n: p.detach().float().clone() for n, p in lora.items()}
        self.num_updates = 0

    @contextlib.contextmanager
    def model(self, policy: nn.Module) -> Iterator[nn.Module]:
        if self.decay is None:
            policy.disable_adapters()
            try:
                yield policy
            finally:
                policy.enable_adapters()
            return
        params = _lora_params(policy)
        saved = {}
        with torch.no_grad():
            for n, p in params.items():
                saved[n] = p.detach().clone()
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield policy
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])

    @torch.no_grad()
    def update(self, policy: nn.Module) -> None:
        if self.decay is None:
            return
        for n, p in _lora_params(policy).items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict:
        if self.decay is None:
            return {}
        return {
            "shadow": {n: t.clone() for n, t in self.shadow.items()},
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.shadow = {n: t.float().clone() for n, t in state["shadow"].items()}
            self.num_updates = int(state["num_updates"])

    @torch.no_grad()
    def drift(self, policy: nn.Module) -> float:
        sq = 0.0
        for n, p in _lora_params(policy).items():
            # lora_base: the shadow stays at the initial adapters (B = 0, i.e. the base model).
            sq += float((p.detach().float() - self.shadow[n]).pow(2).sum())
        return sq**0.5


Reference = FrozenReference | EMAReference | LoRAReference


def make_reference(
    kind: ReferenceKind, policy: nn.Module, ema_decay: float = 0.99
) -> FrozenReference | EMAReference | LoRAReference:
    """Build the reference strategy named ``kind`` for ``policy``."""
    if kind == "frozen":
        return FrozenReference(policy)
    if kind == "ema":
        return EMAReference(policy, ema_decay)
    if kind == "lora_base":
        return LoRAReference(policy, None)
    if kind == "lora_ema":
        return LoRAReference(policy, ema_decay)
    raise ValueError(
        f"reference={kind!r} is not supported; use one of 'frozen', 'ema', 'lora_base', 'lora_ema'"
    )
