r"""nGPT, the normalized transformer (Loshchilov, Hsieh, Sun, Ginsburg, 2024, arXiv:2410.01131), stateless: every
hidden state lives on the unit hypersphere and each sub-layer moves it part of the way towards its own normalized
output,

.. math::
    h \leftarrow \mathrm{Norm}\big(h + |\alpha| \odot (\mathrm{Norm}(h_{\text{branch}}) - h)\big),\qquad
    \mathrm{Norm}(x) = x / \lVert x\rVert_2,

with a learnable per-dimension "eigen learning rate" :math:`\alpha`. The learnable scales of nGPT (:math:`\alpha_A`,
:math:`\alpha_M`, :math:`s_{qk}`, :math:`s_u`, :math:`s_\nu`, :math:`s_z`) are stored as ``base_scale`` times their
initial value's direction and used as ``stored * (init / base_scale)`` (:func:`ngpt_scaled`), which sets their
effective learning rate under Adam. The functions here take the *used* (effective) values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_tensor, shape_str, upcast
from normact.functional.act import swiglu
from normact.functional.attention import softmax_attention
from normact.functional.block import merge_heads, rotary, split_heads

__all__ = ["ngpt_attention", "ngpt_block", "ngpt_mlp", "ngpt_normalize", "ngpt_scaled", "ngpt_update"]

DEFAULT_EPS = 1e-6
"""The smallest norm divided by (a zero vector stays zero, with finite gradients, instead of becoming NaN)."""


def ngpt_normalize(x: Tensor, dim: int = -1, eps: float = DEFAULT_EPS) -> Tensor:
    r"""nGPT's Norm: :math:`x / \max(\lVert x\rVert_2, \epsilon)` along ``dim``, the norm in float32 for
    float16/bfloat16 inputs; the result has ``x``'s dtype. The official code divides by the norm alone; ``eps``
    only matters for (near-)zero vectors."""
    xf = upcast(x)
    norm = torch.linalg.vector_norm(xf, dim=dim, keepdim=True)
    return (xf / norm.clamp_min(eps)).to(x.dtype)


def ngpt_scaled(stored: Tensor, init: float, base_scale: float) -> Tensor:
    r"""The used value of an nGPT scale stored as ``base_scale`` at initialisation: ``stored * (init / base_scale)``
    (e.g. :math:`\alpha_A` stored as :math:`1/\sqrt{d}` and used as :math:`0.05` at init)."""
    return stored * (init / base_scale)


def ngpt_update(h: Tensor, branch: Tensor, alpha: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    r"""The normalized residual update :math:`\mathrm{Norm}(h + |\alpha| \odot (\mathrm{Norm}(b) - h))` of unit-norm
    hidden states ``h`` (*, D) towards the branch output ``b`` (*, D), with the eigen learning rate ``alpha`` (D,)
    (its absolute value, as in the official code). :math:`\alpha = 0` keeps ``h``; :math:`\alpha = 1` gives
    :math:`\mathrm{Norm}(b)`."""
    target = ngpt_normalize(branch, eps=eps)
    return ngpt_normalize(h + alpha.abs() * (target - h), eps=eps)


def ngpt_attention(
    h: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    out_weight: Tensor,
    s_qk: Tensor,
    heads: int,
    causal: bool = False,
    mask: Tensor | None = None,
    rope_base: float | None = None,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    r"""nGPT's self-attention of ``h`` (B, T, D): per head, queries and keys (after RoPE when ``rope_base`` is
    given) are normalized over the head dimension and scaled by the used :math:`s_{qk}` (D,) (one value per head
    dimension), and the softmax scale is :math:`\sqrt{d_k}` instead of :math:`1/\sqrt{d_k}`:

    .. math::
        q \leftarrow s_{qk} \odot \mathrm{Norm}(q),\ k \leftarrow s_{qk} \odot \mathrm{Norm}(k),\quad
        h_A = \mathrm{softmax}(\sqrt{d_k}\, q k^\top)\, v\, W_O^\top.

    ``mask`` is a boolean (B, T) padding mask of the keys to attend (True = attend); softmax runs through
    :func:`normact.functional.softmax_attention` (SDPA)."""
    q = split_heads(F.linear(h, q_weight), heads)
    k = split_heads(F.linear(h, k_weight), heads)
    v = split_heads(F.linear(h, v_weight), heads)
    if rope_base is not None:
        q, k = rotary(q, rope_base), rotary(k, rope_base)
    head_dim = q.shape[-1]
    scale = s_qk.view(heads, 1, head_dim)
    q = scale * ngpt_normalize(q, eps=eps)
    k = scale * ngpt_normalize(k, eps=eps)
    out = cast(Tensor, softmax_attention(q, k, v, causal, mask, math.sqrt(head_dim)))
    return F.linear(merge_heads(out), out_weight)


def ngpt_mlp(
    h: Tensor,
    fc1_weight: Tensor,
    fc2_weight: Tensor,
    s_u: Tensor,
    s_v: Tensor,
    act: Callable[[Tensor], Tensor] = swiglu,
) -> Tensor:
    r"""nGPT's gated MLP of ``h`` (*, D): the fused projection :math:`W_1 h = (\nu, u)` (gate half first, the layout
    of normact's SwiGLU/GeGLU/ReGLU), rescaled as :math:`\nu \leftarrow s_\nu \odot \nu \sqrt{D}`,
    :math:`u \leftarrow s_u \odot u`, then :math:`h_M = W_2\,(g(\nu) \odot u)` with ``act`` the gated activation
    (SwiGLU: :math:`g` = SiLU). The :math:`\sqrt{D}` brings the gate's input, a cosine in [-1, 1] for unit-norm
    rows, back into the range where SiLU is non-linear."""
    scale = torch.cat((s_v * math.sqrt(h.shape[-1]), s_u))
    return F.linear(act(F.linear(h, fc1_weight) * scale), fc2_weight)


def ngpt_block(
    x: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    out_weight: Tensor,
    fc1_weight: Tensor,
    fc2_weight: Tensor,
    s_qk: Tensor,
    s_u: Tensor,
    s_v: Tensor,
    alpha_attn: Tensor,
    alpha_mlp: Tensor,
    heads: int,
    act: Callable[[Tensor], Tensor] = swiglu,
    causal: bool = False,
    mask: Tensor | None = None,
    rope_base: float | None = None,
    eps: float = DEFAULT_EPS,
) -> Tensor:
    r"""One nGPT block over ``x`` (B, T, D), with the used (effective) scales:

    .. math::
        h_0 = \mathrm{Norm}(x),\quad
        h_1 = \mathrm{Norm}(h_0 + |\alpha_A| \odot (\mathrm{Norm}(h_A(h_0)) - h_0)),\quad
        y = \mathrm{Norm}(h_1 + |\alpha_M| \odot (\mathrm{Norm}(h_M(h_1)) - h_1))

    with :math:`h_A` from :func:`ngpt_attention` and :math:`h_M` from :func:`ngpt_mlp`. Every output row has
    unit norm."""
    check_tensor(x, "ngpt_block")
    dim = q_weight.shape[-1]
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"ngpt_block expects input of shape (B, T, {dim}), got shape {shape_str(x.shape)}")
    if dim % heads:
        raise ValueError(f"ngpt_block: heads ({heads}) must divide the width {dim}")
    h = ngpt_normalize(x, eps=eps)
    h_attn = ngpt_attention(h, q_weight, k_weight, v_weight, out_weight, s_qk, heads, causal, mask, rope_base, eps)
    h = ngpt_update(h, h_attn, alpha_attn, eps)
    h_mlp = ngpt_mlp(h, fc1_weight, fc2_weight, s_u, s_v, act)
    return ngpt_update(h, h_mlp, alpha_mlp, eps)
