"""S1: known sensitivities are recovered; exponential fit; only_chunks switch."""

from __future__ import annotations

import math

import torch
from torch import nn

from diffkit.quantize import (
    RTNConfig,
    chunk,
    exponential_weights,
    fit_exponential,
    measure_chunk_sensitivity,
    only_chunks,
    quantize_,
)

GAINS = [4.0, 2.0, 1.0, 0.5]


class Toy(nn.Module):
    """A synthetic 'AR model': chunk k's output is gain_k * f(x); quantization error scales with
    gain_k^2, so the true sensitivities are s_k = gain_k^2 / sum gain^2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.Sequential(nn.Linear(16, 16))
        self.x = torch.randn(8, 16)

    def run(self, only=None, start_chunk=0, prefix=None):
        outs = []
        with only_chunks(only):
            for k, g in enumerate(GAINS):
                if k < start_chunk:
                    outs.append(prefix[:, k : k + 1])
                    continue
                with chunk(k):
                    outs.append(g * self.blocks(self.x)[:, None])
        return torch.cat(outs, 1)


def test_known_sensitivities_are_recovered_with_prefix_reuse():
    toy = Toy()
    quantize_(toy, RTNConfig(w_bits=3, a_bits=4))
    toy.run()
    quantize_(toy, RTNConfig(w_bits=3, a_bits=4, step="convert"), keep_fp=True)
    res = measure_chunk_sensitivity(lambda only, **kw: toy.run(only, **kw), len(GAINS))
    truth = [g**2 / sum(x**2 for x in GAINS) for g in GAINS]
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(res["s"], truth)), res["s"]
    a, r = res["fit"]
    assert math.isclose(r, 0.25, rel_tol=1e-3)
    assert math.isclose(sum(res["weights"]) / len(GAINS), 1.0, rel_tol=1e-6)
    no_reuse = measure_chunk_sensitivity(
        lambda only, **kw: toy.run(only, **kw), len(GAINS), reuse_prefix=False
    )
    assert all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(res["s"], no_reuse["s"]))


def test_only_chunks_leaves_other_chunks_full_precision():
    toy = Toy()
    fp = toy.run()
    quantize_(toy, RTNConfig(w_bits=3, a_bits=4))
    toy.run()
    quantize_(toy, RTNConfig(w_bits=3, a_bits=4, step="convert"), keep_fp=True)
    out = toy.run(only=[2])
    assert torch.equal(out[:, [0, 1, 3]], fp[:, [0, 1, 3]])
    assert not torch.equal(out[:, 2], fp[:, 2])


def test_fit_exponential_recovers_parameters():
    s = [0.44 * 0.55**k for k in range(7)]
    a, r = fit_exponential(s)
    assert math.isclose(a, 0.44, rel_tol=1e-9) and math.isclose(r, 0.55, rel_tol=1e-9)
    w = exponential_weights(7, 0.55)
    assert math.isclose(sum(w), 1.0) and w[0] > w[-1]
