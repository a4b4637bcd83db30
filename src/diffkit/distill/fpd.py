"""FPD: fixed-point distillation of a masked-token teacher into a one-step student (arXiv 2605.21484).

The student G_theta maps an almost fully masked random grid z_init (a fraction ``r_init`` = 0.95 of
positions masked, the rest random codes) and a condition to logits for every token. FPD trains it
toward a fixed point of "corrupt -> teacher-refine" (paper: p_theta = (T^r_phi o M_r)_# p_theta):

1. draft z^ ~ softmax(G_theta(z_init, c) / t_s), routed straight-through (eq. 8) to e, x = Dec(e);
2. with no grad: z~ = M_r(z^) re-masks round(r L) tokens, r ~ U[r_min, r_max]; one guided teacher
   pass samples them: z+ = where(masked, sample(l_T / t_T), z^); x+ = Dec(E[z+]);
3. lift both to features Phi (multi-layer, grid-pooled, mean/std, pixels); the multi-bandwidth drift
   loss (:mod:`diffkit.distill.drift`) uses refined drafts as positives and the student's own
   drafts as negatives, grouped by condition; optionally + lambda_gan * hinge GAN on x.

Since the drift is anti-symmetric, it vanishes iff p_theta K_r = p_theta for K_r = T_phi o M_r, a
blocked-Gibbs kernel whose stationary law is the teacher's (spec (c), our reading). The drift needs
no real data: the paper's FPD is data-free. Two optional additions use real images and make it no
longer data-free: the GAN (``gan_weight``) and ``real_positives`` (real images as extra drift
positives, ours); the shipped digits recipe uses both. Inference: one student forward + decoder
(NFE 1).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.core.objective import LossOutput, StepContext
from diffkit.distill.drift import DriftConfig, DriftLoss
from diffkit.distill.interfaces import Cond, MaskedTeacher, Tokenizer, check_compatible
from diffkit.distill.lifter import FeatureLifter, LifterConfig
from diffkit.distill.ste import STE_MODES, STEMode, categorical, refine, straight_through

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class FPDConfig:
    """Settings of the :class:`FPD` objective (defaults: spec distill-fpd.md (c), (g)).

    Attributes:
        r_init: fraction of the student's input tokens that are masked (the rest are random codes);
            0.95 in the paper ("nearly fully masked initialization").
        samples_per_group: student samples per condition in a batch (drift is computed per group).
        remask_min: lower end of the uniform re-mask ratio r of the refinement step.
        remask_max: upper end of r (r = 1 makes the target the teacher's one-step output).
        refine_source: "student" refines the student's own draft (FPD); "random" refines uniformly
            random tokens (the paper's refinement-source ablation).
        teacher_guidance: CFG scale of the refining teacher pass (1 = no guidance, one pass).
        teacher_temperature: sampling temperature of the refining teacher pass.
        student_temperature: softmax temperature of the student's token distribution.
        ste: token routing: "categorical" (STE, default), "argmax", "gumbel", or "soft" (ablation).
        bandwidths: drift kernel temperatures; one unit-RMS field per value, summed.
        normalize_features: drift feature normalisation to mean distance sqrt(C).
        normalize_drift: per-bandwidth unit-RMS drift normalisation.
        lifter: which features the drift is computed on (see LifterConfig).
        queue_size: positives kept per condition in a FIFO queue (0 = only this batch's positives).
        exclude_own_refinement: leave each draft's own refinement out of its positives, as its
            own sample is left out of its negatives. The refinement is not an independent draw of
            p_theta K_r given the draft (it shares 1 - r of its tokens), so keeping it makes the
            estimate biased: attraction to a near-copy of itself, repulsion from independent
            samples, i.e. a net spreading push even at the fixed point ([ours]; measured in
            docs/distill.md).
        drift_guidance: training-time CFG of the drift (Drifting sec. 3.5), alpha >= 1 (1 = off):
            the refined drafts of *all* conditions in the batch are added as unconditional
            negatives with kernel weight (alpha - 1)(N - 1)/N_unc, so the fixed point moves to
            alpha p(.|c) - (alpha - 1) p(.|0). Data-free analogue of Drifting's real
            unconditional negatives ([ours]).
        gan_weight: lambda_gan of the optional hinge GAN on images (0 = off).
        gan_conditional: make the discriminator class-conditional (projection discriminator,
            Miyato & Koyama 2018): it scores (image, condition) pairs, and each fake is matched
            by a real image of the same condition. Needs ``real_labels``. The paper's GAN is
            unconditional; this option is ours ([ours]; measured in docs/distill.md).
        gan_reg: discriminator regulariser: "spectral" norm or "r1" gradient penalty.
        r1_gamma: R1 weight when gan_reg = "r1".
        disc_lr: discriminator learning rate (Adam, betas (0, 0.99)).
        real_positives: real images of each condition added to that condition's drift positives
            in every step (0 = off, the paper's data-free drift). Drifting Models (arXiv
            2602.04770) draw all positives from data; here they join the teacher's refinements,
            so the fixed point is a mixture of the teacher's refinement and the data ([ours];
            needs ``real_images`` and ``real_labels``; measured in docs/distill.md).
    """

    r_init: float = 0.95
    samples_per_group: int = 8
    remask_min: float = 0.1
    remask_max: float = 0.5
    refine_source: Literal["student", "random"] = "student"
    teacher_guidance: float = 3.0
    teacher_temperature: float = 1.0
    student_temperature: float = 1.0
    ste: STEMode = "categorical"
    bandwidths: tuple[float, ...] = (0.02, 0.05, 0.2)
    normalize_features: bool = True
    normalize_drift: bool = True
    lifter: LifterConfig = field(default_factory=LifterConfig)
    queue_size: int = 0
    exclude_own_refinement: bool = True
    drift_guidance: float = 1.0
    gan_weight: float = 0.0
    gan_conditional: bool = False
    gan_reg: Literal["spectral", "r1"] = "spectral"
    r1_gamma: float = 1.0
    disc_lr: float = 2e-4
    real_positives: int = 0

    @property
    def sample_mode(self) -> Literal["categorical", "argmax"]:
        """How the trained student's tokens are drawn at inference, matching its training routing:
        sampled for ``categorical``/``gumbel`` drafts, argmax for ``argmax`` (and ``soft``)."""
        return "categorical" if self.ste in ("categorical", "gumbel") else "argmax"

    def __post_init__(self) -> None:
        if not 0.0 <= self.r_init <= 1.0:
            raise ValueError(f"FPDConfig.r_init must be in [0, 1], got {self.r_init}")
        if self.samples_per_group < 2:
            raise ValueError(
                f"FPDConfig.samples_per_group={self.samples_per_group}: drift needs >= 2 samples "
                "per condition (the self-pair is excluded)"
            )
        if not 0.0 < self.remask_min <= self.remask_max <= 1.0:
            raise ValueError(
                f"FPDConfig needs 0 < remask_min <= remask_max <= 1, got "
                f"remask_min={self.remask_min}, remask_max={self.remask_max}"
            )
        if self.refine_source not in ("student", "random"):
            raise ValueError(f"FPDConfig.refine_source={self.refine_source!r}; 'student'|'random'")
        if self.ste not in STE_MODES:
            raise ValueError(f"FPDConfig.ste={self.ste!r}; use one of {', '.join(STE_MODES)}")
        for name in ("teacher_temperature", "student_temperature", "disc_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FPDConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("teacher_guidance", "gan_weight", "queue_size", "real_positives"):
            if getattr(self, name) < 0:
                raise ValueError(f"FPDConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.drift_guidance < 1:
            raise ValueError(f"FPDConfig.drift_guidance must be >= 1, got {self.drift_guidance}")
        if self.gan_reg not in ("spectral", "r1"):
            raise ValueError(f"FPDConfig.gan_reg={self.gan_reg!r}; use 'spectral' or 'r1'")
        DriftConfig(bandwidths=self.bandwidths)  # validates the bandwidths


# ------------------------------------------------------------------------------------ sampling
def student_input(
    batch: int,
    num_tokens: int,
    codebook_size: int,
    mask_id: int,
    r_init: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """z_init (B, L): random codes with exactly round(r_init L) positions set to ``mask_id``."""
    from diffkit.core.masking import mask_tokens

    z = torch.randint(codebook_size, (batch, num_tokens), generator=generator)
    return mask_tokens(z, r_init, mask_id, generator)[0]  # drawn on the CPU: same on any device


@torch.no_grad()
def sample_student(
    teacher: MaskedTeacher,
    student: nn.Module,
    cond: Cond,
    *,
    r_init: float = 0.95,
    temperature: float = 1.0,
    mode: Literal["categorical", "argmax"] = "categorical",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One-step generation (NFE 1): z_init -> student logits -> tokens (B, L)."""
    B = len(cond) if not isinstance(cond, dict) else len(next(iter(cond.values())))
    z = student_input(
        B, teacher.num_tokens, teacher.codebook_size, teacher.mask_id, r_init, generator
    ).to(_device_of(student))
    logits = teacher.forward_logits(student, z, cond)
    return draw_tokens(logits, mode, temperature=temperature, generator=generator)


def draw_tokens(
    logits: torch.Tensor,
    mode: Literal["categorical", "argmax"] = "categorical",
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens (B, L) from student logits (B, L, K): the argmax, or one draw of
    softmax(logits / temperature) per position (the student's inference, ``FPDConfig.sample_mode``).
    """
    if mode not in ("categorical", "argmax"):
        raise ValueError(f"sample mode {mode!r}; use 'categorical' or 'argmax'")
    logits = logits.float()
    if mode == "argmax":
        return logits.argmax(-1)
    return categorical(torch.softmax(logits / temperature, -1), generator)


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class ConditionData:
    """Training "data" of FPD: condition-table ids (the teacher supplies everything else)."""

    def __init__(self, num_conditions: int, length: int = 10_000):
        if num_conditions < 1:
            raise ValueError(f"num_conditions must be >= 1, got {num_conditions}")
        self.num_conditions, self.length = num_conditions, length

    def __len__(self) -> int:
        return self.length

    def get_batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"cond": idx % self.num_conditions}


# ------------------------------------------------------------------------------------ helpers
class PositiveQueue:
    """Per-condition FIFO of lifted positive features (raises N_pos cheaply; Drifting sec. 4)."""

    def __init__(self, num_groups: int, size: int):
        self.num_groups, self.size = num_groups, size
        self.store: dict[str, torch.Tensor] = {}
        self.count = torch.zeros(num_groups, dtype=torch.long)

    def get(self, groups: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Stored features of the given groups, flat, with their group ids."""
        g = torch.unique(groups)
        n = self.count[g].clamp(max=self.size)
        slot = torch.arange(self.size)
        sel = slot[None] < n[:, None]  # (G, Q)
        gid = g[:, None].expand(-1, self.size)[sel]
        sid = slot[None].expand(len(g), -1)[sel]
        feats = {k: v[gid.to(v.device), sid.to(v.device)] for k, v in self.store.items()}
        return feats, gid

    def push(self, feats: dict[str, torch.Tensor], groups: torch.Tensor) -> None:
        for k, v in feats.items():
            v = v.detach()
            if k not in self.store:
                self.store[k] = torch.zeros(
                    self.num_groups, self.size, *v.shape[1:], dtype=v.dtype, device=v.device
                )
        for i, gi in enumerate(groups.tolist()):  # B small writes, each O(1)
            pos = int(self.count[gi]) % self.size
            for k, v in feats.items():
                self.store[k][gi, pos] = v[i].detach()
            self.count[gi] += 1

    def state_dict(self) -> dict:
        return {"store": self.store, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.store, self.count = state["store"], state["count"]


class Discriminator(nn.Module):
    """Small image discriminator (hinge loss; spectral norm or R1).

    Unconditional by default; with ``num_classes`` it is a projection discriminator
    (Miyato & Koyama 2018): D(x, y) = w^T h(x) + e_y^T h(x).
    """

    def __init__(
        self, channels: int = 1, width: int = 32, spectral: bool = True, num_classes: int = 0
    ):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        self.embed = sn(nn.Embedding(num_classes, 2 * width)) if num_classes else None
        self.features = nn.Sequential(
            sn(nn.Conv2d(channels, width, 3, 2, 1)),
            nn.LeakyReLU(0.2),
            sn(nn.Conv2d(width, 2 * width, 3, 2, 1)),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = sn(nn.Linear(2 * width, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.head(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("a class-conditional Discriminator needs the labels y")
            out = out + (self.embed(y) * h).sum(1)
        return out


def token_stats(ids: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Entropy (nats) of the token histogram and the fraction of codes used."""
    counts = torch.bincount(ids.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "token_entropy": float(-(nz * nz.log()).sum()),
        "codebook_usage": float((counts > 0).float().mean()),
    }


# ------------------------------------------------------------------------------------ objective
def _index_by_condition(
    real_images: torch.Tensor, real_labels: torch.Tensor | None, num_conditions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, start, count): the real images of condition c are order[start[c] : + count[c]]."""
    if real_labels is None or real_labels.shape != real_images.shape[:1]:
        raise ValueError(
            "FPDConfig.gan_conditional and real_positives need real_labels, one per real image"
        )
    if int(real_labels.min()) < 0 or int(real_labels.max()) >= num_conditions:
        raise ValueError(
            f"real_labels must lie in [0, {num_conditions}) (the teacher's conditions), got "
            f"[{int(real_labels.min())}, {int(real_labels.max())}]"
        )
    counts = torch.bincount(real_labels, minlength=num_conditions)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"real_labels has no image of condition(s) {missing}")
    order = torch.argsort(real_labels, stable=True)
    return order, torch.cumsum(counts, 0) - counts, counts


class FPD:
    """The FPD objective for :func:`diffkit.train.fit` (``model`` = the student network).

    Args:
        config: FPD settings.
        teacher: the frozen masked teacher (adapter).
        tokenizer: codebook + differentiable decoder.
        lifter_backbone: feature backbone (``feature_maps``) for ``config.lifter.space='feature'``.
        real_images: real images ((N, C, H, W) in [-1, 1]): the optional GAN's real set and the
            source of ``real_positives``.
        real_labels: condition index of each real image ((N,) long), for ``gan_conditional``
            and ``real_positives``.
    """

    def __init__(
        self,
        config: FPDConfig,
        *,
        teacher: MaskedTeacher,
        tokenizer: Tokenizer,
        lifter_backbone: nn.Module | None = None,
        real_images: torch.Tensor | None = None,
        real_labels: torch.Tensor | None = None,
    ):
        check_compatible(teacher, tokenizer)
        self.config = config
        self.teacher = teacher
        self.tokenizer = tokenizer
        self.lifter = FeatureLifter(lifter_backbone, config.lifter)
        self.drift = DriftLoss(
            DriftConfig(
                bandwidths=config.bandwidths,
                normalize_features=config.normalize_features,
                normalize_drift=config.normalize_drift,
            )
        )
        self.queue = (
            PositiveQueue(teacher.num_conditions, config.queue_size) if config.queue_size else None
        )
        self.disc = self.disc_opt = None
        self.real_images = real_images
        self._real_by_cls = None
        if config.gan_weight > 0 or config.real_positives:
            if real_images is None:
                raise ValueError(
                    "FPDConfig.gan_weight > 0 and real_positives > 0 need real_images "
                    "(the discriminator's real set / the drift's data positives)"
                )
            if (config.gan_weight > 0 and config.gan_conditional) or config.real_positives:
                self._real_by_cls = _index_by_condition(
                    real_images, real_labels, teacher.num_conditions
                )
        if config.gan_weight > 0:
            n_cls = teacher.num_conditions if config.gan_conditional else 0
            self.disc = Discriminator(
                real_images.shape[1], spectral=config.gan_reg == "spectral", num_classes=n_cls
            )
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), config.disc_lr, (0.0, 0.99))

    def make_student(self) -> nn.Module:
        """The student network, initialised from the teacher."""
        return self.teacher.make_student()

    def data(self, length: int = 10_000) -> ConditionData:
        return ConditionData(self.teacher.num_conditions, length)

    def _real_of(self, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Indices of one uniformly drawn real image of condition y[i] for each i."""
        order, start, count = self._real_by_cls
        off = (torch.rand(len(y), generator=g) * count[y]).long().clamp_max(count[y] - 1)
        return order[start[y] + off]

    def _disc_step(
        self, fake: torch.Tensor, y: torch.Tensor | None, g: torch.Generator
    ) -> dict[str, float]:
        cfg = self.config
        if y is None:
            idx = torch.randint(len(self.real_images), (len(fake),), generator=g)
        else:  # one real image of the same condition per fake
            idx = self._real_of(y, g)
        real = self.real_images[idx].to(fake.device).clone().requires_grad_(cfg.gan_reg == "r1")
        d_real, d_fake = self.disc(real, y), self.disc(fake.detach(), y)
        loss = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
        if cfg.gan_reg == "r1":
            (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            loss = loss + cfg.r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()
        self.disc_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.disc_opt.step()
        return {"gan/d_loss": float(loss.detach()), "gan/d_real": float(d_real.detach().mean())}

    def __call__(self, student: nn.Module, batch: dict, ctx: StepContext) -> LossOutput:
        cfg, T, tok = self.config, self.teacher, self.tokenizer
        g = ctx.generator  # a CPU generator: random draws are made on the CPU, then moved
        dev = tok.codebook.device
        groups = batch["cond"].repeat_interleave(cfg.samples_per_group)  # (B,)
        cond = T.condition(groups)
        B, L, K = len(groups), T.num_tokens, T.codebook_size
        # 1. student draft, straight-through routed, decoded (differentiable)
        z_init = student_input(B, L, K, T.mask_id, cfg.r_init, g).to(dev)
        logits = T.forward_logits(student, z_init, cond)
        routed = straight_through(
            logits, tok.codebook, cfg.ste, temperature=cfg.student_temperature, generator=g
        )
        x = tok.decode(routed.emb)
        embedding = cfg.lifter.space == "embedding"
        # 2. fixed-point target: re-mask + one teacher step (no grad)
        with torch.no_grad():
            r = cfg.remask_min + (cfg.remask_max - cfg.remask_min) * torch.rand(B, generator=g)
            if cfg.refine_source == "student":
                src = routed.ids
            else:  # ablation: the teacher refines uniformly random tokens
                src = torch.randint(K, (B, L), generator=g).to(dev)
            z_pos, masked = refine(
                T, src, cond, r, guidance_scale=cfg.teacher_guidance,
                temperature=cfg.teacher_temperature, generator=g,
            )  # fmt: skip
            e_pos = tok.embed(z_pos)
            f_pos = self.lifter(None if embedding else tok.decode(e_pos), e_pos)
        # 3. drift in lifted feature space, grouped by condition
        f_gen = self.lifter(x, routed.emb)
        pos, pos_groups = f_pos, groups
        pos_source = torch.arange(B) if cfg.exclude_own_refinement else None
        if self.queue is not None:
            queued, qg = self.queue.get(groups)
            if len(qg):
                pos = {
                    k: torch.cat([f_pos[k], queued[k].reshape(-1, *f_pos[k].shape[1:])])
                    for k in f_pos
                }
                pos_groups = torch.cat([groups, qg])
                if pos_source is not None:
                    pos_source = torch.cat([pos_source, torch.full((len(qg),), -1)])
            self.queue.push(f_pos, groups)
        if cfg.real_positives:  # data positives of each condition in the batch
            rg = batch["cond"].repeat_interleave(cfg.real_positives)
            with torch.no_grad():
                real = self.real_images[self._real_of(rg, g)].to(dev)
                f_real = self.lifter(real, tok.embed(tok.encode(real)) if embedding else None)
            pos = {k: torch.cat([pos[k], f_real[k]]) for k in pos}
            pos_groups = torch.cat([pos_groups, rg])
            if pos_source is not None:
                pos_source = torch.cat([pos_source, torch.full((len(rg),), -1)])
        uncond, w_unc = None, 0.0
        if cfg.drift_guidance > 1:  # all conditions' refined drafts = unconditional negatives
            uncond = f_pos
            w_unc = (cfg.drift_guidance - 1) * (cfg.samples_per_group - 1) / B
        loss, diag = self.drift(
            f_gen, pos, groups, pos_groups=pos_groups, pos_source=pos_source, uncond=uncond,
            uncond_source=torch.arange(B) if cfg.exclude_own_refinement else None,
            uncond_weight=w_unc,
        )  # fmt: skip
        metrics: dict[str, float] = {"drift_loss": float(loss.detach())}
        for tau in cfg.bandwidths:
            norms = [v for k, v in diag.items() if k.endswith(f"drift_norm_tau{tau:g}")]
            ents = [v for k, v in diag.items() if k.endswith(f"kernel_entropy_tau{tau:g}")]
            metrics[f"drift_norm/tau{tau:g}"] = sum(norms) / len(norms)
            metrics[f"kernel_entropy/tau{tau:g}"] = sum(ents) / len(ents)
        changed = (z_pos != routed.ids) & masked
        metrics["refine_changed_frac"] = float(changed.sum() / masked.sum().clamp_min(1))
        metrics.update(token_stats(routed.ids, K))
        if self.disc is not None:
            y = groups if cfg.gan_conditional else None
            metrics.update(self._disc_step(x, y, g))
            g_loss = -self.disc(x, y).mean()
            loss = loss + cfg.gan_weight * g_loss
            metrics["gan/g_loss"] = float(g_loss.detach())
        if not math.isfinite(metrics["drift_loss"]):
            log.warning("non-finite drift loss at step %d", ctx.step)
        return LossOutput(loss, metrics)

    # checkpoint hooks used by diffkit.train.fit
    def state_dict(self) -> dict:
        out: dict = {}
        if self.queue is not None:
            out["queue"] = self.queue.state_dict()
        if self.disc is not None:
            out["disc"] = self.disc.state_dict()
            out["disc_opt"] = self.disc_opt.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        if self.queue is not None and "queue" in state:
            self.queue.load_state_dict(state["queue"])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])
