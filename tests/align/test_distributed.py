"""torchrun --nproc_per_node 2 (gloo, CPU) gives the single-process result at equal global batch.

Exact by construction: the single process runs ``grad_accum=2`` micro-batches of 2 rows, the very
rows (and per-sample noise seeds) that ranks 0 and 1 each see. Its accumulated gradient
``g0/2 + g1/2`` equals the all-reduced ``(g0 + g1)/2`` bit for bit (a sum of two floats is
commutative and halving is exact), so the weights must match exactly on any CPU kind. A test with
different batch shapes per process would compare kernel round-off instead (AVX-512 kernels round a
4-row batch differently from two 2-row ones), which Adam amplifies to ~lr on near-zero gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
torch.set_num_threads(1)
from _align_tiny import PairData, make_pairs, tiny_unet
from diffkit.align import LinearDPO, LinearDPOConfig
from diffkit.core.io import save_tensors
from diffkit.core.schedules import DDPM
from diffkit.train import TrainConfig, fit
model = tiny_unet()
obj = LinearDPO(LinearDPOConfig(loss="linear", beta=50.0, reference="ema", ema_decay=0.9), model,
                schedule=DDPM())
import torch.distributed as dist, os
accum = 1 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 2
fit(obj, model, PairData(make_pairs("unet", 8)),
    TrainConfig(steps=3, batch_size=4, grad_accum=accum, lr=1e-4, log_every=1), sys.argv[1])
if not dist.is_initialized() or dist.get_rank() == 0:
    sd = {{"policy." + k: v for k, v in model.state_dict().items()}}
    sd.update({{"ref." + k: v for k, v in obj.reference.module.state_dict().items()}})
    save_tensors(sys.argv[1] + "/final.safetensors", sd)
"""


@pytest.mark.distributed
def test_torchrun_two_ranks_equals_single_process(tmp_path, single_vs_torchrun):
    script = tmp_path / "ddp_align.py"
    script.write_text(textwrap.dedent(SCRIPT.format(here=str(Path(__file__).parent))))
    a, b = single_vs_torchrun(script)
    assert set(a) == set(b) and any(k.startswith("ref.") for k in a)
    from _align_tiny import tiny_unet

    init = tiny_unet().state_dict()
    moved = max((a["policy." + k] - v).abs().max().item() for k, v in init.items())
    assert moved > 1e-4  # the run did train (3 Adam steps of lr 1e-4)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.distributed
def test_cli_under_torchrun(tmp_path, free_port):
    """`torchrun -m diffkit align train`: rank 0 caches, the other rank waits; one final model."""
    import json

    from _align_tiny import png_bytes, save_tiny_sd15

    save_tiny_sd15(tmp_path / "sd15")
    rows = []
    for i in range(4):
        (tmp_path / f"w{i}.png").write_bytes(png_bytes(2 * i, 20))
        (tmp_path / f"l{i}.png").write_bytes(png_bytes(2 * i + 1, 20))
        rows.append({"prompt": f"p{i}", "chosen": f"w{i}.png", "rejected": f"l{i}.png"})
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port),
        "-m",
        "diffkit",
        "align",
        "train",
        "--model",
        str(tmp_path / "sd15"),
        "--data",
        str(tmp_path / "pairs.jsonl"),
        "--out",
        str(out),
        "--set",
        "resolution=16",
        "--set",
        "train.steps=2",
        "--set",
        "train.batch_size=4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["cache"]["pairs"] == 4
    assert (out / "final" / "diffusion_pytorch_model.safetensors").is_file()
