"""``quantize_(model, config)``: one entry point, one handler per config type (torchao's shape).

    quantize_(model, QARVDConfig(w_bits=4, a_bits=8))                 # step="prepare"
    for k ...: with chunk(k): rollout chunk k                         # calibration, tagged
    quantize_(model, QARVDConfig(w_bits=4, a_bits=8, step="convert"))

``prepare`` swaps every ``nn.Linear`` chosen by ``filter_fn`` (default: not in ``config.skip``,
which follows the paper: time embedding/projection and the output head stay FP) for an observing
:class:`~diffkit.quantize.layers.QuantLinear`. ``convert`` then streams over the layers one at a
time: initialise weight/activation quantizers, optionally migrate (SmoothQuant), split outlier
columns (S2), reconstruct (AdaRound, chunk-weighted by S1), install integer weights, free that
layer's calibration rows, and pick the execution backend.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from diffkit.config import to_dict
from diffkit.quantize import kernels
from diffkit.quantize.adaround import AdaRoundSettings, adaround_layer
from diffkit.quantize.chunks import exponential_weights, normalized_weights
from diffkit.quantize.configs import (  # noqa: F401 (re-exported: the configs' old home)
    CONFIGS,
    DEFAULT_SKIP,
    AdaRoundConfig,
    PercentileConfig,
    PerLayerConfig,
    QARVDConfig,
    QuantConfig,
    RTNConfig,
    SmoothQuantConfig,
    config_from_dict,
)
from diffkit.quantize.fusion import fuse_mlps_, set_fused_
from diffkit.quantize.layers import QuantLinear
from diffkit.quantize.outliers import outlier_columns, s2_report
from diffkit.quantize.primitives import (
    PerChannel,
    PerTensor,
    QParams,
    choose_qparams,
    percentile_search,
    quantize,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- prepare
def default_filter(skip: tuple[str, ...]) -> Callable[[nn.Module, str], bool]:
    def f(module: nn.Module, name: str) -> bool:
        return isinstance(module, nn.Linear) and not any(s in name for s in skip)

    return f


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def _resolver(cfg) -> Callable[[str], QuantConfig | None]:
    return cfg.config_for if isinstance(cfg, PerLayerConfig) else (lambda name: cfg)


def _prepare(model, cfg, filter_fn) -> nn.Module:
    if quant_layers(model):
        raise ValueError(
            "model is already prepared/converted; call with step='convert' or start over"
        )
    config_for = _resolver(cfg)

    def keep(m: nn.Module, n: str) -> bool:
        c = config_for(n)
        if c is None or not isinstance(m, nn.Linear):
            return False
        return filter_fn(m, n) if filter_fn is not None else default_filter(c.skip)(m, n)

    names = [n for n, m in model.named_modules() if keep(m, n)]
    if not names:
        raise ValueError(
            f"no nn.Linear layer of {type(model).__name__} was selected (filter_fn / skip / rules)"
        )
    for i, n in enumerate(names):
        c = config_for(n)
        _set_module(
            model, n, QuantLinear(model.get_submodule(n), n, c.max_rows_per_chunk, c.seed + i)
        )
    log.info("prepared %d linear layers for %s", len(names), type(cfg).__name__)
    return model


# ----------------------------------------------------------------------------- convert
@dataclass
class _Ctx:
    cfg: QuantConfig
    chunk_w: torch.Tensor  # weight per chunk id
    a_bits: int  # effective activation bits (7 with reduce-range)
    keep_fp: bool


def _row_weights(tags: torch.Tensor, chunk_w: torch.Tensor) -> torch.Tensor:
    w = torch.ones(len(tags))
    ok = (tags >= 0) & (tags < len(chunk_w))
    w[ok] = chunk_w[tags[ok]]
    return w


def _w_qparams(w: torch.Tensor, cfg, minmax: bool) -> QParams:
    sym = cfg.w_bits == 8
    if minmax:
        return choose_qparams(w, cfg.w_bits, symmetric=sym, granularity=PerChannel(0))
    return percentile_search(
        w, cfg.w_bits, symmetric=sym, granularity=PerChannel(0), percentiles=cfg.percentiles
    )


def _a_qparams(x: torch.Tensor, bits: int, cfg, row_w: torch.Tensor, minmax: bool) -> QParams:
    if minmax:
        return choose_qparams(x, bits, symmetric=False, granularity=PerTensor())
    return percentile_search(
        x, bits, symmetric=False, percentiles=cfg.percentiles, sample_weight=row_w
    )


def _convert_layer(layer: QuantLinear, ctx: _Ctx) -> dict:
    """The shared pipeline; handlers choose which stages run."""
    cfg = ctx.cfg
    W = layer.fp.weight.detach().float()
    b = None if layer.fp.bias is None else layer.fp.bias.detach().float()
    X, tags = layer.calibration_data()
    row_w = _row_weights(tags, ctx.chunk_w)
    smooth = None
    if isinstance(cfg, SmoothQuantConfig):
        wmax = W.abs().amax(0).clamp_min(1e-5)
        smooth = (layer.absmax.clamp_min(1e-5).pow(cfg.alpha) / wmax.pow(1 - cfg.alpha)).clamp_min(
            1e-5
        )
        W, X = W * smooth, X / smooth
    perm, n_out = None, 0
    if isinstance(cfg, QARVDConfig) and cfg.s2 and any(s in layer.name for s in cfg.s2_scope):
        cols = outlier_columns(
            W, rule=cfg.s2_rule, z_threshold=cfg.s2_z, ratio=cfg.s2_ratio, multiple=cfg.s2_multiple
        )
        if len(cols):
            rest = torch.ones(W.shape[1], dtype=torch.bool)
            rest[cols] = False
            perm = torch.cat([cols, torch.nonzero(rest).flatten()])
            n_out = len(cols)
            W, X = W[:, perm], X[:, perm]
            if cfg.s1_off_in_s2_layers:
                row_w = torch.ones_like(row_w)
    groups = (
        [torch.arange(W.shape[1])]
        if n_out == 0
        else [torch.arange(n_out), torch.arange(n_out, W.shape[1])]
    )
    minmax = type(cfg) is RTNConfig
    w_qp, a_qp = [], []
    for gi, g in enumerate(groups):
        if n_out and gi == 0 and getattr(cfg, "outlier_branch", "int8") == "fp":
            w_qp.append(None)
            a_qp.append(None)
            continue
        w_qp.append(_w_qparams(W[:, g], cfg, minmax))
        a_qp.append(_a_qparams(X[:, g], ctx.a_bits, cfg, row_w, minmax))
    stats: dict = {"outlier_cols": n_out}
    if isinstance(cfg, AdaRoundConfig):
        settings = AdaRoundSettings(
            iters=cfg.iters,
            batch_rows=cfg.batch_rows,
            lam=cfg.lam,
            learn_act_step=cfg.learn_act_step,
        )
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + zlib.crc32(layer.name.encode()))
        with torch.enable_grad():
            codes, a_qp, ada = adaround_layer(W, b, X, row_w, groups, w_qp, a_qp, settings, gen)
        stats.update(ada)
    else:
        codes = [None if qp is None else quantize(W[:, g], qp) for g, qp in zip(groups, w_qp)]
    layer.set_quantized_(
        perm=perm, n_outlier=n_out, codes=codes, w_qparams=w_qp, a_qparams=a_qp,
        w_bits=cfg.w_bits, fp_groups=[W[:, g] for g in groups], smooth=smooth, bias=b,
        keep_fp=ctx.keep_fp,
    )  # fmt: skip
    return stats


# One handler per config type (torchao's registry shape). The shared pipeline above reads the
# config type to decide which stages run; a new method registers its own function here.
_HANDLERS: dict[type, Callable[[QuantLinear, _Ctx], dict]] = {
    RTNConfig: _convert_layer,
    PercentileConfig: _convert_layer,
    SmoothQuantConfig: _convert_layer,
    AdaRoundConfig: _convert_layer,
    QARVDConfig: _convert_layer,
}


def chunk_weights_for(cfg: QuantConfig, num_chunks: int) -> torch.Tensor:
    """w_k = s_k / mean(s) for the config's S1 option (uniform for non-Q-ARVD configs)."""
    if not isinstance(cfg, QARVDConfig) or cfg.chunk_weighting == "uniform" or num_chunks < 1:
        return torch.ones(max(num_chunks, 1))
    if cfg.chunk_weighting == "given":
        s = list(cfg.chunk_sensitivities)
        if len(s) < num_chunks:
            raise ValueError(
                f"chunk_sensitivities has {len(s)} entries but calibration saw {num_chunks} chunks"
            )
        return normalized_weights(s[:num_chunks])
    return normalized_weights(exponential_weights(num_chunks, cfg.chunk_decay))


