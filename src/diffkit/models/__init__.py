"""The tiny reference zoo: small models trained by ``scripts/train_zoo.py`` on bundled data.

Each zoo member lives in one self-contained module that defines:

* ``DEFAULT_CONFIG``: the config dict of the shipped model;
* ``build(config: dict) -> nn.Module``: construct from a config dict (random init);
* ``load_dir(path) -> nn.Module``: load from a folder of weights (``model.safetensors`` +
  ``config.json`` through :func:`diffkit.core.io.load_model_dir`, or a diffusers folder).

How each member is *trained* is a recipe in :mod:`diffkit.zoo` (the top layer, which may use the
training loop and the method packages); the registry names that recipe by module path only.
Shipped weights sit in ``models/weights/<name>/`` beside a ``SHA256SUMS`` file checked by
``diffkit zoo verify``. Only ``diffkit zoo train NAME`` (or ``make zoo``) writes them.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from torch import nn

from diffkit.core.io import atomic_write_text, sha256_file

WEIGHTS_ROOT = Path(__file__).parent / "weights"
HASH_FILE = "SHA256SUMS"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class ZooEntry:
    """A registered zoo member."""

    name: str
    module: str
    recipe: str
    description: str
    depends_on: tuple[str, ...] = ()

    def impl(self) -> ModuleType:
        return importlib.import_module(self.module)

    @property
    def path(self) -> Path:
        return WEIGHTS_ROOT / self.name


# Registry: one line per zoo member. Method issues append their own entries here.
_REGISTRY: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "digit-classifier",
            "diffkit.models.digit_classifier",
            "diffkit.zoo.digit_classifier",
            "Evaluation network for 16x16 digits: features for FID/KID and class accuracy. "
            "Never a training signal.",
        ),
        # --- align (issue 3) ---
        ZooEntry(
            "digits-unet-eps",
            "diffkit.models.digits_unet",
            "diffkit.zoo.digits_unet_eps",
            "Class-conditional diffusers UNet2DConditionModel (eps-prediction DDPM) on 16x16 "
            "digits; class tokens as encoder_hidden_states. Base model for align.",
            depends_on=("digit-classifier",),
        ),
        ZooEntry(
            "digits-sd3-flow",
            "diffkit.models.digits_sd3",
            "diffkit.zoo.digits_sd3_flow",
            "Class-conditional diffusers SD3Transformer2DModel (rectified flow) on 16x16 digits. "
            "Base model for align.",
            depends_on=("digit-classifier",),
        ),
        # --- distill (issue 4) ---
        ZooEntry(
            "digits-patch-tokenizer",
            "diffkit.models.patch_tokenizer",
            "diffkit.zoo.digits_patch_tokenizer",
            "FPD tokenizer: k-means (K=64) on 2x2 patches of 16x16 digits -> 8x8 = 64 tokens.",
        ),
        ZooEntry(
            "digits-maskgit",
            "diffkit.models.maskgit",
            "diffkit.zoo.digits_maskgit",
            "FPD teacher: tiny class-conditional MaskGIT over patch tokens (null class for CFG).",
            depends_on=("digits-patch-tokenizer",),
        ),
        ZooEntry(
            "digits-lifter",
            "diffkit.models.digit_lifter",
            "diffkit.zoo.digits_lifter",
            "FPD feature lifter: small CNN trained on the train split (not the evaluation net).",
        ),
        ZooEntry(
            "digits-fpd",
            "diffkit.models.maskgit",
            "diffkit.zoo.digits_fpd",
            "One-step FPD student distilled from digits-maskgit (1 forward pass per sample); "
            "uses 72 real train images per class and a discriminator (not data-free).",
            depends_on=("digits-patch-tokenizer", "digits-maskgit", "digits-lifter"),
        ),
        ZooEntry(
            "digits-fpd-datafree",
            "diffkit.models.maskgit",
            "diffkit.zoo.digits_fpd_datafree",
            "The paper's data-free one-step FPD student of digits-maskgit (no real image).",
            depends_on=("digits-patch-tokenizer", "digits-maskgit", "digits-lifter"),
        ),
        # --- attention (issue 5) ---
        ZooEntry(
            "moving-digits-wan",
            "diffkit.models.moving_digits_wan",
            "diffkit.zoo.moving_digits_wan",
            "Tiny diffusers WanTransformer3DModel (4 layers, 4 heads x 32) trained by rectified "
            "flow on one-digit moving-digit videos: 16x32x32 pixels -> 1,024 tokens.",
            depends_on=("digit-classifier",),
        ),
        ZooEntry(
            "moving-digits-wan-ropeslr",
            "diffkit.attention.pretrained",
            "diffkit.zoo.moving_digits_wan_ropeslr",
            "moving-digits-wan with RoPeSLR self-attention (density 0.1) after stage-1 alignment; "
            "stores only the new RoPeSLR parameters.",
            depends_on=("moving-digits-wan", "digit-classifier"),
        ),
        # --- quantize (issue 6) ---
        ZooEntry(
            "moving-digits-causal",
            "diffkit.models.causal_wan",
            "diffkit.zoo.moving_digits_causal",
            "Tiny Self-Forcing-style causal video DiT (per-frame adaLN, causal 3D RoPE, "
            "block-causal mask, KV cache; 3 chunks of 3 frames, 64 tokens a frame, 4 steps per "
            "chunk): the Q-ARVD quantization target.",
        ),
        # --- curate (issue 7) ---
    ]
}


def list_models() -> list[str]:
    """Names of every registered zoo member."""
    return sorted(_REGISTRY)


def entry(name: str) -> ZooEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown zoo model {name!r}; available: {', '.join(list_models())}"
        ) from None


def create(name: str, **overrides) -> nn.Module:
    """A randomly initialised model of the zoo member's architecture (its default config)."""
    impl = entry(name).impl()
    return impl.build({**impl.DEFAULT_CONFIG, **overrides})


