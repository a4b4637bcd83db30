"""Make the shared tiny-model helpers (_amused_tiny.py) importable under --import-mode=importlib,
and leave no accelerate state behind."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _no_accelerate_state_left_behind():
    """The aMUSEd runner creates an accelerate ``Accelerator``, whose state is process-wide;
    reset it after each test so no other test inherits its device or mixed precision."""
    yield
    if "accelerate.state" in sys.modules:
        sys.modules["accelerate.state"].AcceleratorState._reset_state()
