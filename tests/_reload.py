"""Helper for save/load tests: bit-exact comparisons need the reloaded weights in aligned memory."""

from __future__ import annotations

import torch


def realign_(model: torch.nn.Module) -> torch.nn.Module:
    """Copy every parameter and buffer into freshly allocated (64-byte aligned) memory.

    diffusers' ``from_pretrained`` may hand out tensors that view a memory-mapped safetensors file
    at arbitrary offsets; on some CPUs (seen on AVX-512 AMD EPYC) the BLAS kernels then round
    differently (1e-6), with identical values. Copying the tensors makes a reloaded model compute
    bit-identically to the one that was saved, so a round-trip test can stay exact.
    """
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.data = t.data.clone()
    return model