def _convert(model, cfg, keep_fp: bool, progress: bool = False) -> nn.Module:
    layers = {n: m for n, m in quant_layers(model).items() if not m.converted}
    if not layers:
        raise ValueError("no prepared layers: call quantize_(model, cfg) with step='prepare' first")
    empty = [n for n, m in layers.items() if not m.rows]
    if empty:
        raise RuntimeError(
            f"calibration was never run for {len(empty)} layer(s) (e.g. {empty[0]!r}): run "
            "calibration forward passes between step='prepare' and step='convert'"
        )
    config_for = _resolver(cfg)
    device = _device(model)
    num_chunks = 1 + max((max(k for k in m.rows) for m in layers.values()), default=-1)
    ctxs: dict = {}  # one context (backend, chunk weights, activation bits) per distinct config

    def ctx_for(c) -> tuple[_Ctx, str]:
        if c not in ctxs:
            backend = kernels.resolve_backend(c.backend, device)
            reduce = c.act_reduce_range == "on" or (
                c.act_reduce_range == "auto" and c.a_bits == 8 and backend == "onednn"
                and not kernels.full_range_exact()
            )  # fmt: skip
            a_bits = 7 if reduce else c.a_bits
            ctxs[c] = (_Ctx(c, chunk_weights_for(c, num_chunks), a_bits, keep_fp), backend)
        return ctxs[c]

    stats = {}
    items = list(layers.items())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"convert {type(cfg).__name__}", unit="layer")
    for name, layer in items:  # streamed: each layer's rows are freed after it
        c = config_for(name)
        if c is None:
            raise ValueError(f"layer {name!r} was prepared but no config covers it now")
        ctx, backend = ctx_for(c)
        stats[name] = _HANDLERS[type(c)](layer, ctx)
        layer.set_mode_(backend, compile_act_quant=c.compile_act_quant)
    counts = {n: s["outlier_cols"] for n, s in stats.items()}
    backends = sorted({b for _, b in ctxs.values()})
    first = next(iter(ctxs.values()))[0]
    model.quantize_info = {
        "config_type": type(cfg).__name__,
        "config": _config_record(cfg),
        "backend": backends[0] if len(backends) == 1 else backends,
        "act_bits_effective": first.a_bits,
        "chunk_weights": first.chunk_w.tolist(),
        "s2": s2_report(counts, {n: layers[n].in_features for n in layers}),
        "layer_stats": stats,
        "fused_mlps": fuse_mlps_(model),
    }
    log.info(
        "converted %d layers (%s, %d config(s), backend %s)",
        len(layers), type(cfg).__name__, len(ctxs), "/".join(backends),
    )  # fmt: skip
    return model


