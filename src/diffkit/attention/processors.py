"""Drop-in diffusers attention processors: ``apply_ropeslr_(transformer, RoPeSLRConfig)``.

* The Wan family: ``WanTransformer3DModel`` (Wan2.1, both experts of Wan2.2 A14B, Wan2.2 TI2V),
  ``WanVACETransformer3DModel`` (``blocks.*`` and ``vace_blocks.*``) and
  ``SkyReelsV2Transformer3DModel``: every self-attention ``*.attn1`` gets a
  :class:`RoPeSLRWanProcessor` (cross-attention ``attn2`` is untouched). The processor reproduces
  ``WanAttnProcessor`` (projections, RMSNorm across heads, interleaved 3D RoPE, output projection)
  and replaces only the attention itself.
* ``HunyuanVideoTransformer3DModel``: the joint video+text attentions of the dual-stream
  (``transformer_blocks.*.attn``) and single-stream (``single_transformer_blocks.*.attn``) blocks.
  RoPE and sparsity act on the video tokens; text tokens are a dense "sink" segment: every video
  query attends them exactly, and text queries attend all tokens densely (key padding honoured).
* diffkit's causal zoo DiT ``CausalWan``: every block's ``self_attn`` is wrapped, respecting the
  block-causal mask and the KV cache (:mod:`diffkit.attention.causal`).

The grid shape is not passed to processors, so a forward pre-hook on the transformer reads the
latent shape and patch size into a shared :class:`RoPeSLRState`. The processors are ``nn.Module``
objects, so their parameters appear in ``transformer.state_dict()`` and are saved with it.
``apply_ropeslr_`` returns the replaced processors; :func:`remove_ropeslr_` restores them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.attention.background import RoPeSLRParams
from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.ropeslr import ropeslr_attention
from diffkit.core.rope import apply_rope, split_3d

log = logging.getLogger(__name__)

#: key of the RoPeSLR record (config + layers) in a diffusers model's config.json.
RECORD_KEY = "_ropeslr"

#: transformer class -> processor family ("wan": self-attention ``*.attn1``; "hunyuan": joint).
SUPPORTED = {
    "WanTransformer3DModel": "wan",
    "WanVACETransformer3DModel": "wan",
    "SkyReelsV2Transformer3DModel": "wan",
    "HunyuanVideoTransformer3DModel": "hunyuan",
    "CausalWan": "causal",  # diffkit's causal zoo DiT: attention.causal (block-causal, KV cache)
}


@dataclass
class RoPeSLRState:
    """Per-forward context shared by a transformer's RoPeSLR processors (not a module).

    ``mode``: "sparse" (RoPeSLR), "dense" (the original attention, e.g. a teacher pass), "align"
    (compute both, record the per-layer MSE, pass the dense output on: stage-1 alignment) or
    "aux" (compute both, record the MSE, pass the sparse output on: stage-2 auxiliary loss).

    ``dense_step`` is the ``dense_first_steps`` decision of the current call, made by the
    transformer's pre-hook: a Python bool when the hook runs eagerly (plain eager use, or
    ``compile_repeated_blocks``: the compiled blocks then hold one variant per value, at most two),
    a 0-d bool tensor when the hook itself is traced (``torch.compile(model)``, ``torch.export``),
    where the processors branch on it with ``torch.cond`` inside the one graph. ``step`` and
    ``last_t`` are the eager counter; the traced one lives in the transformer's non-persistent
    buffers ``_ropeslr_step`` / ``_ropeslr_last_t``. ``layer_errors`` maps layer -> detached
    per-layer MSE tensor (align/aux modes).
    """

    config: RoPeSLRConfig
    grid: tuple[int, int, int] | None = None
    step: int = 0
    last_t: float | None = None
    dense_step: bool | torch.Tensor = False
    mode: str = "sparse"
    density: float | None = None
    losses: list = field(default_factory=list)
    layer_errors: dict = field(default_factory=dict)
    # The transformer whose buffers hold the traced counter. Transformers that share this state
    # (Wan2.2's two experts) read and write that one's buffers, so under torch.compile they count
    # one sampling run's steps together, as the eager counter does; it moves with ``pipe.to()``.
    counter_owner: nn.Module | None = field(default=None, repr=False, compare=False)


def _noise_level(timestep: torch.Tensor) -> torch.Tensor:
    """The call's noise level: the largest timestep of the batch and tokens. Per-token timesteps
    give conditioning tokens t = 0 (Wan2.2 TI2V's first frame), so the first entry is not it."""
    return torch.as_tensor(timestep).detach().float().amax()


def _observe(state: RoPeSLRState, grid: tuple[int, int, int], timestep) -> None:
    """Eager step counter: step 0 when a sampling run starts (t rises), +1 when t falls."""
    state.grid = grid
    if timestep is None or not state.config.dense_first_steps:
        state.dense_step = False
        return
    t = float(_noise_level(timestep))
    if state.last_t is None or t > state.last_t:  # a new sampling run starts from high noise
        state.step = 0
    elif t < state.last_t:
        state.step += 1
    state.last_t = t
    state.dense_step = state.step < state.config.dense_first_steps


def _observe_traced(state: RoPeSLRState, module: nn.Module, grid, timestep) -> None:
    """:func:`_observe` as tensor ops on the transformer's buffers, for a traced hook (no Python
    value depends on the timestep, so there is no graph break and no guard on the step). The
    last timestep is kept as the int32 bits of its fp32 value: ``model.to(dtype)`` casts floating
    buffers, and bf16 would merge neighbouring timesteps."""
    state.grid = grid
    if timestep is None or not state.config.dense_first_steps:
        state.dense_step = False
        return
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(timestep, FakeTensor):  # only torch.export's non-strict mode shows fakes
        raise ValueError(
            "RoPeSLRConfig.dense_first_steps="
            f"{state.config.dense_first_steps}: torch.export's default non-strict tracing cannot "
            "trace the dense/sparse torch.cond (PyTorch 2.13); export with "
            "torch.export.export(..., strict=True), or with dense_first_steps=0"
        )
    t = _noise_level(timestep)
    last = module._ropeslr_last_t.view(torch.float32)
    step = module._ropeslr_step
    step = torch.where(t > last, torch.zeros_like(step), step + (t < last).to(step.dtype))
    module._ropeslr_step.copy_(step)
    module._ropeslr_last_t.copy_(t.view(torch.int32))
    state.dense_step = step < state.config.dense_first_steps


class _RoPeSLRProcessorBase(nn.Module):
    def __init__(self, config: RoPeSLRConfig, heads: int, head_dim: int, layer: int, state) -> None:
        super().__init__()
        self.config, self.layer, self.heads = config, layer, heads
        # Decided here, not per call: a per-layer int read in the forward would make a compiled
        # block recompile for every layer (compile_repeated_blocks).
        self.dense_layer = layer < config.dense_first_layers
        self.params = RoPeSLRParams(config, heads, head_dim)
        object.__setattr__(self, "state", state)  # shared, not a submodule

    def _attend(self, q, k, v, q_pre, k_pre, grid, sink=(None, None, None)) -> torch.Tensor:
        """(B, H, L, d) tensors -> attention output, honouring mode and dense switches.

        ``dense_first_steps`` applies to sampling ("sparse" mode) only; training modes see
        random timesteps, which are not a sampling run.
        """
        st = self.state
        if st.mode == "dense" or self.dense_layer:
            return self._dense(q, k, v, sink)
        dense_step = st.dense_step if st.mode == "sparse" else False
        if isinstance(dense_step, torch.Tensor):  # traced hook: both branches in one graph
            return self._cond(dense_step, q, k, v, q_pre, k_pre, grid, sink)
        if dense_step:
            return self._dense(q, k, v, sink)
        return self._ropeslr(q, k, v, q_pre, k_pre, grid, sink)

    def _cond(self, dense_step, q, k, v, q_pre, k_pre, grid, sink) -> torch.Tensor:
        """``torch.cond`` between the dense and the RoPeSLR attention. Its operands must not alias
        one another (HunyuanVideo's video and text keys are views of one tensor), so they are
        copied (O(L d), against the attention's O(L^2 d density)); both branches return
        contiguous outputs (cond needs one memory layout)."""
        args = (q, k, v, q_pre, k_pre, *sink)
        present = [a is not None for a in args]
        operands = tuple(a.clone() for a in args if a is not None)

        def unpack(xs):
            it = iter(xs)
            return [next(it) if p else None for p in present]

        def dense(*xs):
            a = unpack(xs)
            return self._dense(a[0], a[1], a[2], tuple(a[5:])).contiguous()

        def sparse(*xs):
            a = unpack(xs)
            return self._ropeslr(*a[:5], grid, tuple(a[5:])).contiguous()

        return torch.cond(dense_step, dense, sparse, operands)

    def _ropeslr(self, q, k, v, q_pre, k_pre, grid, sink) -> torch.Tensor:
        st = self.state
        dense = None
        if st.mode in ("align", "aux") or self.config.dense_heads:
            with torch.set_grad_enabled(
                torch.is_grad_enabled() and st.mode not in ("align", "aux")
            ):
                dense = self._dense(q, k, v, sink)
        out = self._sparse(q, k, v, q_pre, k_pre, grid, sink)
        if self.config.dense_heads:
            heads = [h for h in self.config.dense_heads if h < self.heads]
            out = out.clone()
            out[:, heads] = dense[:, heads]
        if st.mode in ("align", "aux"):
            dense = dense.detach()
            err = (out - dense).pow(2).mean()
            st.losses.append(err / dense.pow(2).mean().clamp(min=1e-12))
            st.layer_errors[self.layer] = err.detach()
            return dense if st.mode == "align" else out
        return out

    def _sparse(self, q, k, v, q_pre, k_pre, grid, sink) -> torch.Tensor:
        """The RoPeSLR attention itself (a subclass with another token layout overrides it)."""
        return ropeslr_attention(
            q,
            k,
            v,
            config=self.config,
            params=self.params,
            q_pre=q_pre,
            k_pre=k_pre,
            grid=grid,
            density=self.state.density,
            sink_k=sink[0],
            sink_v=sink[1],
            sink_mask=sink[2],
        )

    @staticmethod
    def _dense(q, k, v, sink) -> torch.Tensor:
        if sink[0] is None:
            return F.scaled_dot_product_attention(q, k, v)
        kk, vv = torch.cat([k, sink[0]], 2), torch.cat([v, sink[1]], 2)
        mask = None
        if sink[2] is not None:
            ones = torch.ones(q.shape[0], k.shape[2], dtype=torch.bool, device=q.device)
            mask = torch.cat([ones, sink[2].bool()], 1)[:, None, None, :]
        return F.scaled_dot_product_attention(q, kk, vv, attn_mask=mask)


class RoPeSLRWanProcessor(_RoPeSLRProcessorBase):
    """RoPeSLR for ``WanAttention`` self-attention (``attn1``); same I/O as ``WanAttnProcessor``."""

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None
    ):
        if encoder_hidden_states is not None or attn.add_k_proj is not None:
            raise ValueError("RoPeSLRWanProcessor is for self-attention (attn1) only")
        if attention_mask is not None:
            raise ValueError(
                "RoPeSLRWanProcessor does not support an attention_mask (SkyReels-V2 diffusion "
                "forcing with causal blocks, num_frame_per_block > 1, passes one)"
            )
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))  # (B, S, H, D)
        q_pre, k_pre = q, k
        if rotary_emb is not None:
            cos, sin = rotary_emb
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        tr = [t.transpose(1, 2) for t in (q, k, v, q_pre, k_pre)]  # (B, H, S, D)
        grid = self.state.grid
        if grid is not None and grid[0] * grid[1] * grid[2] != q.shape[1]:
            grid = None
        out = self._attend(*tr, grid)
        out = out.transpose(1, 2).flatten(2, 3).type_as(hidden_states)
        return attn.to_out[1](attn.to_out[0](out))


