"""Multi-bandwidth drift loss (Drifting Models, Deng et al. 2026, arXiv 2602.04770), as used by FPD.

For generated features x (stop-grad copies act as negatives y-) and positives y+, the drift field
is the anti-symmetric mean-shift difference (Drifting eq. 7 / Alg. 2)::

    V(x) = sum_j W+_ij y+_j - sum_k W-_ik y-_k - (sum W+ - sum W-) x,
    A = sqrt(softmax_targets(-d/tau) * softmax_generated(-d/tau))    (both-axis normalisation)
    W+ = A+ * rowsum(A-),   W- = A- * rowsum(A+)

with the Laplacian kernel on plain L2 distances d, the self-pair (x_i as its own negative)
excluded. Swapping positives and negatives negates V; V = 0 when both come from one distribution.

Normalisation (Drifting App. A.6): distances are divided by their stop-grad weighted batch mean S
(equivalently features are scaled to mean distance sqrt(C)), and for each bandwidth tau in
(0.02, 0.05, 0.2) the field is rescaled to unit RMS before summing. The loss is
MSE(x~, sg(x~ + sum_tau V~_tau)) on scaled features, so its value stays ~ number of bandwidths;
monitor the *raw* drift norms instead (returned as diagnostics).

Everything is batched over leading dims ``(..., N, C)``: one drift problem per group (condition)
and per feature location, no Python loop over samples; computed in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_MASK_DIST = 1e4  # added to normalised distances of excluded pairs (self, padding)


@dataclass(frozen=True, kw_only=True)
class DriftConfig:
    """Settings of :class:`DriftLoss`.

    Attributes:
        bandwidths: kernel temperatures tau on normalised distances; one unit-RMS field per tau,
            summed (Drifting uses (0.02, 0.05, 0.2)).
        normalize_features: divide distances/features by the stop-grad mean distance S (App. A.6).
        normalize_drift: rescale each tau's field to unit RMS before summing.
        uncond_weight: kernel weight of extra unconditional negatives (CFG-style, Drifting sec. 3.5;
            (alpha - 1)(N - 1)/N_unc in their notation); 0 disables them.
    """

    bandwidths: tuple[float, ...] = (0.02, 0.05, 0.2)
    normalize_features: bool = True
    normalize_drift: bool = True
    uncond_weight: float = 0.0

    def __post_init__(self) -> None:
        if not self.bandwidths or any(t <= 0 for t in self.bandwidths):
            raise ValueError(f"DriftConfig.bandwidths must be positive, got {self.bandwidths}")
        if self.uncond_weight < 0:
            raise ValueError(f"DriftConfig.uncond_weight must be >= 0, got {self.uncond_weight}")


def drift_field(
    x: torch.Tensor,
    pos: torch.Tensor,
    neg: torch.Tensor,
    tau: float,
    *,
    pos_weight: torch.Tensor | None = None,
    neg_weight: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    exclude_pos: torch.Tensor | None = None,
    x_valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw drift V (..., N, C) at ``x`` from positives (..., P, C) and negatives (..., M, C).

    Distances are used as given (normalise beforehand). ``exclude`` (..., N, M) bool removes
    (x_i, neg_k) pairs (the self-pair when the negatives are x itself); ``exclude_pos`` (..., N, P)
    removes (x_i, pos_j) pairs (a positive derived from x_i itself, e.g. its own refinement);
    ``pos_weight`` /
    ``neg_weight`` (..., P) / (..., M) weight targets (0 = padding); ``x_valid`` (..., N) marks real
    generated rows for the softmax over generated samples. Returns (V, row-kernel entropy (..., N)).
    """
    P = pos.shape[-2]
    targets = torch.cat([pos, neg], -2)  # (..., P+M, C)
    d = torch.cdist(x, targets)  # (..., N, P+M)
    w = torch.cat(
        [
            pos_weight if pos_weight is not None else x.new_ones(pos.shape[:-1]),
            neg_weight if neg_weight is not None else x.new_ones(neg.shape[:-1]),
        ],
        -1,
    )
    penalty = (w <= 0).float()[..., None, :] * _MASK_DIST
    if exclude is not None or exclude_pos is not None:
        ex_p = torch.zeros_like(d[..., :P]) if exclude_pos is None else exclude_pos.float()
        ex_n = torch.zeros_like(d[..., P:]) if exclude is None else exclude.float()
        penalty = penalty + torch.cat(
            [ex_p.expand_as(d[..., :P]), ex_n.expand_as(d[..., P:])], -1
        ) * (_MASK_DIST)
    if x_valid is not None:
        penalty = penalty + (~x_valid).float()[..., :, None] * _MASK_DIST
    logits = -(d + penalty) / tau
    a_row = torch.softmax(logits, -1)  # over targets
    a_col = torch.softmax(logits, -2)  # over generated samples
    a = torch.sqrt((a_row * a_col).clamp_min(1e-12)) * w[..., None, :]
    a = torch.where(penalty > 0, torch.zeros_like(a), a)
    a_pos, a_neg = a[..., :P], a[..., P:]
    w_pos = a_pos * a_neg.sum(-1, keepdim=True)
    w_neg = a_neg * a_pos.sum(-1, keepdim=True)
    v = w_pos @ pos - w_neg @ neg - (w_pos.sum(-1) - w_neg.sum(-1))[..., None] * x
    ent = -(a_row * a_row.clamp_min(1e-30).log()).sum(-1) / math.log(max(targets.shape[-2], 2))
    if x_valid is not None:
        v = v * x_valid[..., None]
    return v, ent