def load(name: str) -> nn.Module:
    """The shipped, trained zoo member (eval mode)."""
    e = entry(name)
    if not (e.path / HASH_FILE).is_file():
        raise FileNotFoundError(
            f"zoo weights for {name!r} are missing at {e.path}; rebuild them with "
            f"`diffkit zoo train {name}`"
        )
    return e.impl().load_dir(e.path).eval()


def metrics(name: str) -> dict:
    """Metrics recorded when the shipped weights were trained."""
    p = entry(name).path / METRICS_FILE
    return json.loads(p.read_text()) if p.is_file() else {}


def _hash_lines(directory: Path) -> str:
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != HASH_FILE)
    return "".join(f"{sha256_file(p)}  {p.name}\n" for p in files)


def record_hashes(name: str) -> Path:
    """Write SHA256SUMS for the zoo member's weight folder."""
    d = entry(name).path
    return atomic_write_text(d / HASH_FILE, _hash_lines(d))


def verify(name: str) -> tuple[bool, str]:
    """Check shipped files against the recorded hashes: (ok, message)."""
    d = entry(name).path
    sums = d / HASH_FILE
    if not sums.is_file():
        return False, f"missing {sums}; run `diffkit zoo train {name}`"
    recorded = {}
    for line in sums.read_text().splitlines():
        digest, fname = line.split(maxsplit=1)
        recorded[fname] = digest
    for fname, digest in recorded.items():
        p = d / fname
        if not p.is_file():
            return False, f"{fname} is missing; run `diffkit zoo train {name}`"
        if sha256_file(p) != digest:
            return (
                False,
                f"{fname} does not match its recorded hash; run `diffkit zoo train {name}`",
            )
    return True, f"{len(recorded)} files match"


__all__ = [
    "HASH_FILE",
    "METRICS_FILE",
    "WEIGHTS_ROOT",
    "ZooEntry",
    "create",
    "entry",
    "list_models",
    "load",
    "metrics",
    "record_hashes",
    "verify",
]
