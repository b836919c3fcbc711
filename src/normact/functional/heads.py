r"""Classifier heads on normalized features: feature normalization (FN) before a linear classifier (Zhang, Beitollahi,
Bie & Chen, 2023, arXiv:2308.09565)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_eps, check_tensor, check_trailing, upcast

__all__ = ["feature_norm_head", "normalize_features"]


def normalize_features(z: Tensor, eps: float = 1e-12) -> Tensor:
    r""":math:`\hat z = z / \max(\lVert z\rVert_2, \epsilon)` over the last dim (``torch.nn.functional.normalize``'s
    rule), in float32 for float16/bfloat16 input and returned in that float32 (the classifier's input)."""
    check_tensor(z, "normalize_features")
    if z.dim() < 1:
        raise ValueError(f"normalize_features expects input of shape (*, features), got shape {tuple(z.shape)}")
    eps = check_eps(eps)
    zf = upcast(z)
    return zf / torch.linalg.vector_norm(zf, ord=2, dim=-1, keepdim=True).clamp_min(eps)


def feature_norm_head(
    z: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    scale: float = 1.0,
    eps: float = 1e-12,
) -> Tensor:
    r"""Logits of a feature-normalized classifier: :math:`\tau\,(W \hat z + b)`, :math:`\hat z = z/\lVert z\rVert_2`
    over the last dim, ``weight`` W (classes, features), ``bias`` b (classes,) or None, ``scale`` :math:`\tau > 0`
    (the official code divides by a temperature, :math:`\tau = 1/T`). Invariant to :math:`z \to c z`, c > 0."""
    check_tensor(z, "feature_norm_head")
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(
            f"feature_norm_head: weight must be a (classes, features) tensor, got {getattr(weight, 'shape', weight)}"
        )
    check_trailing(z, (weight.shape[1],), "feature_norm_head")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"feature_norm_head: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"feature_norm_head: scale must be a positive number, got {scale!r}")
    unit = normalize_features(z, eps)
    logits = F.linear(unit, upcast(weight), None if bias is None else upcast(bias))
    return (logits * scale).to(z.dtype)
