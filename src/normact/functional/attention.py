r"""Attention score normalizers: how the scores :math:`s_{ts} = \langle q_t, k_s\rangle` become the weights that
average the values.

Every function takes ``q`` of shape (B, H, T, D), ``k`` (B, H, S, D) and ``v`` (B, H, S, Dv), a ``causal`` flag
(query t sees keys s <= t, aligned at the top left as in ``torch.nn.functional.scaled_dot_product_attention``) and an
optional boolean ``mask`` of the keys to attend (True = attend): (B, S) for padding, or any shape broadcasting to
(B, H, T, S). It returns the attended values (B, H, T, Dv), and with ``return_weights=True`` also the weights
(B, H, T, S). A query row with no key to attend gets zero weights and a zero output (never NaN). Scores and weights
of float16/bfloat16 inputs are computed in float32; softmax goes through ``scaled_dot_product_attention`` (its fused
kernels) unless the weights are requested or the inputs are float64 (then the explicit form runs, which autograd
differentiates twice; the fused CPU kernel has no double backward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import upcast
from normact.functional._attention import attend, attention_keep_mask, check_qkv, default_scale, score_matrix

__all__ = ["attention_keep_mask", "qk_norm_attention", "sigmoid_attention", "softmax_attention"]


def softmax_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Softmax attention (Vaswani et al., 2017): :math:`\mathrm{softmax}_s(\sigma\, q_t \cdot k_s)\, v_s` with
    :math:`\sigma` = ``scale`` (default :math:`1/\sqrt{D}`), through ``scaled_dot_product_attention``."""
    check_qkv(q, k, v, "softmax_attention")
    scale = default_scale(q, scale, "softmax_attention")
    fused = not return_weights and q.dtype != torch.float64
    if fused and causal and mask is None and k.shape[2] > 0:  # SDPA's own causal path (top-left, as here)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    keep = attention_keep_mask(q, k, causal, mask, "softmax_attention")
    empty = None if keep is None else ~keep.any(-1, keepdim=True)  # rows without a key
    if not fused:  # the weights, or float64: the explicit form, twice differentiable
        scores = score_matrix(q, k, scale)
        if keep is not None:
            scores = scores.masked_fill(~keep, float("-inf")).masked_fill(empty, 0.0)
        weights = torch.softmax(scores, dim=-1)
        if empty is not None:
            weights = weights.masked_fill(empty, 0.0)
        return attend(weights, v, return_weights)
    if keep is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep | empty, scale=scale)
    return out.masked_fill(empty, 0.0)


def sigmoid_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: float | None = None,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Sigmoid attention (Ramapuram et al., 2024, arXiv:2409.04431): :math:`\sigma(s\, q_t \cdot k_s + b)\, v_s`
    summed over the keys, without row normalization; ``bias`` b defaults to :math:`-\log S` (S keys), which makes
    each weight about 1/S at initialisation. Masked keys get weight 0."""
    check_qkv(q, k, v, "sigmoid_attention")
    scale = default_scale(q, scale, "sigmoid_attention")
    if bias is None:
        bias = -math.log(max(k.shape[2], 1))
    elif isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias):
        raise ValueError(f"sigmoid_attention: bias must be a finite number or None (-log S), got {bias!r}")
    weights = torch.sigmoid(score_matrix(q, k, scale) + bias)
    keep = attention_keep_mask(q, k, causal, mask, "sigmoid_attention")
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    return attend(weights, v, return_weights)


def qk_norm_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gain: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-12,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""QKNorm attention (Henry et al., 2020, arXiv:2010.04245): queries and keys L2-normalized over the head
    dimension, scores :math:`g\, \hat q_t \cdot \hat k_s \in [-g, g]` with the learnable scalar ``gain`` g in place
    of :math:`1/\sqrt{D}`, then softmax. ``eps`` guards zero vectors: :math:`\hat x = x / \max(\lVert x\rVert,
    \epsilon)`."""
    check_qkv(q, k, v, "qk_norm_attention")
    if not isinstance(gain, Tensor) or gain.numel() != 1:
        raise ValueError(f"qk_norm_attention: gain must be a one-element tensor, got {getattr(gain, 'shape', gain)}")
    qn = F.normalize(upcast(q), dim=-1, eps=eps)
    kn = F.normalize(upcast(k), dim=-1, eps=eps)
    qs = (qn * gain.reshape(())).to(q.dtype)
    return softmax_attention(qs, kn.to(k.dtype), v, causal, mask, 1.0, return_weights)
