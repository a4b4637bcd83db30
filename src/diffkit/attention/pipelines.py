"""RoPeSLR on every transformer of a diffusers pipeline, with one shared step state.

Wan2.2 A14B's ``WanPipeline`` holds two experts: ``transformer`` for the high-noise steps and
``transformer_2`` below ``boundary_ratio``. Both get RoPeSLR with one :class:`RoPeSLRState`, so
``dense_first_steps`` counts the steps of one sampling run across the switch (with a state each,
the low-noise expert would restart the count and run dense again). Single-transformer pipelines
(Wan2.1, Wan2.2 TI2V with ``expand_timesteps``, WanVACE, SkyReels-V2, HunyuanVideo) work the same.

    replaced = apply_ropeslr_pipeline_(pipe, RoPeSLRConfig(density=0.1, dense_first_steps=10))
    pipe.save_pretrained(d)                                 # each transformer records its config
    pipe2 = WanPipeline.from_pretrained(d)
    load_ropeslr_pipeline_(pipe2, d)
"""

from __future__ import annotations

from pathlib import Path

from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.persist import load_ropeslr_
from diffkit.attention.processors import apply_ropeslr_, remove_ropeslr_, ropeslr_state

#: pipeline components that may hold a transformer, in sampling order.
COMPONENTS = ("transformer", "transformer_2")


def _transformers(pipe) -> list[str]:
    names = [n for n in COMPONENTS if getattr(pipe, n, None) is not None]
    if not names:
        raise ValueError(f"{type(pipe).__name__} has no transformer component ({COMPONENTS})")
    return names


def apply_ropeslr_pipeline_(pipe, config: RoPeSLRConfig) -> dict[str, dict[str, object]]:
    """:func:`apply_ropeslr_` on each transformer of ``pipe`` with one shared state; returns
    {component: replaced processors} for :func:`remove_ropeslr_pipeline_`."""
    out, state = {}, None
    for name in _transformers(pipe):
        model = getattr(pipe, name)
        out[name] = apply_ropeslr_(model, config, state=state)
        state = ropeslr_state(model)
    return out


def remove_ropeslr_pipeline_(pipe, replaced: dict[str, dict[str, object]]) -> None:
    """Undo :func:`apply_ropeslr_pipeline_`."""
    for name, rep in replaced.items():
        remove_ropeslr_(getattr(pipe, name), rep)


def load_ropeslr_pipeline_(pipe, path: str | Path) -> dict[str, dict[str, object]]:
    """:func:`load_ropeslr_` for each transformer of a pipeline saved with ``save_pretrained``
    (from ``path/<component>``), with one shared state; the experts must share one config."""
    out, state = {}, None
    for name in _transformers(pipe):
        model = getattr(pipe, name)
        out[name] = load_ropeslr_(model, Path(path) / name, state=state)
        state = ropeslr_state(model)
    return out
