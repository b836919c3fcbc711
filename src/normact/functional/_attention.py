"""Shared pieces of the attention score normalizers (functional/attention*.py): the q/k/v check, the mask of the
scores to keep, the scores in float32 for half inputs, the weighted sum of the values."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import upcast

__all__: list[str] = []


def check_qkv(q: object, k: object, v: object, name: str) -> None:
    """q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) floating tensors of one dtype, else TypeError/ValueError
    naming ``name`` and the expected shapes."""
    for what, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {what} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {what} must be floating point, got {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name}: {what} must be (batch, heads, tokens, head_dim), got shape {tuple(t.shape)}")
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"{name}: q, k and v must share (batch, heads), got {tuple(q.shape[:2])}, {tuple(k.shape[:2])} and "
            f"{tuple(v.shape[:2])} (repeat the key/value heads for grouped-query attention)"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"{name}: q and k must have the same head_dim, got {q.shape[3]} and {k.shape[3]}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"{name}: k and v must have the same number of tokens, got {k.shape[2]} and {v.shape[2]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{name}: q, k and v must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")


def attention_keep_mask(
    q: Tensor, k: Tensor, causal: bool = False, mask: Tensor | None = None, name: str = "attention"
) -> Tensor | None:
    """The boolean (B or 1, H or 1, T, S) mask of the scores to keep (True), or None when every score is kept."""
    t, s = q.shape[2], k.shape[2]
    keep = None
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError(
                f"{name}: mask must be a boolean tensor (True = attend), got {getattr(mask, 'dtype', mask)}"
            )
        if mask.dim() == 2:
            if mask.shape != (q.shape[0], s):
                raise ValueError(f"{name}: a 2-D mask is (batch, keys) = {(q.shape[0], s)}, got {tuple(mask.shape)}")
            keep = mask[:, None, None, :]
        else:
            try:
                torch.broadcast_shapes(mask.shape, (q.shape[0], q.shape[1], t, s))
            except RuntimeError:
                raise ValueError(
                    f"{name}: mask must be (batch, keys) or broadcast to (batch, heads, queries, keys) = "
                    f"{(q.shape[0], q.shape[1], t, s)}, got {tuple(mask.shape)}"
                ) from None
            keep = mask if mask.dim() == 4 else mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        keep = keep.to(q.device)
    if causal:
        tri = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        keep = tri[None, None] if keep is None else keep & tri
    return keep


def score_matrix(q: Tensor, k: Tensor, scale: float | Tensor) -> Tensor:
    """``scale * q @ k^T`` (B, H, T, S), in float32 for float16/bfloat16 inputs."""
    qf, kf = upcast(q), upcast(k)
    return (qf @ kf.transpose(-2, -1)) * scale


def attend(weights: Tensor, v: Tensor, return_weights: bool) -> Tensor | tuple[Tensor, Tensor]:
    """``weights @ v`` in ``v``'s dtype, and the weights too when ``return_weights``."""
    out = (weights @ upcast(v)).to(v.dtype)
    return (out, weights.to(v.dtype)) if return_weights else out


def default_scale(q: Tensor, scale: float | None, name: str) -> float:
    """``scale``, checked positive, or 1/sqrt(head_dim)."""
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{name}: scale must be a positive number, got {scale!r}")
    return float(scale)
