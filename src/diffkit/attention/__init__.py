"""RoPeSLR: sparse + low-rank attention for 3D-RoPE video DiTs (arXiv 2605.20659).

Spike path: exact block-sparse softmax over the top-k key blocks of post-RoPE q/k in tile-major
order. Background path: head-wise low-rank features of pre-RoPE q/k plus a learnable 3D absolute
position embedding, over the complement of the selected blocks. RMS-matched gated merge. At
density 1 it equals dense attention exactly. See ``docs/attention.md``.

    from diffkit.attention import RoPeSLRConfig, apply_ropeslr_
    replaced = apply_ropeslr_(wan_transformer, RoPeSLRConfig(density=0.1))
"""

from diffkit.attention.background import RoPeSLRParams, fourier_ape
from diffkit.attention.config import RoPeSLRConfig
from diffkit.attention.layout import (
    block_mean,
    block_scores,
    forced_blocks,
    inverse_permutation,
    num_selected,
    select_blocks,
    selection_mask,
    tile_permutation,
)
from diffkit.attention.processors import (
    RoPeSLRHunyuanProcessor,
    RoPeSLRState,
    RoPeSLRWanProcessor,
    apply_ropeslr_,
    remove_ropeslr_,
    ropeslr_parameters,
    ropeslr_state,
    ropeslr_state_dict,
)
from diffkit.attention.ropeslr import BlockPlan, plan_blocks, ropeslr_attention
from diffkit.attention.sparse import block_sparse_flex, block_sparse_reference
from diffkit.attention.training import (
    AlignmentObjective,
    DensityAnneal,
    FinetuneObjective,
    freeze_backbone_,
)

__all__ = [
    "AlignmentObjective",
    "BlockPlan",
    "DensityAnneal",
    "FinetuneObjective",
    "RoPeSLRConfig",
    "RoPeSLRHunyuanProcessor",
    "RoPeSLRParams",
    "RoPeSLRState",
    "RoPeSLRWanProcessor",
    "apply_ropeslr_",
    "block_mean",
    "block_scores",
    "block_sparse_flex",
    "block_sparse_reference",
    "forced_blocks",
    "fourier_ape",
    "freeze_backbone_",
    "inverse_permutation",
    "num_selected",
    "plan_blocks",
    "remove_ropeslr_",
    "ropeslr_attention",
    "ropeslr_parameters",
    "ropeslr_state",
    "ropeslr_state_dict",
    "select_blocks",
    "selection_mask",
    "tile_permutation",
]
