import torch

from diffkit.attention import RoPeSLRConfig, RoPeSLRParams
from diffkit.attention.profiler import amdahl, analytic_flops, profile_attention


def test_analytic_flops_match_the_spec_worked_numbers():
    # Wan2.1-1.3B 480p: L = 32,760, d = 128, b = 64, r = 64, rho = 0.1 -> R ~ 9.4 (spec b.6)
    n = -(-32760 // 64)
    fl = analytic_flops(32760, 128, -(-n // 10), 64, 64)
    assert 9.0 < fl["reduction"] < 9.8
    assert fl["dense"] == 4 * 32760**2 * 128


def test_profile_cross_checks_flop_counter_and_reports_everything():
    g = torch.Generator().manual_seed(0)
    q, k, v, qp, kp = (torch.randn(1, 2, 512, 16, generator=g) for _ in range(5))
    cfg = RoPeSLRConfig(density=0.25, rank=12, backend="reference")
    prof = profile_attention(q, k, v, cfg, RoPeSLRParams(cfg, 2, 16), qp, kp, (2, 16, 16), reps=1)
    counted, analytic = prof.flops_counted_ropeslr, prof.flops_analytic["total"]
    assert abs(counted - analytic) / analytic < 0.1
    assert (
        abs(prof.flops_counted_dense - prof.flops_analytic["dense"]) / prof.flops_analytic["dense"]
        < 0.01
    )
    assert prof.achieved_density == 0.25 and 0 < prof.mass_recall <= 1
    assert prof.ms_spike > 0 and prof.ms_background > 0 and prof.rel_error > 0


def test_amdahl_bound():
    assert abs(amdahl(0.74, 10.0) - 1 / (0.26 + 0.074)) < 1e-12
    assert amdahl(0.0, 10.0) == 1.0