def drift_targets(
    x: torch.Tensor,
    pos: torch.Tensor,
    *,
    taus: tuple[float, ...] = (0.02, 0.05, 0.2),
    neg: torch.Tensor | None = None,
    neg_weight: float | torch.Tensor = 1.0,
    x_valid: torch.Tensor | None = None,
    pos_valid: torch.Tensor | None = None,
    exclude_pos: torch.Tensor | None = None,
    exclude_neg: torch.Tensor | None = None,
    normalize_features: bool = True,
    normalize_drift: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Normalised features and their frozen drift targets for one feature type.

    The generated samples x (..., N, C) are their own negatives (self-pair excluded); ``neg``
    (..., U, C) adds extra negatives (e.g. unconditional samples for CFG) with ``neg_weight``;
    ``exclude_pos`` (..., N, P) bool drops (x_i, pos_j) pairs (x_i's own refinement) and
    ``exclude_neg`` (..., N, U) (x_i, neg_u) pairs of the extra negatives.
    Returns (scale S, target = sg(x/S + sum_tau V~_tau) in scaled units, diagnostics).
    """
    xs = x.detach().float()
    pos = pos.detach().float()
    N = xs.shape[-2]
    C = xs.shape[-1]
    lead = xs.shape[:-2]
    dev = xs.device
    xv = torch.ones(*lead, N, dtype=torch.bool, device=dev) if x_valid is None else x_valid
    pv = (
        torch.ones(pos.shape[:-1], dtype=torch.bool, device=dev) if pos_valid is None else pos_valid
    )
    if int(xv.sum(-1).min()) < 2:
        raise ValueError(
            "drift is undefined for a group with fewer than 2 generated samples (the self-pair is "
            "excluded, so a single sample has no negatives); use >= 2 samples per condition"
        )
    negs = [xs]
    nw = [xv.float()]
    if neg is not None:
        neg = neg.detach().float()
        negs.append(neg)
        nw.append(torch.as_tensor(neg_weight, dtype=torch.float32).expand(neg.shape[:-1]))
    neg_all = torch.cat(negs, -2)
    neg_w = torch.cat(nw, -1)
    pos_w = pv.float()
    eye = torch.eye(N, dtype=torch.bool, device=dev).expand(*lead, N, N)
    extra = torch.zeros(*lead, N, neg_all.shape[-2] - N, dtype=torch.bool, device=dev)
    if exclude_neg is not None:
        extra = extra | exclude_neg
    exclude = torch.cat([eye, extra], -1)
    with torch.no_grad():
        if normalize_features:
            d = torch.cdist(xs, torch.cat([pos, neg_all], -2))
            keep_pos = torch.ones(*lead, N, pos.shape[-2], dtype=torch.bool, device=dev)
            if exclude_pos is not None:
                keep_pos = keep_pos & ~exclude_pos
            keep = torch.cat([keep_pos, ~exclude], -1)
            wt = keep * xv[..., :, None] * torch.cat([pos_w, neg_w], -1)[..., None, :]
            scale = ((d * wt).sum() / wt.sum().clamp_min(1e-12)).clamp_min(1e-6) / math.sqrt(C)
        else:
            scale = torch.ones((), device=dev)
        x_n, pos_n, neg_n = xs / scale, pos / scale, neg_all / scale
        total = torch.zeros_like(x_n)
        diag: dict[str, torch.Tensor] = {"scale": scale}
        n_valid = xv.sum().clamp_min(1)
        for tau in taus:
            v, ent = drift_field(
                x_n, pos_n, neg_n, tau * math.sqrt(C), pos_weight=pos_w, neg_weight=neg_w,
                exclude=exclude, exclude_pos=exclude_pos, x_valid=xv,
            )  # fmt: skip
            ms = v.pow(2).sum() / (n_valid * C)
            diag[f"drift_norm_tau{tau:g}"] = ms.sqrt()
            diag[f"kernel_entropy_tau{tau:g}"] = (ent * xv).sum() / n_valid
            total = total + (v / ms.sqrt().clamp_min(1e-8) if normalize_drift else v)
        target = x_n + total
    return scale, target, diag


def group_layout(groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (G, Nmax) of the samples of each distinct group id and its validity mask (G, Nmax).

    Vectorised (a stable sort); groups may have different sizes (padding is marked invalid).
    """
    groups = groups.flatten()
    uniq, inverse, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    order = torch.sort(inverse, stable=True).indices
    G, nmax = len(uniq), int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(groups)) - starts[inverse[order]]
    index = torch.zeros(G, nmax, dtype=torch.long)
    valid = torch.zeros(G, nmax, dtype=torch.bool)
    index[inverse[order], rank] = order
    valid[inverse[order], rank] = True
    return index, valid


class DriftLoss:
    """Sum over feature types of the normalised multi-bandwidth drift MSE, grouped by condition.

    ``loss(gen, pos, groups)`` takes dicts of features {name: (B, C) or (B, S, C)} (S locations,
    one drift problem per location, normalisation shared across locations), the student's
    features ``gen`` (with grad), positives ``pos`` (detached; (Bp, ...) with ``pos_groups``), and
    optional unconditional negatives ``uncond``. ``pos_source`` (Bp,) gives, for each positive, the
    index into ``gen`` of the sample it was derived from (-1: independent); that pair is left out
    of the estimate (like the self-pair among the negatives); ``uncond_source`` (U,) does the same
    for the unconditional negatives, and ``uncond_weight`` overrides the config's kernel weight of
    them for this call. Returns (loss, diagnostics).
    """

    def __init__(self, config: DriftConfig | None = None):
        self.config = config or DriftConfig()

    @staticmethod
    def _grouped(f: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        f = f if f.dim() == 3 else f[:, None]  # (B, S, C)
        return f[index].transpose(1, 2).transpose(0, 1)  # (S, G, N, C)

    def __call__(
        self,
        gen: dict[str, torch.Tensor],
        pos: dict[str, torch.Tensor],
        groups: torch.Tensor,
        *,
        pos_groups: torch.Tensor | None = None,
        pos_source: torch.Tensor | None = None,
        uncond: dict[str, torch.Tensor] | None = None,
        uncond_source: torch.Tensor | None = None,
        uncond_weight: float | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        w_unc = cfg.uncond_weight if uncond_weight is None else uncond_weight
        pos_groups = groups if pos_groups is None else pos_groups
        if set(gen) != set(pos):
            raise ValueError(f"feature keys differ: gen {sorted(gen)} vs pos {sorted(pos)}")
        uniq = torch.unique(groups)
        missing = set(uniq.tolist()) - set(torch.unique(pos_groups).tolist())
        if missing:
            raise ValueError(f"groups {sorted(missing)} have generated samples but no positives")
        dev = gen[next(iter(gen))].device  # the layouts are built on the CPU, then moved
        gi, gv = group_layout(groups.cpu())
        keep = torch.isin(pos_groups.cpu(), uniq.cpu())
        pi, pv = group_layout(pos_groups.cpu()[keep])
        exclude_pos = None
        if pos_source is not None:  # (Bp,) index of the generated sample a positive came from
            src = pos_source.cpu()[keep][pi]  # (G, Pmax)
            exclude_pos = (src[:, None, :] == gi[:, :, None]) & pv[:, None, :] & gv[:, :, None]
            exclude_pos = exclude_pos.to(dev)
        gi, gv, pi, pv, keep = gi.to(dev), gv.to(dev), pi.to(dev), pv.to(dev), keep.to(dev)
        total = gen[next(iter(gen))].new_zeros(())
        diags: dict[str, float] = {}
        for name in gen:
            x = self._grouped(gen[name].float(), gi)  # (S, G, N, C)
            y = self._grouped(pos[name].detach().float()[keep], pi)
            neg = exclude_neg = None
            if uncond is not None and w_unc > 0:
                u = uncond[name].detach().float()
                u = u if u.dim() == 3 else u[:, None]
                neg = u.transpose(0, 1)[:, None].expand(-1, x.shape[1], -1, -1)
                if uncond_source is not None:  # (G, N, U): x_i vs the extra negative from x_i
                    us = uncond_source.to(dev)
                    exclude_neg = (us[None, None, :] == gi[:, :, None]) & gv[..., None]
            xv = gv.expand(x.shape[0], -1, -1)
            scale, target, d = drift_targets(
                x, y, taus=cfg.bandwidths, neg=neg, neg_weight=w_unc, x_valid=xv,
                pos_valid=pv.expand(y.shape[0], -1, -1), exclude_pos=exclude_pos,
                exclude_neg=exclude_neg,
                normalize_features=cfg.normalize_features, normalize_drift=cfg.normalize_drift,
            )  # fmt: skip
            sq = (x / scale - target).pow(2).sum(-1)
            total = total + (sq * xv).sum() / (xv.sum() * x.shape[-1])
            for k, v in d.items():
                diags[f"{name}/{k}"] = float(v)
        return total, diags
