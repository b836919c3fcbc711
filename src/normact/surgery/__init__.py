"""Model surgery: swap, convert and fold normalization and activation layers in models you did not write, and adapt
batch statistics to new data.

- :mod:`normact.surgery.swap`: :func:`swap` (any norm or activation, third-party classes included, weights carried
  over where they mean the same), :func:`save_swapped` / :func:`load_swapped` for Hugging Face folders.
- :mod:`normact.surgery.fold`: exact rewrites, each checked on the model: :func:`fold_batchnorm`,
  :func:`fold_norm_affine`, :func:`convert_preln_to_rmsnorm` (Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm),
  :func:`freeze_layernorm_scale` (LayerNorm with a frozen scale, for LN-free inference).
- :mod:`normact.surgery.adapt`: :func:`recalibrate_batchnorm` (AdaBN), :func:`renormalize` (rescale / reshift),
  :func:`train_norm_affine_only`, :func:`calibrate_batchnorm` (alpha-BN), :func:`freeze_batchnorm`.
- :mod:`normact.surgery.attention`: :func:`use_attention` (a transformers model's attention switched to any
  registered attention normalizer through transformers' AttentionInterface).

All of them stand on one private core: the matcher (``_match``: what a module is, across torch, normact,
transformers, timm and torchvision classes, matched by type, class names and duck typing, never imported here), the
data-flow graph (``_graph``) and the rewrite transaction (``_rewrite``: edits by path, derived constructor
arguments, carried weights, checks, undo on failure, and the reports' base class). ARCHITECTURE.md says how a new
rewrite is written on it.
"""

from normact.surgery.adapt import (
    ChannelStats,
    calibrate_batchnorm,
    channel_stats,
    find_batchnorms,
    freeze_batchnorm,
    recalibrate_batchnorm,
    renormalize,
    train_norm_affine_only,
    uncalibrate_batchnorm,
    unfreeze_batchnorm,
)
from normact.surgery.attention import AttentionReport, use_attention
from normact.surgery.fold import (
    ConversionReport,
    CRMSNormDecompress,
    FakeLayerNorm,
    Folded,
    FoldReport,
    RMSNormWithBias,
    convert_preln_to_rmsnorm,
    fold_batchnorm,
    fold_norm_affine,
    freeze_layernorm_scale,
)
from normact.surgery.swap import (
    LayoutAdapter,
    NormAct,
    Replacement,
    SwapReport,
    load_swapped,
    save_swapped,
    swap,
    swap_recipes,
)

__all__ = [
    "AttentionReport",
    "CRMSNormDecompress",
    "ChannelStats",
    "ConversionReport",
    "FakeLayerNorm",
    "FoldReport",
    "Folded",
    "LayoutAdapter",
    "NormAct",
    "RMSNormWithBias",
    "Replacement",
    "SwapReport",
    "calibrate_batchnorm",
    "channel_stats",
    "convert_preln_to_rmsnorm",
    "find_batchnorms",
    "fold_batchnorm",
    "fold_norm_affine",
    "freeze_batchnorm",
    "freeze_layernorm_scale",
    "load_swapped",
    "recalibrate_batchnorm",
    "renormalize",
    "save_swapped",
    "swap",
    "swap_recipes",
    "train_norm_affine_only",
    "uncalibrate_batchnorm",
    "unfreeze_batchnorm",
    "use_attention",
]
