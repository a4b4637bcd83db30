"""Shared fixtures for the align tests; also makes _align_tiny.py importable under
``--import-mode=importlib``."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _align_tiny import make_pairs, tiny_sd3, tiny_unet  # noqa: E402


@pytest.fixture(params=["unet", "sd3"])
def model_and_pairs(request):
    """(kind, tiny random-init diffusers model, a batch of preference pairs) for both model kinds."""
    kind = request.param
    model = tiny_unet() if kind == "unet" else tiny_sd3()
    return kind, model, make_pairs(kind)
