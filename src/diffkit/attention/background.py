"""RoPeSLR's background path and merge (arXiv 2605.20659; spec b.3-b.4).

The paper's "RoPE dilemma": linear attention on post-RoPE q/k loses 3D RoPE's relative-position
structure. RoPeSLR instead uses a *head-wise low-rank* parameterisation of pre-RoPE (normed) q/k,
c = SiLU(q U^h), plus a learnable 3D *absolute* position embedding P(t, h, w) whose inner product
is a translation-invariant kernel:

    P_a(x) . P_a(x') = sum_m alpha_{a,m}^2 cos(omega_{a,m} (x - x'))      (fourier mode; Bochner)

so phi_q(i) . phi_k(j) = <c_i, c_j> + gamma<c_i, P_j> + gamma<P_i, c_j> + gamma^2 kappa(Delta_ij)
synthesises relative distance decay inside an O(L) path. The background covers only the
*complement* of the spike blocks (per-block states S_J = Phi_J^T V_J; S~_I = S - sum_{J in sel(I)}
S_J), so at density 1 it vanishes and RoPeSLR equals dense attention. Merge (RoLa-style):
o = rms(o_s) (o_s / rms(o_s) + g RMSNorm(phi_q S~)), g = sigmoid(w . q_h + b_h).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.sparse import gather_blocks
from diffkit.core.rope import split_3d

log = logging.getLogger(__name__)


def fourier_frequencies(num: int, max_len: int) -> torch.Tensor:
    """``num`` angular frequencies log-spaced from pi / (2 N_max) to pi / 2."""
    lo, hi = math.pi / (2 * max_len), math.pi / 2
    if num == 1:
        return torch.tensor([lo])
    return torch.logspace(math.log10(lo), math.log10(hi), num, dtype=torch.float64).float()


def fourier_ape_axis(
    coords: torch.Tensor, omega: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """P_a(x) = [alpha cos(omega x), alpha sin(omega x)]: coords (N,), omega (m,), alpha (H, m)
    -> (H, N, 2m). P(t, h, w) = [P_t ; P_h ; P_w] concatenates the three axes."""
    ang = coords[:, None].to(omega.dtype) * omega  # (N, m)
    al = alpha[:, None, :]  # (H, 1, m)
    return torch.cat([al * ang.cos(), al * ang.sin()], -1)


def fourier_ape(
    positions: torch.Tensor, omegas: list[torch.Tensor], alphas: list[torch.Tensor]
) -> torch.Tensor:
    """P(t, h, w) (H, L, r) at positions (L, 3); omegas[a] (m_a,), alphas[a] (H, m_a)."""
    return torch.cat(
        [fourier_ape_axis(positions[:, a], omegas[a], alphas[a]) for a in range(3)], -1
    )


def grid_positions_like(grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Integer (t, h, w) of every frame-major token of ``grid``, (L, 3) on ``device``."""
    axes = [torch.arange(g, device=device) for g in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).flatten(0, 2)


def feature_map(x: torch.Tensor, kind: str, inplace: bool = False) -> torch.Tensor:
    """SiLU or elu + 1 of the projected features; ``inplace`` overwrites ``x`` (used on a fresh
    projection outside autograd, which saves an (L, r) allocation per call)."""
    if kind == "silu":
        return F.silu(x, inplace=inplace)
    if kind == "elu1":
        return F.elu(x, inplace=inplace).add_(1) if inplace else F.elu(x) + 1
    raise ValueError(f"feature_map {kind!r} is not supported; use 'silu' or 'elu1'")


def _project(x: torch.Tensor, u: torch.Tensor, kind: str) -> torch.Tensor:
    """feature_map(x U): (B, H, L, d) @ (H, d, r), the map applied in place to the fresh product
    unless autograd records it."""
    c = x @ u.to(x.dtype)
    return feature_map(c, kind, inplace=not c.requires_grad)


