"""S2: outlier-aware adaptive dual scale (Q-ARVD, arXiv 2605.21072; reference code
``utils/outlier_adaptive_dual_scale.py``).

Detection is data-free, on the weight's input-channel column norms n_j = ||W[:, j]||_2:

    m = median(n),  MAD = median|n_j - m|,  z_j = 0.6745 (n_j - m) / MAD,
    outlier  <=>  z_j > 3.5  and  n_j > 1.2 m,

the count is rounded up to a multiple of 32 (hardware alignment) and capped at K/2, and the outlier
set is that many columns of largest norm. The IQR alternative uses the threshold
max(Q3 + 1.5 IQR, 1.2 m). A dual-scale layer then computes
Y = Q(X_O) Q(W_O)^T + Q(X_N) Q(W_N)^T + b with separate scales per group.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Literal

import torch

Rule = Literal["mad_zscore", "iqr"]


def outlier_columns(
    weight: torch.Tensor,
    *,
    rule: Rule = "mad_zscore",
    z_threshold: float = 3.5,
    ratio: float = 1.2,
    multiple: int = 32,
) -> torch.Tensor:
    """Indices (sorted by decreasing norm) of the outlier input columns of an (N, K) weight."""
    norms = weight.detach().float().norm(dim=0)
    K = norms.numel()
    m = norms.median()
    if rule == "mad_zscore":
        mad = (norms - m).abs().median()
        if mad < 1e-8:
            return torch.empty(0, dtype=torch.long)
        z = 0.6745 * (norms - m) / mad
        hit = (z > z_threshold) & (norms > ratio * m)
    elif rule == "iqr":
        q1, q3 = torch.quantile(norms, torch.tensor([0.25, 0.75]))
        hit = norms > max(float(q3 + 1.5 * (q3 - q1)), float(ratio * m))
    else:
        raise ValueError(f"rule={rule!r} is not supported; use 'mad_zscore' or 'iqr'")
    c = int(hit.sum())
    if c == 0:
        return torch.empty(0, dtype=torch.long)
    if multiple > 1:
        c = math.ceil(c / multiple) * multiple
    c = min(c, K // 2)
    return torch.argsort(norms, descending=True)[:c]


def layer_type(name: str) -> str:
    """Coarse layer type for the S2 report, e.g. 'self_attn.q', 'cross_attn.o', 'ffn.0'."""
    parts = re.sub(r"(^|\.)blocks\.\d+", "", name).strip(".")
    return parts or name


def layer_depth(name: str) -> int | None:
    m = re.search(r"blocks\.(\d+)\.", name + ".")
    return int(m.group(1)) if m else None


def s2_report(counts: dict[str, int], sizes: dict[str, int]) -> dict:
    """Where S2 fires: by layer type and by depth (fraction of layers, mean outlier columns)."""
    by_type: dict[str, list] = defaultdict(list)
    by_depth: dict[int, list] = defaultdict(list)
    for name, c in counts.items():
        by_type[layer_type(name)].append(c)
        d = layer_depth(name)
        if d is not None:
            by_depth[d].append(c)

    def summary(vals):
        return {
            "layers": len(vals),
            "fired": sum(v > 0 for v in vals),
            "mean_outlier_cols": sum(vals) / len(vals),
        }

    return {
        "by_type": {k: summary(v) for k, v in sorted(by_type.items())},
        "by_depth": {str(k): summary(v) for k, v in sorted(by_depth.items())},
        "per_layer": {k: {"outlier_cols": counts[k], "in_features": sizes[k]} for k in counts},
    }
