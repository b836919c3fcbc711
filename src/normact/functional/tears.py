r"""FixNorm word embeddings as in "Transformers without Tears" (Nguyen & Salazar, 2019, arXiv:1910.05895): each row of
the embedding table normalized to a fixed length."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_eps, upcast

__all__ = ["fix_norm_embedding"]


def fix_norm_embedding(indices: Tensor, weight: Tensor, length: float, eps: float = 1e-12) -> Tensor:
    r"""FixNorm: :math:`e_i = g\, E_i / \max(\lVert E_i\rVert_2, \epsilon)` for the ids ``indices`` (any shape, an
    integer tensor) of the table ``weight`` E (num_embeddings, d), the fixed length ``length`` g; returns
    (*indices.shape, d). Only the looked-up rows are normalized (in float32 for half tables)."""
    if not isinstance(indices, Tensor) or indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(
            f"fix_norm_embedding expects an int64/int32 tensor of ids, got {getattr(indices, 'dtype', type(indices))}"
        )
    if not isinstance(weight, Tensor) or not weight.is_floating_point() or weight.dim() != 2:
        raise ValueError(
            f"fix_norm_embedding: weight must be a floating (num_embeddings, dim) table, got "
            f"{getattr(weight, 'shape', weight)}"
        )
    if isinstance(length, bool) or not isinstance(length, (int, float)) or not math.isfinite(length) or length <= 0:
        raise ValueError(f"fix_norm_embedding: length must be a positive number, got {length!r}")
    eps = check_eps(eps)
    rows = upcast(F.embedding(indices, weight))
    norm = torch.linalg.vector_norm(rows, ord=2, dim=-1, keepdim=True).clamp_min(eps)
    return (rows / norm * length).to(weight.dtype)
