r"""Rectified (ReLU) attention: the softmax over the keys replaced by a ReLU of the scores, with the variance
control each paper adds so that the output does not grow with the number of keys.

- :func:`reluformer_attention` (Shen et al., 2023, arXiv:2302.06461): the ReLU weights divided by
  :math:`\gamma\sqrt{n_t/2}`, :math:`n_t` the number of keys query t attends.
- :func:`rela_attention` (Zhang, Titov, Sennrich, 2021, arXiv:2104.07012): the ReLU-weighted values through a
  gated RMSNorm over the concatenated heads.

Same conventions as :mod:`normact.functional.attention`: q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv), a
``causal`` flag, a boolean ``mask`` (True = attend), the weights with ``return_weights=True``; a query row with no
key to attend gets zero weights and a zero output; float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import upcast
from normact.functional._attention import attend, attention_keep_mask, check_qkv, default_scale, score_matrix

__all__ = ["rela_attention", "reluformer_attention"]


def _relu_weights(
    q: Tensor, k: Tensor, causal: bool, mask: Tensor | None, scale: float | None, name: str
) -> tuple[Tensor, Tensor | None]:
    """``ReLU(scale * q k^T)`` with the masked scores set to 0 (float32 for half inputs), and the keep mask."""
    scale = default_scale(q, scale, name)
    weights = torch.relu(score_matrix(q, k, scale))
    keep = attention_keep_mask(q, k, causal, mask, name)
    if keep is not None:
        weights = weights.masked_fill(~keep, 0.0)
    return weights, keep


def reluformer_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    gamma: float = 1.0,
    causal: bool = False,
    mask: Tensor | None = None,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""ReLUFormer attention (Shen et al., 2023, arXiv:2302.06461):

    .. math::
        o_t = \frac{1}{\gamma\sqrt{n_t/2}} \sum_s \mathrm{ReLU}(\sigma\, q_t \cdot k_s)\, v_s

    with :math:`n_t` the number of keys query t attends (S, or fewer under ``mask``/``causal``) and
    :math:`\sigma` = ``scale`` (default :math:`1/\sqrt{D}`). For unit-variance scores and values the sum has
    variance :math:`n_t/2` (a ReLU keeps half of a symmetric score's second moment), so the factor keeps the
    output at variance :math:`1/\gamma^2` whatever the sequence length."""
    check_qkv(q, k, v, "reluformer_attention")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"reluformer_attention: gamma must be a positive number, got {gamma!r}")
    weights, keep = _relu_weights(q, k, causal, mask, scale, "reluformer_attention")
    if keep is None:
        weights = weights / (gamma * math.sqrt(k.shape[2] / 2.0))
    else:
        attended = keep.sum(-1, keepdim=True).clamp_min(1).to(weights.dtype)  # n_t; rows with none are all 0
        weights = weights / (gamma * torch.sqrt(attended / 2.0))
    return attend(weights, v, return_weights)


def rela_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    weight: Tensor,
    gate: Tensor,
    causal: bool = False,
    mask: Tensor | None = None,
    eps: float = 1e-8,
    scale: float | None = None,
    return_weights: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Rectified linear attention, ReLA (Zhang, Titov, Sennrich, 2021, arXiv:2104.07012):

    .. math::
        a_{ts} = \mathrm{ReLU}(\sigma\, q_t \cdot k_s), \qquad o_t = \sum_s a_{ts} v_s, \qquad
        \tilde o_t = g \odot \frac{o_t}{\sqrt{\overline{o_t^2} + \epsilon}} \odot \mathrm{sigmoid}(w \odot o_t)

    where :math:`o_t` is query t's output of all H heads (H, Dv), :math:`\overline{o_t^2}` its mean square over
    heads and value features together (the authors' gated RMSNorm acts on the concatenated heads), ``weight`` g
    and ``gate`` w of shape (H, Dv). Masked scores weigh 0 (the authors multiply the masked logits by 0). The
    returned weights are :math:`a_{ts}`; rows may be all zero ("attend to nothing"), giving a zero output."""
    for what, param in (("weight", weight), ("gate", gate)):
        if not isinstance(param, Tensor) or param.dim() != 2:
            raise ValueError(
                f"rela_attention: {what} must be a (heads, value_dim) tensor, got {getattr(param, 'shape', param)}"
            )
    heads, value_dim = weight.shape
    if isinstance(q, Tensor) and q.is_floating_point() and q.dim() == 4 and q.shape[1] != heads:
        raise ValueError(
            f"rela_attention: q must have shape (batch, {heads}, tokens, head_dim) for parameters of {heads} heads, "
            f"got shape {tuple(q.shape)}"
        )
    check_qkv(q, k, v, "rela_attention")
    if tuple(gate.shape) != (heads, value_dim) or tuple(v.shape[1::2]) != (heads, value_dim):
        raise ValueError(
            f"rela_attention: weight and gate must have shape (heads, value_dim) = {tuple(v.shape[1::2])} for v of "
            f"shape {tuple(v.shape)}, got {tuple(weight.shape)} and {tuple(gate.shape)}"
        )
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"rela_attention: eps must be a positive number, got {eps!r}")
    weights, _ = _relu_weights(q, k, causal, mask, scale, "rela_attention")
    out = weights @ upcast(v)  # (B, H, T, Dv)
    mean_square = out.square().mean(dim=(1, 3), keepdim=True)  # over heads and value features, per (b, t)
    g, w = upcast(weight)[:, None, :], upcast(gate)[:, None, :]  # (H, 1, Dv)
    normed = g * out * torch.rsqrt(mean_square + eps) * torch.sigmoid(w * out)
    normed = normed.to(v.dtype)
    return (normed, weights.to(v.dtype)) if return_weights else normed