class RoPeSLRHunyuanProcessor(_RoPeSLRProcessorBase):
    """RoPeSLR for HunyuanVideo's joint attention; same I/O as ``HunyuanVideoAttnProcessor2_0``."""

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
    ):
        from diffusers.models.embeddings import apply_rotary_emb

        joint = attn.add_q_proj is None and encoder_hidden_states is not None
        if joint:
            hidden_states = torch.cat([hidden_states, encoder_hidden_states], dim=1)
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k, v = (t.unflatten(2, (attn.heads, -1)) for t in (q, k, v))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        n_txt = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else 0
        n_vid = hidden_states.shape[1] - (n_txt if joint else 0)
        if attn.add_q_proj is not None and encoder_hidden_states is not None:
            eq = attn.add_q_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ek = attn.add_k_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            ev = attn.add_v_proj(encoder_hidden_states).unflatten(2, (attn.heads, -1))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            q, k, v = torch.cat([q, eq], 1), torch.cat([k, ek], 1), torch.cat([v, ev], 1)
        qv_pre, kv_pre = q[:, :n_vid], k[:, :n_vid]
        qv, kv = qv_pre, kv_pre
        if image_rotary_emb is not None:
            qv = apply_rotary_emb(qv, image_rotary_emb, sequence_dim=1)
            kv = apply_rotary_emb(kv, image_rotary_emb, sequence_dim=1)
        t = lambda x: x.transpose(1, 2)  # noqa: E731  (B, S, H, D) -> (B, H, S, D)
        key_mask = None
        if attention_mask is not None and n_txt:
            key_mask = attention_mask.reshape(attention_mask.shape[0], -1)[:, n_vid:].bool()
        sink = (t(k[:, n_vid:]), t(v[:, n_vid:]), key_mask) if n_txt else (None, None, None)
        grid = self.state.grid
        if grid is not None and grid[0] * grid[1] * grid[2] != n_vid:
            grid = None
        o_vid = self._attend(t(qv), t(kv), t(v[:, :n_vid]), t(qv_pre), t(kv_pre), grid, sink)
        outs = [o_vid]
        if n_txt:  # text queries: dense over all keys (video keys with RoPE)
            k_all = torch.cat([t(kv), sink[0]], 2)
            v_all = torch.cat([t(v[:, :n_vid]), sink[1]], 2)
            mask = None
            if attention_mask is not None:
                mask = attention_mask.reshape(attention_mask.shape[0], 1, 1, -1).bool()
            outs.append(
                F.scaled_dot_product_attention(t(q[:, n_vid:]), k_all, v_all, attn_mask=mask)
            )
        hs = torch.cat(outs, 2).transpose(1, 2).flatten(2, 3).to(q.dtype)
        if encoder_hidden_states is None:
            return hs
        hs, enc = hs[:, :n_vid], hs[:, n_vid:]
        if getattr(attn, "to_out", None) is not None:
            hs = attn.to_out[1](attn.to_out[0](hs))
        if getattr(attn, "to_add_out", None) is not None:
            enc = attn.to_add_out(enc)
        return hs, enc


