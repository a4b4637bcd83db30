"""A tiny causal, Self-Forcing-style video DiT (``moving-digits-causal``).

Structure follows Self-Forcing's ``CausalWanModel`` (guandeh17/Self-Forcing, ``wan/modules/
causal_model.py``) on the Wan2.1 backbone, scaled down (spec quantize-qarvd.md, section (b)):

* patch Conv3d (1, 2, 2); per-frame timestep ``t`` of shape (B, F): sinusoid -> ``time_embedding``
  (Linear, SiLU, Linear) -> ``time_projection`` (SiLU, Linear(dim, 6 dim)), so every latent frame
  gets its own six adaLN vectors (shift/scale/gate for attention and FFN);
* "text": two digit-label slots embedded as 8 tokens x 32 dims -> ``text_embedding`` MLP;
* block: x += g2 * SelfAttn(LN(x)(1 + s1) + sh0) with RMSNorm on q and k and causal 3D RoPE
  (temporal index = absolute frame index); x += CrossAttn(LN_affine(x), text);
  x += g5 * FFN(LN(x)(1 + s4) + sh3), FFN = Linear, GELU(tanh), Linear;
* head: LN, (1 + scale) / shift from its own modulation plus the time vector, Linear, unpatchify;
* block-causal attention (a token sees every frame up to the end of its chunk) and a per-block
  KV cache for chunk-by-chunk inference.

Inference (:func:`rollout`, Self-Forcing ``pipeline/causal_inference.py``): chunks of 3 latent
frames; 4 denoising passes at the warped times t = [1000, 750, 500, 250] -> sigma' with shift 5
(``FlowMatching(shift=5)``: [1, 0.9375, 0.8333, 0.625]), re-noising x0-hat with fresh noise between
passes; then one pass at t = 0 on the clean output to write the KV cache. :func:`rollout` is also the
calibration driver of :mod:`diffkit.quantize` (``chunk_context`` tags each chunk's calls).

Latents: a fixed, seeded orthogonal "VAE" maps each 2x2 pixel patch to 4 channels
(:func:`encode_video`, inverse :func:`decode_latents`), so 32x32 frames become 4x16x16 latents.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.core.io import load_model_dir
from diffkit.core.rope import apply_rope, rope_freqs_3d
from diffkit.core.schedules import FlowMatching

DEFAULT_CONFIG = {
    "in_channels": 16,
    "latent_size": 8,
    "patch": 2,
    "dim": 64,
    "heads": 4,
    "ffn_dim": 256,
    "layers": 4,
    "freq_dim": 64,
    "num_classes": 10,
    "label_slots": 2,
    "text_tokens": 8,
    "text_dim": 32,
    "num_frames": 12,
    "chunk_frames": 3,
    "vae_patch": 4,
    "vae_seed": 1234,
}
DENOISING_TIMESTEPS = (1000.0, 750.0, 500.0, 250.0)
SHIFT = 5.0


def denoising_timesteps(steps: int = len(DENOISING_TIMESTEPS)) -> tuple[float, ...]:
    """Evenly spaced timesteps 1000 (1 - i / steps), i < steps: (1000, 750, 500, 250) for 4."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return tuple(1000.0 * (1 - i / steps) for i in range(steps))


def sigmas_for(timesteps=DENOISING_TIMESTEPS, shift: float = SHIFT) -> torch.Tensor:
    """Warped noise levels sigma' = shift * s / (1 + (shift - 1) s) for s = t / 1000."""
    return FlowMatching(shift=shift).shift_sigma(
        torch.tensor(timesteps, dtype=torch.float64) / 1000
    )


def sample_steps(config: dict) -> int:
    """Denoising passes per chunk a model samples with: ``config["sample_steps"]``, else 4."""
    return config.get("sample_steps", len(DENOISING_TIMESTEPS))


