"""diffkit: curate, align, distill, sparsify and quantize diffusion models.

The top-level import stays light (torch, numpy, safetensors). Subpackages are imported on use:

>>> from diffkit import core, models, data
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "core",
    "data",
    "models",
    "report",
    "config",
    "train",
    "align",
    "distill",
    "attention",
    "quantize",
    "curate",
)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"diffkit.{name}")
    raise AttributeError(f"module 'diffkit' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]
