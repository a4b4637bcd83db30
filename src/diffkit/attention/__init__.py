"""RoPeSLR: sparse + low-rank attention for 3D-RoPE video DiTs (arXiv 2605.20659).

Spike path: exact block-sparse softmax over the top-k key blocks of post-RoPE q/k in tile-major
order. Background path: head-wise low-rank features of pre-RoPE q/k plus a learnable 3D absolute
position embedding, over the complement of the selected blocks. RMS-matched gated merge. At
density 1 it equals dense attention exactly. See ``docs/attention.md``.

    from diffkit.attention import RoPeSLRConfig, apply_ropeslr_
    replaced = apply_ropeslr_(wan_transformer, RoPeSLRConfig(density=0.1))

Names are imported on first use (``__getattr__``), so ``import diffkit.attention.cli`` (the
``diffkit sparsify`` sub-app) does not import torch.
"""

from __future__ import annotations

from diffkit.lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    "background": ("RoPeSLRParams", "fourier_ape"),
    "causal": ("CausalRoPeSLRState", "RoPeSLRCausalSelfAttention", "causal_ropeslr_attention"),
    "config": ("RoPeSLRConfig",),
    "layout": (
        "block_mean",
        "block_scores",
        "forced_blocks",
        "inverse_permutation",
        "num_selected",
        "select_blocks",
        "selection_mask",
        "tile_permutation",
    ),
    "persist": ("load_ropeslr_", "read_ropeslr_record", "ropeslr_layers", "save_ropeslr"),
    "pipelines": (
        "apply_ropeslr_pipeline_",
        "load_ropeslr_pipeline_",
        "remove_ropeslr_pipeline_",
    ),
    "processors": (
        "RoPeSLRHunyuanProcessor",
        "RoPeSLRState",
        "RoPeSLRWanProcessor",
        "apply_ropeslr_",
        "remove_ropeslr_",
        "ropeslr_parameters",
        "ropeslr_state",
        "ropeslr_state_dict",
    ),
    "ropeslr": ("BlockPlan", "plan_blocks", "ropeslr_attention"),
    "sparse": ("block_sparse_flex", "block_sparse_reference"),
    "training": ("AlignmentObjective", "DensityAnneal", "FinetuneObjective", "freeze_backbone_"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _WHERE)