def sampler_sigmas(config: dict, steps: int | None = None) -> torch.Tensor:
    """The warped noise levels of a model's passes (:func:`sigmas_for` of ``steps``, default
    :func:`sample_steps`, with the model's ``config["shift"]``, else :data:`SHIFT`)."""
    steps = sample_steps(config) if steps is None else steps
    return sigmas_for(denoising_timesteps(steps), config.get("shift", SHIFT))


# ----------------------------------------------------------------------------- fixed "VAE"
def vae_matrix(in_ch: int, patch: int, seed: int) -> torch.Tensor:
    """Seeded orthogonal (in_ch*p*p, in_ch*p*p) matrix: latent = M @ patch_pixels."""
    n = in_ch * patch * patch
    q, r = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed)).double()
    )
    return (q * torch.sign(torch.diagonal(r))).float()


def encode_video(video: torch.Tensor, config: dict = DEFAULT_CONFIG) -> torch.Tensor:
    """(B, F, 1, S, S) pixels in [-1, 1] -> (B, F, C, S/p, S/p) latents (lossless, orthogonal)."""
    p = config["vae_patch"]
    B, Fr, c, S, _ = video.shape
    m = vae_matrix(c, p, config["vae_seed"]).to(video)
    x = video.reshape(B, Fr, c, S // p, p, S // p, p).permute(0, 1, 3, 5, 2, 4, 6)
    x = x.reshape(B, Fr, S // p, S // p, c * p * p) @ m.T
    return x.permute(0, 1, 4, 2, 3).contiguous()


def decode_latents(lat: torch.Tensor, config: dict = DEFAULT_CONFIG) -> torch.Tensor:
    """Inverse of :func:`encode_video`: (B, F, C, H, W) -> (B, F, 1, H*p, W*p)."""
    p = config["vae_patch"]
    B, Fr, C, H, W = lat.shape
    c = C // (p * p)
    m = vae_matrix(c, p, config["vae_seed"]).to(lat)
    x = lat.permute(0, 1, 3, 4, 2) @ m  # (B, F, H, W, c*p*p)
    x = x.reshape(B, Fr, H, W, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)
    return x.reshape(B, Fr, c, H * p, W * p)


# ----------------------------------------------------------------------------- modules
def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's sinusoidal embedding [cos, sin] of timesteps in [0, 1000]; (...,) -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    ang = t.double()[..., None] * freqs
    return torch.cat([ang.cos(), ang.sin()], dim=-1).float()


@dataclass
class KVCache:
    """Per-block self-attention keys/values (B, heads, S, head_dim) of the frames cached so far.

    ``bits`` (e.g. 8) stores them as symmetric integer codes with one fp32 scale per (token, head)
    and dequantizes on read: the int8 KV-cache option (the ARVD memory term that grows with video
    length; spec quantize-qarvd.md (e) 6).
    """

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)
    frames: int = 0
    bits: int | None = None

    @classmethod
    def empty(cls, layers: int, bits: int | None = None) -> KVCache:
        if bits is not None and not 2 <= bits <= 8:
            raise ValueError(f"KV-cache bits must be in [2, 8] or None, got {bits}")
        return cls([None] * layers, [None] * layers, 0, bits)

    def _encode(self, t: torch.Tensor):
        if self.bits is None:
            return t
        qmax = 2 ** (self.bits - 1) - 1
        scale = (t.abs().amax(-1, keepdim=True) / qmax).clamp_min(1e-8)
        return torch.round(t / scale).clamp(-qmax, qmax).to(torch.int8), scale

    def _decode(self, e):
        if e is None or self.bits is None:
            return e
        return e[0].float() * e[1]

    def get(self, i: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self._decode(self.keys[i]), self._decode(self.values[i])

    def append(self, i: int, k: torch.Tensor, v: torch.Tensor) -> None:
        for store, t in ((self.keys, k), (self.values, v)):
            enc = self._encode(t)
            old = store[i]
            if old is None:
                store[i] = enc
            elif self.bits is None:
                store[i] = torch.cat([old, enc], 2)
            else:
                store[i] = (torch.cat([old[0], enc[0]], 2), torch.cat([old[1], enc[1]], 2))

    def nbytes(self) -> int:
        """Bytes held by the cache (codes + scales, or fp32 tensors)."""
        total = 0
        for e in self.keys + self.values:
            parts = () if e is None else (e,) if isinstance(e, torch.Tensor) else e
            total += sum(p.numel() * p.element_size() for p in parts)
        return total


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x, rope, mask, past=None):
        q, k, v, new, _ = project_qkv(self, x, rope, past)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o(out.transpose(1, 2).flatten(2)), new


def project_qkv(attn: nn.Module, x: torch.Tensor, rope, past=None):
    """Self-attention inputs of ``attn`` (a :class:`SelfAttention`, or a module holding its
    ``heads, q, k, v, norm_q, norm_k``) for tokens x (B, S, D): ``(q, k, v, new, pre)`` with q
    (B, h, S, D/h) post-RoPE, k and v preceded by ``past``'s cached keys and values, ``new`` =
    this call's (k, v) for the cache and ``pre`` = the pre-RoPE (q, k) of this call."""
    B, S, D = x.shape
    h = attn.heads

    def split(z):  # (B, S, D) -> (B, h, S, D/h)
        return z.view(B, S, h, D // h).transpose(1, 2)

    q_pre, k_pre = split(attn.norm_q(attn.q(x))), split(attn.norm_k(attn.k(x)))
    q, k = apply_rope(q_pre, *rope), apply_rope(k_pre, *rope)
    v = split(attn.v(x))
    new = (k, v)
    if past is not None and past[0] is not None:
        k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
    return q, k, v, new, (q_pre, k_pre)


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)

    def forward(self, x, ctx):
        B, S, D = x.shape
        h = self.heads
        q = self.norm_q(self.q(x)).view(B, S, h, -1).transpose(1, 2)
        k = self.norm_k(self.k(ctx)).view(B, ctx.shape[1], h, -1).transpose(1, 2)
        v = self.v(ctx).view(B, ctx.shape[1], h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).reshape(B, S, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 1, 6, dim) / dim**0.5)

    def forward(self, x, e, tokens_per_frame, ctx, rope, mask, past=None):
        # e: (B, F, 6, dim) per-frame modulation -> per token (B, S, dim) each.
        mod = (self.modulation + e).repeat_interleave(tokens_per_frame, dim=1).unbind(2)
        sh0, sc1, g2, sh3, sc4, g5 = mod
        y, new = self.self_attn(self.norm1(x) * (1 + sc1) + sh0, rope, mask, past)
        x = x + g2 * y
        x = x + self.cross_attn(self.norm3(x), ctx)
        x = x + g5 * self.ffn(self.norm2(x) * (1 + sc4) + sh3)
        return x, new


