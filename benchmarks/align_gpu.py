"""Prepared GPU check: Linear-DPO steps on an SD1.5-sized UNet (random init, the real config).

Trains ``UNet2DConditionModel`` with SD1.5's configuration (860M parameters, 64x64x4 latents =
512 px, 77x768 text states) for a few Linear-DPO steps through ``diffkit.train.fit`` with the
recipe's hardware settings (bf16 autocast, gradient checkpointing, EMA reference in fp32) and
records the median step time and the peak GPU memory in ``benchmarks/results/align_gpu.json``.
Random latents and text states stand in for the cache: the step cost does not depend on them.

    python benchmarks/align_gpu.py                   # on a CUDA machine (about a minute)
    python benchmarks/align_gpu.py --tiny --device cpu --steps 3   # smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from diffkit.align import LinearDPO, LinearDPOConfig
from diffkit.core.machine import machine_info
from diffkit.core.schedules import DDPM
from diffkit.train import TrainConfig, fit

RESULTS = Path(__file__).parent / "results"
SD15_UNET = dict(  # runwayml/stable-diffusion-v1-5 unet/config.json (the fields that differ)
    sample_size=64,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
TINY_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)


class RandomPairs:
    """Random latents and text states shaped like an SD1.5 cache."""

    def __init__(self, n: int, size: int, text_dim: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x_w = torch.randn(n, 4, size, size, generator=g)
        self.x_l = torch.randn(n, 4, size, size, generator=g)
        self.text = torch.randn(n, 77, text_dim, generator=g)

    def __len__(self) -> int:
        return len(self.x_w)

    def get_batch(self, idx):
        return {
            "x_w": self.x_w[idx],
            "x_l": self.x_l[idx],
            "cond": {"encoder_hidden_states": self.text[idx]},
        }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16", "fp16"))
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (8 images per forward)")
    ap.add_argument("--steps", type=int, default=12, help="the first 2 are warm-up")
    ap.add_argument("--tiny", action="store_true", help="a tiny UNet (smoke test of the script)")
    ap.add_argument("--out", default=str(RESULTS / "align_gpu.json"))
    args = ap.parse_args()

    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    cfg = TINY_UNET if args.tiny else SD15_UNET
    unet = UNet2DConditionModel(**cfg)
    if not args.no_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.to(args.device).train()
    n_params = sum(p.numel() for p in unet.parameters())
    objective = LinearDPO(
        LinearDPOConfig(loss="linear", beta=100.0, eta=1e-3, reference="ema", ema_decay=0.99),
        unet,
        schedule=DDPM(),
    )
    data = RandomPairs(4 * args.batch, cfg["sample_size"], cfg["cross_attention_dim"])
    train = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        lr=5e-6,
        device=args.device,
        mixed_precision=args.mixed_precision,
        log_every=1,
    )
    cuda = args.device.startswith("cuda")
    stamps: list[float] = []

    def clock(step, metrics):
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(objective, unet, data, train, tmp, callbacks=[clock])
    step_s = [b - a for a, b in zip(stamps[2:], stamps[3:])]  # steps 4.. (after warm-up)
    record = {
        "what": "Linear-DPO steps, SD1.5-sized UNet (random init), EMA reference (fp32)",
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "machine": machine_info(),
        "unet_params_m": round(n_params / 1e6, 1),
        "tiny": args.tiny,
        "pairs_per_step": args.batch,
        "resolution_px": 8 * cfg["sample_size"],
        "mixed_precision": args.mixed_precision,
        "gradient_checkpointing": not args.no_checkpointing,
        "steps_timed": len(step_s),
        "step_s_median": statistics.median(step_s) if step_s else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "final_metrics": {k: round(v, 6) for k, v in result.metrics.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
