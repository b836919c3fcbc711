r"""Attention whose softmax over the keys is replaced by the ConvNet modules of "Interpret Vision Transformers as
ConvNets with Dynamic Convolutions" (Zhou, Loy & Dai, 2023, arXiv:2309.10713): a LayerNorm over the keys of the
scores :math:`S = \sigma\,QK^\top` (:func:`ln_attention`), or a ReLU then that LayerNorm
(:func:`relu_ln_attention`). In the paper's view the rows of the weights are dynamic 1x1 convolution kernels whose
channels are the keys; the LayerNorm normalizes over those channels.

Same conventions as :mod:`normact.functional.attention`: q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv), a
``causal`` flag, a boolean ``mask`` (True = attend), the weights with ``return_weights=True``. The LayerNorm's mean
and variance run over the keys a query attends only; masked keys weigh 0, and a query with no key to attend gets
zero weights and a zero output. float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normact._checks import check_eps
from normact.functional._attention import attend, attention_keep_mask, check_qkv, default_scale, score_matrix

__all__ = ["ln_attention", "relu_ln_attention"]


def _key_layer_norm(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    relu: bool,
    causal: bool,
    mask: Tensor | None,
    eps: float,
    scale: float | None,
    return_weights: bool,
    name: str,
) -> Tensor | tuple[Tensor, Tensor]:
    check_qkv(q, k, v, name)
    eps = check_eps(eps)
    scores = score_matrix(q, k, default_scale(q, scale, name))
    if relu:
        scores = torch.relu(scores)
    keep = attention_keep_mask(q, k, causal, mask, name)
    if keep is None:
        mean = scores.mean(-1, keepdim=True)
        centered = scores - mean
        var = centered.square().mean(-1, keepdim=True)
        return attend(centered * torch.rsqrt(var + eps), v, return_weights)
    keep = keep.expand(scores.shape)
    count = keep.sum(-1, keepdim=True).clamp_min(1).to(scores.dtype)  # the keys each query attends
    kept = scores.masked_fill(~keep, 0.0)
    mean = kept.sum(-1, keepdim=True) / count
    centered = (scores - mean).masked_fill(~keep, 0.0)
    var = centered.square().sum(-1, keepdim=True) / count
    return attend(centered * torch.rsqrt(var + eps), v, return_weights)


def ln_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-5,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""LayerNorm attention (Zhou, Loy & Dai, 2023, arXiv:2309.10713): the softmax replaced by a LayerNorm of the
    scores over the keys, without affine,

    .. math::
        a_{ts} = \frac{s_{ts} - \mu_t}{\sqrt{\sigma_t^2 + \epsilon}}, \quad s_{ts} = \sigma\, q_t \cdot k_s, \qquad
        o_t = \sum_s a_{ts} v_s

    :math:`\mu_t, \sigma_t^2` the mean and biased variance of row t over the keys it attends, :math:`\sigma` =
    ``scale`` (default :math:`1/\sqrt{D}`). Each row of the weights has zero mean and unit variance (up to
    :math:`\epsilon`): the weights are signed, and an output is a contrast of values rather than an average."""
    return _key_layer_norm(q, k, v, False, causal, mask, eps, scale, return_weights, "ln_attention")


def relu_ln_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-5,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""ReLU + LayerNorm attention (Zhou, Loy & Dai, 2023, arXiv:2309.10713): the scores through a ReLU, then a
    LayerNorm over the keys (no affine), :math:`a_{t\cdot} = \mathrm{LN}_s(\mathrm{ReLU}(\sigma\, q_t \cdot k_s))`,
    :math:`o_t = \sum_s a_{ts} v_s`. A row whose scores are all negative is all zero (zero variance)."""
    return _key_layer_norm(q, k, v, True, causal, mask, eps, scale, return_weights, "relu_ln_attention")
