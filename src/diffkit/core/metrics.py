"""Sample-quality metrics on given feature sets, plus image fidelity metrics.

* FID (Heusel et al. 2017, arXiv 1706.08500): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
  The trace of the matrix square root is computed as the sum of square roots of the eigenvalues of
  S1^(1/2) S2 S1^(1/2) (symmetric PSD), in float64.
* KID (Binkowski et al. 2018, arXiv 1801.01401): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets.
* Precision / recall / density / coverage (Naeem et al. 2020, arXiv 2002.09797) with k-NN balls.
* PSNR and SSIM (Wang et al. 2004; 11x11 Gaussian window, sigma 1.5).

All functions take features as (N, D) tensors or arrays; the evaluation network that produces them
lives in :mod:`diffkit.models` (``digit-classifier``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def _check_features(a: torch.Tensor, b: torch.Tensor, name: str, min_n: int = 2) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name}: features must be (N, D) with equal D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.shape[0] < min_n or b.shape[0] < min_n:
        raise ValueError(
            f"{name}: need at least {min_n} samples per set, got {a.shape[0]} and {b.shape[0]}"
        )


def frechet_distance(feats_a, feats_b) -> float:
    """FID between two feature sets (N, D) and (M, D)."""
    a, b = _f64(feats_a), _f64(feats_b)
    _check_features(a, b, "frechet_distance")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = torch.cov(a.T), torch.cov(b.T)
    ev1, evec1 = torch.linalg.eigh(s1)
    sqrt_s1 = evec1 @ torch.diag(ev1.clamp(min=0).sqrt()) @ evec1.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    tr_covmean = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    fid = (mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    return float(fid.clamp(min=0))


def kernel_inception_distance(
    feats_a, feats_b, num_subsets: int = 50, subset_size: int = 500, seed: int = 0
) -> tuple[float, float]:
    """KID: (mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets."""
    a, b = _f64(feats_a), _f64(feats_b)
    _check_features(a, b, "kernel_inception_distance")
    d = a.shape[1]
    m = min(subset_size, a.shape[0], b.shape[0])
    g = torch.Generator().manual_seed(seed)
    vals = []
    for _ in range(num_subsets):
        x = a[torch.randperm(a.shape[0], generator=g)[:m]]
        y = b[torch.randperm(b.shape[0], generator=g)[:m]]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
            + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        vals.append(float(mmd))
    t = torch.tensor(vals)
    return float(t.mean()), float(t.std()) if len(vals) > 1 else 0.0


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    d = torch.cdist(x, x)
    return d.kthvalue(k + 1, dim=1).values  # +1 skips the point itself


def prdc(real, fake, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (Naeem et al. 2020)."""
    r, f = _f64(real), _f64(fake)
    _check_features(r, f, "prdc", min_n=k + 1)
    r_rad, f_rad = _knn_radii(r, k), _knn_radii(f, k)
    d_rf = torch.cdist(r, f)  # (Nr, Nf)
    in_real_ball = d_rf < r_rad[:, None]
    precision = in_real_ball.any(0).double().mean()
    recall = (d_rf < f_rad[None, :]).any(1).double().mean()
    density = in_real_ball.double().sum(0).mean() / k
    coverage = (d_rf.min(1).values < r_rad).double().mean()
    return {
        "precision": float(precision),
        "recall": float(recall),
        "density": float(density),
        "coverage": float(coverage),
    }


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-sample PSNR in dB over all non-batch dims; ``data_range`` 2.0 for images in [-1, 1]."""
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(data_range**2 / mse.clamp(min=1e-20))


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-sample mean SSIM for (B, C, H, W) images (Gaussian window, valid padding)."""
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"ssim: need two (B, C, H, W) tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    C = x.shape[1]
    kernel = (g[:, None] * g[None, :]).expand(C, 1, window, window).contiguous()
    xd, yd = x.double(), y.double()

    def filt(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=C)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(xd), filt(yd)
    sxx = filt(xd * xd) - mx * mx
    syy = filt(yd * yd) - my * my
    sxy = filt(xd * yd) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def bootstrap_std(fn, feats_a, feats_b, n: int = 10, seed: int = 0) -> float:
    """Std of ``fn(a*, b*)`` over bootstrap resamples: the noise band of a distance."""
    a, b = _f64(feats_a), _f64(feats_b)
    g = torch.Generator().manual_seed(seed)
    vals = [
        fn(
            a[torch.randint(0, len(a), (len(a),), generator=g)],
            b[torch.randint(0, len(b), (len(b),), generator=g)],
        )
        for _ in range(n)
    ]
    return float(torch.tensor(vals).std())


__all__ = [
    "bootstrap_std",
    "frechet_distance",
    "kernel_inception_distance",
    "prdc",
    "psnr",
    "ssim",
]
