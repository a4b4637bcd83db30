"""Metrics against closed forms and independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffkit.core.metrics import (
    bootstrap_std,
    frechet_distance,
    kernel_inception_distance,
    prdc,
    psnr,
    ssim,
)


def test_fid_closed_form_gaussians():
    # FID between N(m1, s1^2 I) and N(m2, s2^2 I) in d dims = |m1-m2|^2 + d (s1 - s2)^2.
    g = torch.Generator().manual_seed(0)
    d, n = 4, 200_000
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64) + 1.0
    assert frechet_distance(a, b) == pytest.approx(d * 1.0 + d * 1.0, rel=0.02)


def test_fid_matches_scipy_sqrtm():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) @ rng.normal(size=(8, 8)) * 0.5
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_fid_zero_for_identical_sets_and_errors():
    x = torch.randn(100, 5)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))


def test_kid_unbiased_near_zero_same_distribution_and_positive_shift():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(600, 8, generator=g), torch.randn(600, 8, generator=g)
    same, _ = kernel_inception_distance(a, b, num_subsets=20, subset_size=300)
    shifted, _ = kernel_inception_distance(a, b + 1.0, num_subsets=20, subset_size=300)
    assert abs(same) < 0.01 and shifted > 0.1


def test_prdc_identical_and_disjoint():
    g = torch.Generator().manual_seed(2)
    r = torch.randn(300, 4, generator=g)
    same = prdc(r, r.clone(), k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(r, r + 100.0, k=5)
    assert (
        far["precision"] == 0.0
        and far["recall"] == 0.0
        and far["coverage"] == 0.0
        and far["density"] == 0.0
    )


def test_psnr_ssim_against_skimage():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(32, 32))
    y = np.clip(x + rng.normal(scale=0.1, size=x.shape), -1, 1)
    tx, ty = torch.tensor(x)[None, None], torch.tensor(y)[None, None]
    assert float(psnr(tx, ty)[0]) == pytest.approx(
        peak_signal_noise_ratio(x, y, data_range=2.0), rel=1e-6
    )
    ref = structural_similarity(
        x, y, data_range=2.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert float(ssim(tx, ty)[0]) == pytest.approx(ref, abs=2e-3)
    assert float(ssim(tx, tx)[0]) == pytest.approx(1.0)


def test_bootstrap_std_positive():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    assert bootstrap_std(frechet_distance, a, b, n=5) > 0
