"""Shared test setup: one torch thread, offline hub, fp32, seeds, and the --runslow switch."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MPLBACKEND", "Agg")

import random  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).parent))  # shared helpers (_reload.py) under importlib mode
torch.set_default_dtype(torch.float32)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> int:
    """A TCP port that was free a moment ago (for torchrun's --master_port)."""
    return _free_port()


@pytest.fixture
def single_vs_torchrun(tmp_path):
    """Run ``script OUT`` once plainly and once under ``torchrun --nproc_per_node 2`` (gloo, CPU).

    The script must save its final weights to ``OUT/final.safetensors`` (rank 0). Returns the two
    state dicts ``(single, two_ranks)``. A free port is picked per run, so tests cannot collide.
    """
    import subprocess
    import sys

    from diffkit.core.io import load_tensors

    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(script) -> tuple[dict, dict]:
        one, two = tmp_path / "one", tmp_path / "two"
        r = subprocess.run(
            [sys.executable, str(script), str(one)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        r = subprocess.run(
            [*launcher, "--master_port", str(_free_port()), str(script), str(two)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        return load_tensors(one / "final.safetensors"), load_tensors(two / "final.safetensors")

    return run
