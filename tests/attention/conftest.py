"""Shared tiny Wan config (_wan_tiny.py) importable under --import-mode=importlib, and its saved
folder as a module-scoped fixture."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def wan_dir(tmp_path_factory):
    """A tiny random-init WanTransformer3DModel saved with save_pretrained."""
    from _wan_tiny import WAN
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("wan")
    WanTransformer3DModel(**WAN).save_pretrained(path)
    return path
