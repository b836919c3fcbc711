r"""Transformer residual blocks, stateless: the pieces :class:`normact.layers.block.TransformerBlock` is made of.

A block is two residual sub-layers (attention, then the feed-forward network), each

.. math::
    y = \mathrm{Post}\big(\alpha\, x + \mathrm{Out}(F(s \cdot \mathrm{Pre}(x)))\big)

where every norm is optional (the identity when ``None``) and :math:`\alpha`, :math:`s` are constants; the
placements (Pre-LN, Post-LN, Peri-LN, DeepNorm, LayerNorm Scaling, NormFormer) choose which norms are present
and the constants (see :func:`residual_branch`). Norms, activations and attention normalizers are passed as
callables (modules or functions), so any layer of the registry fits. GPAS (:func:`gpas`) optionally scales the
residual stream after each sub-layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from normact.functional.attention import softmax_attention

__all__ = [
    "feed_forward",
    "gpas",
    "merge_heads",
    "multi_head_attention",
    "residual_branch",
    "rotary",
    "split_heads",
    "transformer_block",
]

Norm = Callable[[Tensor], Tensor] | None
"""A norm applied to the last dimension, or ``None`` for none (the identity)."""

Norms = tuple[Norm, Norm, Norm]
"""The ``(pre, out, post)`` norms of one residual sub-layer."""

Scaling = Callable[[Tensor], Tensor] | None
"""A map of the residual stream applied after a sub-layer (GPAS, :func:`gpas`), or ``None`` for none."""


def gpas(x: Tensor, alpha: Tensor) -> Tensor:
    r"""Gradient-Preserving Activation Scaling (Chen et al., 2025, arXiv:2506.22049):

    .. math:: y = x - \mathrm{SiLU}(\alpha)\, \mathrm{sg}(x)

    with :math:`\mathrm{sg}` the stop-gradient (``detach``): the value is :math:`(1 - \mathrm{SiLU}(\alpha))\, x`
    while :math:`\partial y / \partial x = I`, and :math:`\partial L/\partial\alpha = -\mathrm{SiLU}'(\alpha)
    \langle g, x\rangle` for the upstream gradient :math:`g`. ``alpha`` is a scalar tensor (any shape that
    broadcasts against ``x``); :math:`\alpha = 0` gives ``x`` exactly. The gate is computed in float32 for half
    inputs."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"gpas expects a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if not isinstance(alpha, Tensor) or not alpha.is_floating_point():
        raise TypeError(f"gpas: alpha must be a floating-point tensor, got {type(alpha).__name__}")
    gate = F.silu(alpha if alpha.dtype == torch.float64 else alpha.float()).to(x.dtype)
    return x - gate * x.detach()


def residual_branch(
    x: Tensor,
    branch: Callable[[Tensor], Tensor],
    pre_norm: Norm = None,
    out_norm: Norm = None,
    post_norm: Norm = None,
    alpha: float = 1.0,
    scale: float = 1.0,
    rescale: Scaling = None,
) -> Tensor:
    r"""One residual sub-layer: :math:`y = \mathrm{Post}(\alpha x + \mathrm{Out}(F(s\,\mathrm{Pre}(x))))`.

    - Pre-LN (Xiong et al., 2020): ``pre_norm`` only, :math:`x + F(\mathrm{LN}(x))`;
    - Post-LN (Vaswani et al., 2017): ``post_norm`` only, :math:`\mathrm{LN}(x + F(x))`;
    - DeepNorm (Wang et al., 2022): ``post_norm`` and ``alpha``, :math:`\mathrm{LN}(\alpha x + F(x))`;
    - Peri-LN / sandwich (Kim et al., 2025; Pangu Ultra): ``pre_norm`` and ``out_norm``,
      :math:`x + \mathrm{LN}(F(\mathrm{LN}(x)))`;
    - LayerNorm Scaling (Sun et al., 2025): ``pre_norm`` and ``scale`` = :math:`1/\sqrt{\ell}`,
      :math:`x + F(\mathrm{LN}(x)/\sqrt{\ell})`.

    ``rescale`` :math:`G` (GPAS, :func:`gpas`) scales the residual stream: after the sum,
    :math:`G(\alpha x + \mathrm{Out}(F(s\,\mathrm{Pre}(x))))`, without a ``post_norm``; with one (Post-LN,
    DeepNorm) it scales the shortcut instead, :math:`\mathrm{Post}(\alpha G(x) + F(x))`, as the official GPAS
    code does for DeepNorm (a scaling just before a norm would be undone by it).
    """
    h = x if pre_norm is None else pre_norm(x)
    if scale != 1.0:
        h = h * scale
    h = branch(h)
    if out_norm is not None:
        h = out_norm(h)
    skip = x if rescale is None or post_norm is None else rescale(x)
    y = skip + h if alpha == 1.0 else skip * alpha + h
    if post_norm is None:
        return y if rescale is None else rescale(y)
    return post_norm(y)


