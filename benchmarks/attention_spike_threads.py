"""How the gather backend's spike uses 2 CPU threads (issue 17 item 4): a one-off measurement.

The spike alone (``block_sparse_gathered``, density 0.1, block 128, 2 heads, random selection)
timed four ways on the same tensors, wall clock, median of 5 after a warm-up:

* ``default_2t``: the shipped default with 2 torch threads (as many query blocks per kernel call
  as fit in ``CHUNK_BYTES``);
* ``chunk4_2t``: 4 query blocks per call, 2 torch threads;
* ``heads_2x1t``: the two heads in two Python threads, one query block per call, torch at one
  intra-op thread (the kernels release the GIL);
* ``one_thread``: one thread, one block per call (the 1-thread default);

against SDPA with 2 threads in the same dtype. Writes ``results/attention_spike_threads.md``.

    python benchmarks/attention_spike_threads.py
"""

# ruff: noqa: B023  (the timing lambdas run inside the loop iteration that defines them)
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

from diffkit.attention.gathered import block_sparse_gathered
from diffkit.core.machine import machine_line

RESULTS = Path(__file__).parent / "results"


def _median_ms(f, reps: int = 5) -> float:
    f()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[reps // 2] * 1e3


def main() -> None:
    torch.manual_seed(0)
    pool = ThreadPoolExecutor(2)
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        for length, d in ((16384, 64), (16384, 128), (32768, 64)):
            block, heads = 128, 2
            n = length // block
            kk = max(1, round(0.1 * n))
            q = torch.randn(1, heads, length, d, dtype=dt)
            k, v = torch.randn_like(q), torch.randn_like(q)
            idx = torch.stack([torch.randperm(n)[:kk] for _ in range(heads * n)])
            idx = idx.view(1, heads, n, kk)
            valid = torch.ones_like(idx, dtype=torch.bool)

            def per_head():
                torch.set_num_threads(1)
                futs = [
                    pool.submit(block_sparse_gathered, q[:, h : h + 1], k[:, h : h + 1],
                                v[:, h : h + 1], idx[:, h : h + 1], valid[:, h : h + 1], block,
                                None, 1)
                    for h in range(heads)
                ]  # fmt: skip
                out = [f.result() for f in futs]
                torch.set_num_threads(2)
                return out

            torch.set_num_threads(2)
            r = {
                "default_2t": _median_ms(lambda: block_sparse_gathered(q, k, v, idx, valid, block)),
                "chunk4_2t": _median_ms(
                    lambda: block_sparse_gathered(q, k, v, idx, valid, block, chunk=4)
                ),
                "heads_2x1t": _median_ms(per_head),
            }
            torch.set_num_threads(1)
            r["one_thread"] = _median_ms(
                lambda: block_sparse_gathered(q, k, v, idx, valid, block, chunk=1)
            )
            torch.set_num_threads(2)
            sdpa = _median_ms(lambda: F.scaled_dot_product_attention(q, k, v), 3)
            rows.append((str(dt).removeprefix("torch."), length, d, r, sdpa))
            print(rows[-1], flush=True)
    lines = [
        "# Gather-backend spike with 2 CPU threads (issue 17 item 4)", "",
        f"Machine: {machine_line()}. Spike only (no selection, background or merge), density 0.1, "
        "block 128, 2 heads, wall clock, median of 5; speedup = SDPA (2 threads, same dtype) / "
        "method. Command: `python benchmarks/attention_spike_threads.py`.", "",
        "| dtype | L | d | SDPA 2t ms | default 2t | 4 blocks/call 2t | 2 Python threads x 1 | 1 thread |",
        "|---|---:|---:|---:|---|---|---|---|",
    ]  # fmt: skip
    for dt, length, d, r, sdpa in rows:
        cells = " | ".join(
            f"{r[m]:.1f} ms ({sdpa / r[m]:.2f}x)"
            for m in ("default_2t", "chunk4_2t", "heads_2x1t", "one_thread")
        )
        lines.append(f"| {dt} | {length} | {d} | {sdpa:.1f} | {cells} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "attention_spike_threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
