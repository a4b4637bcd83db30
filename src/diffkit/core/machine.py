"""What machine a number was measured on, and which dtype is the fast, safe one there.

The CPUs this project meets differ (``shared/design/MACHINE.md`` section 0): on an AVX2-only CPU a
2048² bf16 matmul is ~60x *slower* than fp32 and ``torch._int_mm`` ~90x slower; on an AVX-512 CPU
with AMX tiles bf16 is ~5x *faster* than fp32 and int8 GEMMs are fast. So dtypes are chosen at run
time from the capability (:func:`fast_dtype`), never from a constant, and every results file records
the machine (:func:`machine_info`, also printed by ``diffkit env``).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

import torch

# The CPU flags that decide which kernels are fast (as /proc/cpuinfo spells them).
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The relevant CPU flags of this machine (empty where ``/proc/cpuinfo`` is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return frozenset(fl for fl in RELEVANT_FLAGS if fl in have)
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name, or the architecture where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kind(flags: frozenset[str] | set[str] | None = None) -> str:
    """A short name for the CPU's vector kind: ``"AVX-512+AMX"``, ``"AVX-512"``, ``"AVX2"`` or the
    architecture. Figures in README tables carry this name."""
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags or "amx_int8" in flags:
        return "AVX-512+AMX"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags:
        return "AVX2"
    return platform.machine()


def cpu_has_fast_bf16(flags: frozenset[str] | set[str] | None = None) -> bool:
    """bf16 matmuls beat fp32 here (AMX tiles or AVX-512-BF16); on AVX2 they are ~60x slower."""
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_bf16", "avx512_bf16"} & set(flags))


def cpu_has_fast_int8(flags: frozenset[str] | set[str] | None = None) -> bool:
    """int8 GEMMs (``torch._int_mm``, oneDNN) beat fp32 here (AMX-INT8 or VNNI)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"amx_int8", "avx512_vnni"} & set(flags))


def fast_dtype(device: str | torch.device = "cpu") -> torch.dtype:
    """The fastest safe dtype a user would pick for inference on ``device``.

    bf16 on CUDA (where the GPU supports it) and on CPUs with AMX or AVX-512-BF16; fp32 otherwise
    (AVX2-only CPUs, MPS, unknown devices). Benchmarks measure their dense or unquantized baseline in
    this dtype as well as in fp32, so no speedup is claimed against a baseline nobody would use.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """The record every benchmark writes into its results (and ``diffkit env`` prints)."""
    cuda = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        cuda = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
        }
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "cpu_kind": cpu_kind(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": sorted(cpu_flags()),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "fast_dtype_cpu": str(fast_dtype("cpu")).removeprefix("torch."),
        "cuda_device": cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "diffkit": _version("diffkit"),
        "loadavg": load,
    }


def machine_line(info: dict | None = None) -> str:
    """One line naming the machine, for the head of a results table."""
    i = machine_info() if info is None else info
    gpu = f", GPU {i['cuda_device']['name']}" if i.get("cuda_device") else ", no GPU"
    return (
        f"{i['cpu_kind']} CPU ({i['cpu_model']}, torch capability {i['cpu_capability']}), "
        f"{i['cores']} cores, {i['torch_threads']} torch threads{gpu}; torch {i['torch']}"
    )