class Head(nn.Module):
    def __init__(self, dim: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.head = nn.Linear(dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 1, 2, dim) / dim**0.5)

    def forward(self, x, e0, tokens_per_frame):
        shift, scale = (
            (self.modulation + e0[:, :, None]).repeat_interleave(tokens_per_frame, dim=1).unbind(2)
        )
        return self.head(self.norm(x) * (1 + scale) + shift)


class CausalWan(nn.Module):
    """Tiny causal Wan; ``forward(x, timestep, labels, ...)`` predicts the flow velocity eps - x0."""

    def __init__(self, **config) -> None:
        super().__init__()
        self.config = {**DEFAULT_CONFIG, **config}
        c = self.config
        dim, p = c["dim"], c["patch"]
        if dim % c["heads"]:
            raise ValueError(f"dim={dim} must be divisible by heads={c['heads']}")
        self.head_dim = dim // c["heads"]
        self.patch_embedding = nn.Conv3d(c["in_channels"], dim, (1, p, p), stride=(1, p, p))
        self.label_embedding = nn.Embedding(
            c["num_classes"] + 1, c["text_tokens"] // c["label_slots"] * c["text_dim"]
        )
        self.text_embedding = nn.Sequential(
            nn.Linear(c["text_dim"], dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim)
        )
        self.time_embedding = nn.Sequential(
            nn.Linear(c["freq_dim"], dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            Block(dim, c["heads"], c["ffn_dim"]) for _ in range(c["layers"])
        )
        self.head = Head(dim, c["in_channels"] * p * p)
        self.grid_hw = c["latent_size"] // p
        self.tokens_per_frame = self.grid_hw**2
        # Pluggable cache store: None -> KVCache; a method (e.g. a quantized KV cache) may install a
        # callable layers -> object with KVCache's interface (frames, get, append, nbytes).
        self.kv_cache_factory: Callable[[int], KVCache] | None = None

    def new_cache(self) -> KVCache:
        """An empty KV cache for :func:`rollout`, from ``kv_cache_factory`` when one is installed."""
        factory = getattr(self, "kv_cache_factory", None)
        return KVCache.empty(len(self.blocks)) if factory is None else factory(len(self.blocks))

    # -- pieces
    def embed_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, slots) digit labels, -1 = absent -> (B, text_tokens, dim)."""
        c = self.config
        idx = torch.where(labels < 0, torch.full_like(labels, c["num_classes"]), labels)
        tok = self.label_embedding(idx).view(labels.shape[0], c["text_tokens"], c["text_dim"])
        return self.text_embedding(tok)

    def block_mask(self, q_frames: torch.Tensor, kv_frames: torch.Tensor) -> torch.Tensor:
        """Token mask (1, 1, Sq, Skv): query frame a sees key frame b iff chunk(b) <= chunk(a)."""
        ch = self.config["chunk_frames"]
        allowed = (kv_frames[None, :] // ch) <= (q_frames[:, None] // ch)
        P = self.tokens_per_frame
        return allowed.repeat_interleave(P, 0).repeat_interleave(P, 1)[None, None]

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        labels: torch.Tensor,
        *,
        frame_index: torch.Tensor | None = None,
        kv_frame_index: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        write_cache: bool = False,
    ) -> torch.Tensor:
        """x (B, F, C, H, W) latents, timestep (B, F) in [0, 1000], labels (B, slots).

        ``frame_index`` (F,) gives each input frame's absolute index (RoPE time and chunk id);
        default: the frames right after the cache. Without a cache the mask is block-causal over
        ``frame_index``; pass ``mask``/``kv_frame_index`` for other patterns (teacher forcing).
        With ``cache``, queries also see every cached frame; ``write_cache`` appends this call's
        keys/values (the t = 0 refresh pass).
        """
        B, Fr, C, H, W = x.shape
        P, dim, g = self.tokens_per_frame, self.config["dim"], self.grid_hw
        start = cache.frames if cache is not None else 0
        if frame_index is None:
            frame_index = torch.arange(start, start + Fr)
        tok = self.patch_embedding(x.transpose(1, 2)).flatten(2).transpose(1, 2)  # (B, F*P, dim)
        e = self.time_embedding(sinusoidal(timestep, self.config["freq_dim"]))  # (B, F, dim)
        e6 = self.time_projection(e).unflatten(-1, (6, dim))  # (B, F, 6, dim)
        ctx = self.embed_labels(labels)
        cos, sin = self._rope(frame_index)
        if mask is None:
            past_idx = torch.arange(0, start) if cache is not None else frame_index[:0]
            kv_idx = (
                torch.cat([past_idx, frame_index]) if kv_frame_index is None else kv_frame_index
            )
            mask = self.block_mask(frame_index, kv_idx)
        for i, blk in enumerate(self.blocks):
            past = cache.get(i) if cache is not None else None
            tok, (k, v) = blk(tok, e6, P, ctx, (cos, sin), mask, past)
            if write_cache:
                cache.append(i, k, v)
        if write_cache:
            cache.frames += Fr
        out = self.head(tok, e, P)  # (B, F*P, C*p*p)
        p = self.config["patch"]
        out = out.view(B, Fr, g, g, C, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(B, Fr, C, H, W)

    def _rope(self, frame_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.grid_hw
        cos, sin = rope_freqs_3d(self.head_dim, (int(frame_index.max()) + 1, g, g))
        rows = (frame_index[:, None] * g * g + torch.arange(g * g)).flatten()
        return cos[rows], sin[rows]


# ----------------------------------------------------------------------------- rollout
def rollout_noise(
    batch: int,
    config: dict = DEFAULT_CONFIG,
    generator: torch.Generator | None = None,
    steps: int = len(DENOISING_TIMESTEPS),
) -> torch.Tensor:
    """All Gaussian draws of a rollout, (B, chunks, steps, chunk_frames, C, H, W).

    Step 0 is the initial noise of each chunk; steps 1.. are the re-noising draws. Pre-drawing
    them makes FP and quantized rollouts (and any suffix of a rollout) use identical noise.
    """
    c = config
    n_chunks = c["num_frames"] // c["chunk_frames"]
    shape = (batch, n_chunks, steps, c["chunk_frames"], c["in_channels"])
    return torch.randn(*shape, c["latent_size"], c["latent_size"], generator=generator)


@torch.no_grad()
def rollout(
    model: CausalWan,
    labels: torch.Tensor,
    noise: torch.Tensor,
    *,
    chunk_context: Callable[[int], contextlib.AbstractContextManager] | None = None,
    start_chunk: int = 0,
    prefix: torch.Tensor | None = None,
    use_cache: bool = True,
    kv_bits: int | None = None,
    cfg_scale: float | None = None,
) -> torch.Tensor:
    """Generate (B, F, C, H, W) latents chunk by chunk (Self-Forcing causal inference).

    ``noise`` from :func:`rollout_noise`; its step axis sets the denoising passes per chunk
    (:func:`denoising_timesteps`; 4 = Self-Forcing's schedule). ``chunk_context(k)`` wraps the 5 forward calls of chunk
    k (4 denoising passes + the t = 0 cache refresh); quantization uses it to tag calibration data
    or to quantize only chunk k. ``start_chunk`` with ``prefix`` (the first ``start_chunk`` chunks'
    latents, e.g. from an FP rollout) rebuilds the cache from the prefix with one t = 0 pass per
    chunk and regenerates only the suffix. ``use_cache=False`` recomputes every call over all
    previous clean frames with the block-causal mask (the reference the cache must equal).
    ``kv_bits=8`` keeps the KV cache as int8 codes with per-(token, head) scales; otherwise the
    cache is ``model.new_cache()`` (the store a method installed, e.g. ``quantize_kv_cache_``).
    ``cfg_scale`` != 1 applies classifier-free guidance (Ho & Salimans 2022) ``u + s (c - u)`` at
    every denoising pass: the conditional and the null-label branch (every slot absent) run as one
    batch of 2B, and the cache holds both branches' keys and values. ``None`` (default) takes the
    model's ``config["cfg_scale"]`` (1 when absent), so calibration and evaluation run the
    guidance the model samples with.
    """
    ch = model.config["chunk_frames"]
    if cfg_scale is None:
        cfg_scale = model.config.get("cfg_scale", 1.0)
    B, n_chunks, steps = noise.shape[:3]
    guided = cfg_scale != 1.0
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, -1)])

    def dup(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t, t]) if guided else t

    def velocity(x: torch.Tensor, sigma: float, k: int) -> torch.Tensor:
        done = out if cache is not None else [dup(d) for d in out]  # read only without a cache
        v = _call(model, dup(x), sigma, labels, cache, done, k, ch)
        if not guided:
            return v
        c, u = v.chunk(2)
        return u + cfg_scale * (c - u)

    sig = sampler_sigmas(model.config, steps).tolist()
    ctxf = chunk_context or (lambda k: contextlib.nullcontext())
    if not use_cache:
        cache = None
    elif kv_bits is not None:
        cache = KVCache.empty(len(model.blocks), kv_bits)
    else:
        cache = model.new_cache()
    out: list[torch.Tensor] = []
    if start_chunk:
        if prefix is None or prefix.shape[1] < start_chunk * ch:
            raise ValueError(
                f"start_chunk={start_chunk} needs prefix latents of >= {start_chunk * ch} frames"
            )
        for k in range(start_chunk):
            clean = prefix[:, k * ch : (k + 1) * ch]
            if use_cache:
                zeros = torch.zeros(len(labels), ch)
                model(dup(clean), zeros, labels, cache=cache, write_cache=True)
            out.append(clean)
    for k in range(start_chunk, n_chunks):
        with ctxf(k):
            x = noise[:, k, 0]
            for i in range(steps):
                v = velocity(x, sig[i], k)
                x0 = x - sig[i] * v
                if i + 1 < steps:
                    x = (1 - sig[i + 1]) * x0 + sig[i + 1] * noise[:, k, i + 1]
            if use_cache:
                model(dup(x0), torch.zeros(len(labels), ch), labels, cache=cache, write_cache=True)
            out.append(x0)
    return torch.cat(out, dim=1)


@torch.no_grad()
def sample(
    model: CausalWan,
    labels: torch.Tensor,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    cfg_scale: float | None = None,
) -> torch.Tensor:
    """Generate pixel videos (B, F, 1, S, S) in [-1, 1] of one digit each, ``labels`` (B,).

    Chunk-by-chunk causal rollout with the KV cache (:func:`rollout`), ``steps`` denoising passes
    per chunk, then the fixed "VAE"'s decoder (:func:`decode_latents`). ``steps`` and ``cfg_scale``
    default to the model's ``config["sample_steps"]`` (4, Self-Forcing's schedule) and
    ``config["cfg_scale"]`` (1: no guidance).
    """
    labels = labels.long()
    pad = model.config["label_slots"] - 1
    slots = torch.cat([labels[:, None], labels.new_full((len(labels), pad), -1)], 1)
    steps = sample_steps(model.config) if steps is None else steps
    noise = rollout_noise(len(labels), model.config, generator, steps)
    scale = model.config.get("cfg_scale", 1.0) if cfg_scale is None else cfg_scale
    lat = rollout(model, slots, noise, cfg_scale=scale)
    return decode_latents(lat, model.config).clamp(-1, 1)


def _call(model, x, sigma, labels, cache, done, k, ch):
    B = x.shape[0]
    if cache is not None:
        return model(x, torch.full((B, ch), 1000.0 * sigma), labels, cache=cache)
    ctx = torch.cat([*done, x], dim=1)  # every clean frame so far + the noisy chunk
    t = torch.cat([torch.zeros(B, k * ch), torch.full((B, ch), 1000.0 * sigma)], dim=1)
    return model(ctx, t, labels, frame_index=torch.arange(ctx.shape[1]))[:, -ch:]


def teacher_forcing_inputs(
    model: CausalWan, clean: torch.Tensor, noisy: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequence [clean frames; noisy frames], frame indices and the teacher-forcing mask.

    Clean frame a sees clean frames of chunks <= chunk(a); noisy frame a sees clean frames of
    chunks < chunk(a) and noisy frames of its own chunk: exactly what it sees at inference, where
    earlier chunks come from the t = 0 cache.
    """
    Fr = clean.shape[1]
    ch, P = model.config["chunk_frames"], model.tokens_per_frame
    idx = torch.arange(Fr)
    cidx = idx // ch
    cc = cidx[None, :] <= cidx[:, None]  # clean -> clean
    nc = cidx[None, :] < cidx[:, None]  # noisy -> clean
    nn_ = cidx[None, :] == cidx[:, None]  # noisy -> noisy
    top = torch.cat([cc, torch.zeros_like(cc)], 1)
    bottom = torch.cat([nc, nn_], 1)
    allowed = torch.cat([top, bottom], 0)
    mask = allowed.repeat_interleave(P, 0).repeat_interleave(P, 1)[None, None]
    return torch.cat([clean, noisy], 1), torch.cat([idx, idx]), mask


def build(config: dict) -> CausalWan:
    return CausalWan(**config)


def load_dir(path: str | Path) -> CausalWan:
    state, config = load_model_dir(path)
    model = build(config)
    model.load_state_dict(state)
    return model