def _config_record(cfg) -> dict:
    if isinstance(cfg, PerLayerConfig):
        entry = lambda c: None if c is None else {"method": type(c).__name__, **to_dict(c)}  # noqa: E731
        return {
            "rules": [[pat, entry(dataclasses.replace(c, step="convert"))] for pat, c in cfg.rules],
            "default": entry(cfg.default and dataclasses.replace(cfg.default, step="convert")),
        }
    return to_dict(dataclasses.replace(cfg, step="convert"))


def summary(model: nn.Module) -> list[dict]:
    """One row per quantized layer: name, bits, outlier columns, bytes (and fp32 bytes)."""
    return [{"name": n, **m.summary()} for n, m in quant_layers(model).items() if m.converted]


def format_summary(rows: list[dict]) -> str:
    """A plain-text table of :func:`summary` rows with a total line."""
    head = f"{'layer':<40} {'W':>2} {'A':>2} {'in':>6} {'out':>6} {'outl':>5} {'bytes':>11} {'x fp32':>7}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name'][-40:]:<40} {r['w_bits']:>2} {r['a_bits'] or '-':>2} {r['in']:>6} "
            f"{r['out']:>6} {r['outlier_cols']:>5} {r['bytes']:>11,} {r['bytes'] / r['fp32_bytes']:>7.3f}"
        )
    q, fp = sum(r["bytes"] for r in rows), sum(r["fp32_bytes"] for r in rows)
    lines.append(f"{len(rows)} layers: {q:,} bytes vs {fp:,} in fp32 ({q / max(fp, 1):.3f}x)")
    return "\n".join(lines)


def quantize_(
    model: nn.Module,
    config: QuantConfig,
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    keep_fp: bool = False,
    progress: bool = False,
) -> nn.Module:
    """Prepare or convert ``model`` in place (see the module docstring); returns it.

    ``config`` is one config for every selected layer, or a :class:`PerLayerConfig`.
    ``filter_fn(module, qualified_name) -> bool`` replaces the default choice of layers (every
    ``nn.Linear`` whose name contains none of ``config.skip``) at prepare.

    ``keep_fp`` keeps the FP weights beside the integers after convert, which
    :func:`~diffkit.quantize.chunks.only_chunks` needs (the S1 sensitivity protocol).
    ``progress`` shows a progress bar over the layers during convert (used by the CLI).
    """
    if type(config) not in _HANDLERS and not isinstance(config, PerLayerConfig):
        raise ValueError(
            f"unsupported config {type(config).__name__}; use one of {', '.join(CONFIGS)} "
            "or PerLayerConfig"
        )
    if config.step == "prepare":
        return _prepare(model, config, filter_fn)
    return _convert(model, config, keep_fp, progress)


def set_backend_(
    model: nn.Module,
    backend: str,
    *,
    compile_act_quant: bool | None = None,
    fuse_mlps: bool | None = None,
) -> nn.Module:
    """Switch every converted layer between 'simulate', 'onednn' and 'cuda' (and, when given,
    the compiled activation quantizer on or off; see the configs' ``compile_act_quant``).

    ``Linear -> GELU -> Linear`` blocks of quantized layers are fused (:mod:`.fusion`) here if
    they are not yet; ``fuse_mlps`` (None: unchanged) turns their fused path on or off."""
    resolved = kernels.resolve_backend(backend, _device(model))
    for m in quant_layers(model).values():
        m.set_mode_(resolved, compile_act_quant)
    fuse_mlps_(model)
    if fuse_mlps is not None:
        set_fused_(model, fuse_mlps)
    info = getattr(model, "quantize_info", None)
    if isinstance(info, dict):
        info["backend"] = resolved
    return model


def _device(model: nn.Module) -> torch.device:
    for t in [*model.parameters(), *model.buffers()]:
        if not t.is_meta:
            return t.device
    return torch.device("cpu")