def multi_head_attention(
    x: Tensor,
    q_weight: Tensor,
    k_weight: Tensor,
    v_weight: Tensor,
    out_weight: Tensor,
    heads: int,
    q_bias: Tensor | None = None,
    v_bias: Tensor | None = None,
    out_bias: Tensor | None = None,
    normalizer: Callable[..., Tensor | tuple[Tensor, Tensor]] | None = None,
    causal: bool = False,
    mask: Tensor | None = None,
    head_scale: Tensor | None = None,
    need_weights: bool = False,
    rope_base: float | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Multi-head self-attention of ``x`` (B, T, D) around any attention normalizer:

    .. math::
        \mathrm{MHA}(x) = \mathrm{Concat}(\gamma_1 h_1, \dots, \gamma_H h_H)\, W_O^\top + b_O,\quad
        h_i = \mathrm{Attn}(x W_{Q,i}^\top + b_{Q,i},\ x W_{K,i}^\top,\ x W_{V,i}^\top + b_{V,i})

    ``normalizer(q, k, v, *, causal, mask, need_weights)`` over (B, H, T, D/H) tensors (an attention module of the
    registry; default softmax); ``mask`` a boolean (B, T) padding mask of the keys to attend (True = attend) or
    any mask the normalizer accepts; ``head_scale`` the per-head :math:`\gamma_i` (NormFormer's HeadScale, applied
    before :math:`W_O` as in the paper); ``rope_base`` rotates q and k by :func:`rotary` first. The keys have no
    bias: a key bias only shifts each query's scores by a constant, which softmax ignores. Returns (B, T, D), or
    ``(output, weights)`` with ``need_weights``.
    """
    q = split_heads(F.linear(x, q_weight, q_bias), heads)
    k = split_heads(F.linear(x, k_weight), heads)
    v = split_heads(F.linear(x, v_weight, v_bias), heads)
    if rope_base is not None:
        q, k = rotary(q, rope_base), rotary(k, rope_base)
    out = _attend(q, k, v, normalizer, causal, mask, need_weights)
    weights = None
    if need_weights:
        out, weights = out
    y = F.linear(merge_heads(out, head_scale), out_weight, out_bias)
    return (y, weights) if need_weights else y


def _attend(q, k, v, normalizer, causal, mask, need_weights):
    if normalizer is None:
        return softmax_attention(q, k, v, causal, mask, None, need_weights)
    return normalizer(q, k, v, causal=causal, mask=mask, need_weights=need_weights)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, H * Dh) -> (B, H, T, Dh)."""
    b, t, _ = x.shape
    return x.view(b, t, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor, head_scale: Tensor | None = None) -> Tensor:
    r"""(B, H, T, Dh) -> (B, T, H * Dh), each head first scaled by :math:`\gamma_i` (``head_scale`` (H,),
    NormFormer's HeadScale) where given."""
    if head_scale is not None:
        x = x * head_scale.view(1, -1, 1, 1)
    b, _, t, _ = x.shape
    return x.transpose(1, 2).reshape(b, t, -1)


def rotary(x: Tensor, base: float = 10000.0, offset: int = 0) -> Tensor:
    r"""Rotary position embedding (RoPE, Su et al., 2021, arXiv:2104.09864) of ``x`` (B, H, T, Dh), Dh even, in the
    rotate-half layout of GPT-NeoX/Llama: with :math:`\theta_i = \mathrm{base}^{-2i/D_h}` and position :math:`t`,

    .. math:: (x_{i}, x_{i + D_h/2}) \mapsto (x_i \cos t\theta_i - x_{i+D_h/2} \sin t\theta_i,\
              x_{i+D_h/2} \cos t\theta_i + x_i \sin t\theta_i).

    ``q . k`` then depends on the positions only through their difference. Angles are computed in float32 (float64
    for float64 input)."""
    t, dh = x.shape[-2], x.shape[-1]
    if dh % 2:
        raise ValueError(f"rotary embeddings need an even head dimension, got {dh}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv = base ** (-torch.arange(0, dh, 2, device=x.device, dtype=work) / dh)
    angles = torch.arange(offset, offset + t, device=x.device, dtype=work)[:, None] * inv  # (T, Dh/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def feed_forward(
    x: Tensor,
    fc1_weight: Tensor,
    fc2_weight: Tensor,
    act: Callable[[Tensor], Tensor],
    fc1_bias: Tensor | None = None,
    fc2_bias: Tensor | None = None,
    mid_norm: Norm = None,
) -> Tensor:
    r"""The position-wise feed-forward network :math:`\mathrm{FC}_2(\mathrm{Mid}(g(\mathrm{FC}_1(x))))`, with
    ``mid_norm`` NormFormer's FFN LayerNorm (over the hidden width) or ``None``. A gated activation ``act``
    (SwiGLU, GeGLU) takes ``fc1``'s output of twice the hidden width and halves it."""
    h = act(F.linear(x, fc1_weight, fc1_bias))
    if mid_norm is not None:
        h = mid_norm(h)
    return F.linear(h, fc2_weight, fc2_bias)


def transformer_block(
    x: Tensor,
    attention: Callable[[Tensor], Tensor],
    mlp: Callable[[Tensor], Tensor],
    attn_norms: Norms = (None, None, None),
    mlp_norms: Norms = (None, None, None),
    alpha: float = 1.0,
    scale: float = 1.0,
    embedding_norm: Norm = None,
    final_norm: Norm = None,
    attn_rescale: Scaling = None,
    mlp_rescale: Scaling = None,
) -> Tensor:
    r"""A transformer block: :func:`residual_branch` around ``attention``, then around ``mlp``,

    .. math::
        h = \mathrm{Post}_a(\alpha x + \mathrm{Out}_a(\mathrm{Attn}(s\,\mathrm{Pre}_a(x)))),\quad
        y = \mathrm{Post}_m(\alpha h + \mathrm{Out}_m(\mathrm{MLP}(s\,\mathrm{Pre}_m(h))))

    with the ``(pre, out, post)`` norms of each sub-layer, optionally an ``embedding_norm`` applied to ``x`` first
    (Peri-LN normalizes the embeddings) and a ``final_norm`` applied to ``y`` (Pre-LN's last norm);
    ``attn_rescale``/``mlp_rescale`` are each sub-layer's GPAS (see :func:`residual_branch`)."""
    if embedding_norm is not None:
        x = embedding_norm(x)
    h = residual_branch(x, attention, *attn_norms, alpha=alpha, scale=scale, rescale=attn_rescale)
    y = residual_branch(h, mlp, *mlp_norms, alpha=alpha, scale=scale, rescale=mlp_rescale)
    return y if final_norm is None else final_norm(y)