def rms(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """sqrt(mean(x^2) + eps) over the last dim, (..., 1), in one reduction pass."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return (norm.square() / x.shape[-1] + eps).sqrt()


class RoPeSLRParams(nn.Module):
    """The new, learnable parameters of one attention layer (spec b.3-b.5).

    U_q, U_k (H or 1, d, r); APE (fourier: beta (H, r/2), optional omega; table: E_a); per-head
    pe_scale gamma (H,); gate w (H, d) zero-initialised and b (H,); log lambda (H,) only with
    merge="mass" (the gated merge has no lambda, and a parameter without a gradient would be
    counted as trainable and never change). About H (2 d r + r + d + 1) numbers per layer.
    """

    def __init__(self, config: RoPeSLRConfig, heads: int, head_dim: int) -> None:
        super().__init__()
        self.config, self.heads, self.head_dim = config, heads, head_dim
        r = config.rank_for(head_dim)
        try:
            self.axis_dims = split_3d(r)
        except ValueError as e:
            raise ValueError(f"RoPeSLR rank r={r} cannot be split over (t, h, w): {e}") from None
        self.rank = r
        hu = 1 if config.share_across_heads else heads
        self.u_q = nn.Parameter(torch.randn(hu, head_dim, r) / math.sqrt(head_dim))
        self.u_k = nn.Parameter(torch.randn(hu, head_dim, r) / math.sqrt(head_dim))
        self.pe_scale = nn.Parameter(torch.full((heads,), float(config.pe_scale_init)))
        self.gate_w = nn.Parameter(torch.zeros(heads, head_dim))
        self.gate_b = nn.Parameter(torch.full((heads,), float(config.gate_bias_init)))
        if config.merge == "mass":  # lambda is the mass merge's only: no dead parameter
            self.log_lambda = nn.Parameter(torch.zeros(heads))
        omegas, betas = [], []
        for dim_a, n_max in zip(self.axis_dims, config.ape_max_len):
            m = dim_a // 2
            om = fourier_frequencies(m, n_max)
            # alpha^2 proportional to omega^-2, normalised to sum 1/3 per axis: the kernel
            # kappa(Delta) then decreases monotonically over [0, N_max) at initialisation.
            a2 = (om[0] / om).pow(2) / (om[0] / om).pow(2).sum() / 3
            alpha = a2.sqrt()
            betas.append((torch.expm1(alpha).log()).expand(heads, m).clone())
            omegas.append(om)
        self.beta = nn.Parameter(torch.cat(betas, -1))
        log_om = torch.cat(omegas).log()
        if config.learn_freqs:
            self.log_omega = nn.Parameter(log_om)
        else:
            self.register_buffer("log_omega", log_om)
        self._splits = [d // 2 for d in self.axis_dims]
        if config.ape == "table":
            with torch.no_grad():
                om, al = self.log_omega.exp().split(self._splits), F.softplus(self.beta)
                for a, n_max in enumerate(config.ape_max_len):
                    lo = sum(self._splits[:a])
                    tab = fourier_ape_axis(
                        torch.arange(n_max), om[a], al[:, lo : lo + self._splits[a]]
                    )  # (H, N, r_a)
                    setattr(self, f"table_{'thw'[a]}", nn.Parameter(tab))
        self._warned = False

    # -- position embedding ------------------------------------------------------------------
    def axis_ape(self, axis: int, coords: torch.Tensor) -> torch.Tensor:
        """P_a(x) (H, N, r_a) of axis ``axis`` at integer coordinates ``coords`` (N,)."""
        if self.config.ape == "fourier":
            lo = sum(self._splits[:axis])
            om = self.log_omega[lo : lo + self._splits[axis]].exp()
            al = F.softplus(self.beta[:, lo : lo + self._splits[axis]])
            return fourier_ape_axis(coords, om, al)
        table = (self.table_t, self.table_h, self.table_w)[axis]
        n_max = table.shape[1]
        if int(coords.max()) >= n_max:
            if not self._warned:
                log.warning(
                    "RoPeSLR table APE: grid position %d on axis %s exceeds the table size %d; "
                    "positions are clamped (use ape='fourier' to extrapolate)",
                    int(coords.max()),
                    "thw"[axis],
                    n_max,
                )
                self._warned = True
            coords = coords.clamp(max=n_max - 1)
        return table[:, coords.to(table.device)]

    def ape(self, positions: torch.Tensor) -> torch.Tensor:
        """P(pos) (H, L, r) for integer positions (L, 3)."""
        return torch.cat([self.axis_ape(a, positions[:, a]) for a in range(3)], -1)

    # -- features ----------------------------------------------------------------------------
    def features(
        self, x: torch.Tensor, u: torch.Tensor, positions: torch.Tensor | None
    ) -> torch.Tensor:
        """phi(x) (B, H, L, r or 2r) from pre-RoPE x (B, H, L, d) at any integer positions."""
        cfg = self.config
        c = _project(x, u, cfg.feature_map)
        if cfg.ape == "none" or positions is None:
            return c
        p = self.ape(positions).to(x.dtype) * self.pe_scale.to(x.dtype)[:, None, None]
        p = p.unsqueeze(0).expand(x.shape[0], -1, -1, -1)
        return c + p if cfg.inject == "add" else torch.cat([c, p], -1)

    def grid_ape(
        self, grid: tuple[int, int, int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """gamma P(t, h, w) (H, L, r) over a frame-major (t, h, w) grid, in ``dtype``.

        Built as one concatenation of the three broadcast axis tables (H, N_a, r_a), so the
        (L, r) table costs one write pass; q's and k's features share it (same APE, same gamma).
        """
        gamma = self.pe_scale.to(dtype)[:, None, None]
        parts = []
        for a in range(3):
            tab = self.axis_ape(a, torch.arange(grid[a], device=device)).to(dtype) * gamma
            shape = [tab.shape[0], 1, 1, 1, tab.shape[-1]]
            shape[1 + a] = grid[a]
            parts.append(tab.view(shape).expand(tab.shape[0], *grid, tab.shape[-1]))
        return torch.cat(parts, -1).flatten(1, 3)

    def grid_features(
        self,
        x: torch.Tensor,
        u: torch.Tensor,
        grid: tuple[int, int, int],
        ape: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`features` of frame-major x over a (t, h, w) grid, the fast path.

        With inject="add" the APE is :meth:`grid_ape` added to c in one contiguous pass (each
        element gets exactly one addition, as in :meth:`features`); ``ape`` passes a table
        already built for this grid and dtype (q and k share one).
        """
        cfg = self.config
        if cfg.ape == "none" or cfg.inject == "concat":
            pos = grid_positions_like(grid, x.device) if cfg.ape != "none" else None
            return self.features(x, u, pos)
        c = _project(x, u, cfg.feature_map)
        if ape is None:
            ape = self.grid_ape(grid, x.dtype, x.device)
        return c + ape if c.requires_grad or ape.requires_grad else c.add_(ape)

    def gate(self, q_pre: torch.Tensor) -> torch.Tensor:
        """g (B, H, L, 1) = sigmoid(w_h . q + b_h)."""
        z = torch.einsum("bhld,hd->bhl", q_pre, self.gate_w.to(q_pre.dtype))
        return torch.sigmoid(z + self.gate_b.to(q_pre.dtype)[:, None])[..., None]


def block_states(
    phi_k: torch.Tensor, v: torch.Tensor, block: int, need_z: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-block S_J = Phi_J^T V_J (B, H, n, r, d) and z_J = sum_j phi_j (B, H, n, r)."""
    length = phi_k.shape[2]
    n = -(-length // block)
    pad = n * block - length
    if pad:
        phi_k, v = F.pad(phi_k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    pk = phi_k.unflatten(2, (n, block))
    vb = v.unflatten(2, (n, block))
    return pk.transpose(-1, -2) @ vb, pk.sum(3) if need_z else None


def complement_states(
    states: torch.Tensor, idx: torch.Tensor | None, valid: torch.Tensor | None
) -> torch.Tensor:
    """S~_I = sum_J S_J - sum_{J in sel(I)} S_J (B, H, n, ...); all keys when idx is None."""
    n = states.shape[2]
    total = states.sum(2, keepdim=True)
    if idx is None:
        return total.expand(-1, -1, n, *states.shape[3:])
    if n <= 1024:
        # Sum over the NON-selected blocks with one matmul (n^2 r d MACs): no cancellation, so
        # a full selection gives exactly 0 (the RMS norm downstream would amplify round-off).
        keep = torch.ones(*idx.shape[:-1], n, dtype=states.dtype, device=states.device)
        keep.scatter_(-1, idx, (~valid).to(states.dtype))
        return (keep @ states.flatten(3)).view(states.shape)
    extra = (1,) * (states.dim() - 3)
    sel = gather_blocks(states, idx) * valid.view(*valid.shape, *extra).to(states.dtype)
    out = total - sel.sum(3)
    full = (valid.sum(-1) == n).view(*valid.shape[:-1], *extra)
    return out.masked_fill(full, 0.0)


def background(
    phi_q: torch.Tensor,
    phi_k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor | None,
    valid: torch.Tensor | None,
    block: int,
    need_den: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Low-rank background over the complement: (N, Z) = (phi_q S~_I, phi_q . z~_I).

    N is (B, H, L, d); Z (B, H, L) only when ``need_den`` (the mass merge), else None.
    """
    length = phi_q.shape[2]
    n = -(-length // block)
    pad = n * block - length
    states, zs = block_states(phi_k, v, block, need_den)
    if need_den:  # z_J rides along as column d of S_J: one complement and one product for both
        states = torch.cat([states, zs[..., None]], -1)  # (B, H, n, r, d + 1)
    s_c = complement_states(states, idx, valid)
    pq = F.pad(phi_q, (0, 0, 0, pad)) if pad else phi_q
    out = (pq.unflatten(2, (n, block)) @ s_c).flatten(2, 3)
    out = out[:, :, :length] if pad else out
    if not need_den:
        return out, None
    return out[..., :-1], out[..., -1]


def merge_gated(
    o_s: torch.Tensor, num: torch.Tensor, gate: torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """o = rms(o_s) (o_s / rms(o_s) + g RMSNorm(N)) = o_s + (g rms(o_s) / rms(N)) N (spec b.4).

    The per-token scale is an (..., L, 1) vector, so the merge is one fused pass over (L, d);
    ``inplace`` writes it into ``o_s`` (the caller owns o_s and no gradient is needed).
    """
    scale = gate * rms(o_s) / rms(num)
    if inplace:
        return o_s.addcmul_(scale, num)
    return torch.addcmul(o_s, scale, num)


def merge_mass(
    o_s: torch.Tensor,
    lse: torch.Tensor,
    num: torch.Tensor,
    den: torch.Tensor,
    lam: torch.Tensor,
    inplace: bool = False,
) -> torch.Tensor:
    """o = (e^lse o_s + lambda N) / (e^lse + lambda Z) (b.4).

    lam (H,) > 0; Z is clamped at 0 (features are positive but the APE need not be). Written as
    o = (o_s + r N) / (1 + r Z) with r = lambda e^{-lse} per token, so only two passes touch
    (L, d): one multiply-add and one division; ``inplace`` writes them into ``o_s`` (the caller's
    own buffer, no gradient needed). Where r overflows (a spike with next to no mass against the
    background) the form stabilised by the running max is used instead; under torch.compile /
    torch.export always (a traced graph cannot branch on data; the compiler fuses it).
    """
    lam = lam.to(o_s.dtype)[:, None]
    den = den.clamp(min=0)
    if torch.compiler.is_compiling():  # no data-dependent branch in a traced graph
        return _merge_mass_stable(o_s, lse, num, den, lam)
    r = (lam * torch.exp(-lse)).to(o_s.dtype)
    if not bool(torch.isfinite(r).all()):
        return _merge_mass_stable(o_s, lse, num, den, lam)
    denom = torch.addcmul(torch.ones_like(r), r, den)
    out = o_s.addcmul_(r[..., None], num) if inplace else torch.addcmul(o_s, r[..., None], num)
    return out.div_(denom[..., None])


def _merge_mass_stable(o_s, lse, num, den, lam):
    """:func:`merge_mass` stabilised by the running max of the two log-masses (den >= 0)."""
    log_bg = torch.log((lam * den).clamp(min=torch.finfo(o_s.dtype).tiny))
    m = torch.maximum(lse, log_bg)
    w_s, w_bg = torch.exp(lse - m), torch.exp(-m) * lam
    numer = w_s[..., None] * o_s + w_bg[..., None] * num
    return numer / (w_s + w_bg * den)[..., None]


def merge_mass_readout(
    o_raw: torch.Tensor,
    a: torch.Tensor,
    w: torch.Tensor,
    num: torch.Tensor,
    den: torch.Tensor,
    lam: torch.Tensor,
    inplace: bool = False,
) -> torch.Tensor:
    """:func:`merge_mass` fused with the sink read-out of the spike (inference fast path).

    With Z the spike's softmax mass, the read-out gives o_raw = Z o_s / (Z + 1),
    a = Z / (Z + 1) and w = 1 / (Z + 1) (``block_sparse_flex_readout``). Dividing the mass merge's
    numerator and denominator by Z + 1:

        o = (Z o_s + lambda N) / (Z + lambda Z_bg) = (o_raw + w lambda N) / (a + w lambda Z_bg),

    which needs no lse, exp or log, and no o_raw / a pass. It stays exact at both extremes: w
    underflowing to 0 (spike mass overwhelming) gives o_s, a = 0 gives the background alone.
    ``inplace`` writes into ``o_raw`` (the caller's own buffer, no gradient).
    """
    lam = lam.to(o_raw.dtype)[:, None]
    wl = w * lam  # (B, H, L)
    denom = torch.addcmul(a, wl, den.clamp(min=0)).clamp_(min=torch.finfo(o_raw.dtype).tiny)
    out = (
        o_raw.addcmul_(wl[..., None], num) if inplace else torch.addcmul(o_raw, wl[..., None], num)
    )
    return out.div_(denom[..., None])
