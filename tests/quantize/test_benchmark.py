"""The quantize benchmark's statistics and report (benchmarks/quantize.py): 95 % t-intervals over
calibration seeds, the accuracy gap to FP and the determinism line."""

from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "quantize.py"
_spec = importlib.util.spec_from_file_location("_bench_quantize", BENCH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_ci95_is_the_t_interval_of_the_mean():
    vals = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, half = bench.ci95(vals)
    assert mean == 3.0
    assert half == pytest.approx(2.776 * statistics.stdev(vals) / 5**0.5)
    assert bench.ci95([0.5]) == (0.5, 0.0)


def _row(acc, acc_fp):
    n = len(acc)
    return {
        "video_mse": [1e-3] * n, "chunk0_mse": [1e-4] * n, "last_chunk_mse": [2e-4] * n,
        "psnr": [30.0] * n, "frechet": [0.1] * n, "digit_acc": acc, "digit_acc_fp": acc_fp,
        "chunk_mse": [[1e-4, 2e-4]] * n, "bytes_ratio": 0.15,
    }  # fmt: skip


def test_markdown_reports_intervals_the_gap_to_fp_and_determinism():
    r = {
        "device": "CPU", "loadavg": [0, 0, 0], "reduced": "test",
        "methods": {"W4A8": {"RTN": _row([0.8, 0.9], [0.9, 0.9]),
                             "+S1+S2 (Q-ARVD)": _row([0.9, 0.9], [0.9, 0.9])}},
        "determinism": {"method": "W4A8 +S1+S2 (Q-ARVD)", "seed": 0,
                        "video_mse": [1e-3, 1e-3], "identical": True},
    }  # fmt: skip
    md = bench.markdown(r)
    rtn = next(line for line in md.splitlines() if line.startswith("| RTN "))
    assert "-0.050 ± 0.635" in rtn  # mean gap -0.05, t(1) 12.706 * 0.0707 / sqrt(2)
    assert "| 2.00 ± 0.00 |" in rtn  # last-chunk / chunk-0 MSE
    assert "FP model's per-frame digit accuracy on the same rollouts: 0.900" in md
    assert "(identical)" in md