def _family(transformer) -> str:
    """The processor family of a supported class (or a subclass of one), else a ValueError."""
    for cls in type(transformer).__mro__:
        if cls.__name__ in SUPPORTED:
            return SUPPORTED[cls.__name__]
    raise ValueError(
        f"apply_ropeslr_ does not support {type(transformer).__name__}; supported transformer "
        f"classes: {', '.join(SUPPORTED)}"
    )


def _targets(transformer) -> tuple[str, list[tuple[str, nn.Module]], tuple[int, int, int]]:
    kind = _family(transformer)
    cfg = transformer.config
    if kind == "wan":
        mods = [(n, m) for n, m in transformer.named_modules() if n.endswith(".attn1")]
        return "wan", mods, tuple(cfg.patch_size)
    mods = [
        (n, m)
        for n, m in transformer.named_modules()
        if n.endswith(".attn")
        and n.startswith(("transformer_blocks.", "single_transformer_blocks."))
    ]
    return "hunyuan", mods, (cfg.patch_size_t, cfg.patch_size, cfg.patch_size)


def apply_ropeslr_(
    transformer: nn.Module,
    config: RoPeSLRConfig,
    layers: list[int] | None = None,
    *,
    state: RoPeSLRState | None = None,
) -> dict[str, object]:
    """Install RoPeSLR processors in place; returns {module name: replaced processor}.

    ``layers`` restricts to these self-attention layer indices (default: all). The new
    parameters follow the attention weights' dtype and device (not the transformer's first
    parameter: diffusers keeps some, e.g. Wan's ``scale_shift_table``, in fp32). ``state`` shares
    another transformer's :class:`RoPeSLRState` (same config): the two experts of a Wan2.2
    pipeline then count one sampling run's steps together (see :func:`apply_ropeslr_pipeline_`).
    The config and layers are recorded in the model's diffusers config (private key
    ``_ropeslr``), so ``save_pretrained`` writes them and :func:`load_ropeslr_` restores them.
    """
    if getattr(transformer, "_ropeslr_state", None) is not None:
        raise ValueError("RoPeSLR is already applied to this transformer; remove_ropeslr_ first")
    if _family(transformer) == "causal":
        from diffkit.attention.causal import apply_causal_ropeslr_

        return apply_causal_ropeslr_(transformer, config, layers, state=state)
    kind, mods, patch = _targets(transformer)
    heads = mods[0][1].heads
    head_dim = mods[0][1].to_q.out_features // heads
    try:
        split_3d(head_dim)
    except ValueError as e:
        raise ValueError(f"RoPeSLR needs a head_dim that the 3D split can divide: {e}") from None
    if state is not None and state.config != config:
        raise ValueError("apply_ropeslr_(state=...): the shared state holds a different config")
    state = RoPeSLRState(config=config) if state is None else state
    cls = RoPeSLRWanProcessor if kind == "wan" else RoPeSLRHunyuanProcessor
    ref = mods[0][1].to_q.weight
    if not ref.dtype.is_floating_point:  # e.g. an integer-quantized projection
        ref = next(p for p in transformer.parameters() if p.dtype.is_floating_point)
    replaced = {}
    for i, (name, mod) in enumerate(mods):
        if layers is not None and i not in layers:
            continue
        replaced[name] = mod.processor
        proc = cls(config, heads, head_dim, i, state).to(device=ref.device, dtype=ref.dtype)
        mod.set_processor(proc)

    # The traced step counter (see RoPeSLRState); int buffers, so model.to(dtype) leaves them.
    # Held by the first transformer of a shared state only (see RoPeSLRState.counter_owner).
    if state.counter_owner is None:
        last_t = torch.tensor(float("-inf"), dtype=torch.float32).view(torch.int32)
        transformer.register_buffer("_ropeslr_last_t", last_t.to(ref.device), persistent=False)
        step = torch.zeros((), dtype=torch.long, device=ref.device)
        transformer.register_buffer("_ropeslr_step", step, persistent=False)
        state.counter_owner = transformer

    def hook(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        ts = args[1] if len(args) > 1 else kwargs.get("timestep")
        f, h, w = x.shape[-3:]
        grid = (f // patch[0], h // patch[1], w // patch[2])
        if torch.compiler.is_compiling():
            _observe_traced(state, state.counter_owner, grid, ts)
        else:
            _observe(state, grid, ts)

    handle = transformer.register_forward_pre_hook(hook, with_kwargs=True)
    transformer._ropeslr_state = state
    transformer._ropeslr_hook = handle
    _record_config(transformer, config, _layer_ids(replaced, mods))
    log.info("RoPeSLR installed on %d %s attention layers", len(replaced), kind)
    return replaced


def remove_ropeslr_(transformer: nn.Module, replaced: dict[str, object]) -> None:
    """Undo :func:`apply_ropeslr_`: restore the processors and drop the hook (``CausalWan``:
    restore the ``SelfAttention`` modules, see :mod:`diffkit.attention.causal`)."""
    if _family(transformer) == "causal":
        from diffkit.attention.causal import remove_causal_ropeslr_

        return remove_causal_ropeslr_(transformer, replaced)
    mods = dict(transformer.named_modules())
    for name, proc in replaced.items():
        mods[name].set_processor(proc)
    handle = getattr(transformer, "_ropeslr_hook", None)
    if handle is not None:
        handle.remove()
    for name in ("_ropeslr_step", "_ropeslr_last_t"):
        transformer._buffers.pop(name, None)
    state = getattr(transformer, "_ropeslr_state", None)
    if state is not None and state.counter_owner is transformer:
        state.counter_owner = None
    transformer._ropeslr_state = None
    transformer._ropeslr_hook = None
    _record_config(transformer, None, None)


def _layer_ids(replaced: dict, mods: list[tuple[str, nn.Module]]) -> list[int]:
    return [i for i, (name, _) in enumerate(mods) if name in replaced]


def _record_config(transformer: nn.Module, config: RoPeSLRConfig | None, layers) -> None:
    """Write (or, with None, drop) ``_ropeslr`` in a diffusers model's config: ``save_pretrained``
    writes private keys to config.json and ``from_pretrained`` does not pass them to __init__."""
    internal = getattr(transformer, "_internal_dict", None)
    if internal is None:
        return
    from diffkit import config as cfglib

    data = {k: v for k, v in internal.items() if k != RECORD_KEY}
    if config is not None:
        data[RECORD_KEY] = {"config": cfglib.to_dict(config), "layers": list(layers)}
    transformer._internal_dict = type(internal)(data)


def ropeslr_state(transformer: nn.Module) -> RoPeSLRState:
    """The shared state of a transformer with RoPeSLR applied."""
    st = getattr(transformer, "_ropeslr_state", None)
    if st is None:
        raise ValueError("RoPeSLR is not applied to this transformer; call apply_ropeslr_ first")
    return st


def ropeslr_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    """The new RoPeSLR parameters (what stage-1 alignment trains)."""
    return [p for n, p in transformer.named_parameters() if ".processor.params." in n]


def ropeslr_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """Only the RoPeSLR entries of ``transformer.state_dict()``."""
    return {k: v for k, v in transformer.state_dict().items() if ".processor.params." in k}
