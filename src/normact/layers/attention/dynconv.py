"""Attention with the softmax replaced by ConvNet modules, a LayerNorm over the keys with or without a ReLU before
it ("Interpret Vision Transformers as ConvNets with Dynamic Convolutions", Zhou, Loy & Dai, 2023)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from normact import functional as NF
from normact._checks import check_eps, check_float
from normact.layers.attention._base import AttentionNormalizer
from normact.registry import Paper, register

__all__ = ["LayerNormAttention", "ReLULayerNormAttention"]

DYNCONV = Paper(
    "Interpret Vision Transformers as ConvNets with Dynamic Convolutions", 2023, "2309.10713", "Zhou, Loy, Dai"
)

_SOURCES = r"""
    **Sources.** From the paper's abstract (its first study treats the softmax as the activation of the
    query-key dynamic convolution): the softmax "can be replaced by commonly used ConvNets modules, such as ReLU
    and Layer Normalization, which results in a faster convergence rate and better performance". The paper's
    full text was not available here, so the exact composition was not confirmed from it; normact registers both
    readings, ``ln_attention`` (LayerNorm alone) and ``relu_ln_attention`` (ReLU, then LayerNorm: the ConvNet
    order activation -> normalization of a kernel's channels, here the keys). No official code was found. The
    LayerNorm has no affine (a per-key gain would tie the layer to one sequence length) and
    :math:`\epsilon = 10^{-5}` (torch's default); its statistics run over the keys a query attends, so a masked
    key changes nothing and a query with no key gets zero weights.

    Args:
        eps: added to the row variance inside the root. Default: 1e-5.
        scale: :math:`\sigma`; default :math:`1/\sqrt{D}`.
"""


class _KeyLayerNormAttention(AttentionNormalizer):
    _hyperparameters = ("eps", "scale")

    def __init__(self, eps: float = 1e-5, scale: float | None = None) -> None:
        super().__init__()
        self.eps = check_eps(eps)
        self.scale = None if scale is None else check_float("scale", scale, positive=True)


@register(
    "ln_attention",
    kind="attention",
    paper=DYNCONV,
    formula="o_t = sum_s LN_s(scale * q_t . k_s) v_s, LN over the attended keys without affine (rows: mean 0, var 1)",
    functional=NF.ln_attention,
)
class LayerNormAttention(_KeyLayerNormAttention):
    __doc__ = (
        r"""LayerNorm attention over the keys (Zhou, Loy & Dai, 2023, arXiv:2309.10713).

    From "Interpret Vision Transformers as ConvNets with Dynamic Convolutions": the softmax over the keys replaced
    by a LayerNorm of the scores,

    .. math::
        a_{ts} = \frac{s_{ts} - \mu_t}{\sqrt{\sigma_t^2 + \epsilon}}, \qquad s_{ts} = \sigma\, q_t \cdot k_s,
        \qquad o_t = \sum_s a_{ts} v_s

    with :math:`\mu_t, \sigma_t^2` the mean and biased variance of row t over its keys: each row of the weights
    has zero mean and unit variance (signed weights).
"""
        + _SOURCES
    )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.ln_attention(q, k, v, causal, mask, self.eps, self.scale, return_weights)


@register(
    "relu_ln_attention",
    kind="attention",
    paper=DYNCONV,
    formula="o_t = sum_s LN_s(ReLU(scale * q_t . k_s)) v_s, LN over the attended keys without affine",
    functional=NF.relu_ln_attention,
    smooth=False,
)
class ReLULayerNormAttention(_KeyLayerNormAttention):
    __doc__ = (
        r"""ReLU then LayerNorm attention over the keys (Zhou, Loy & Dai, 2023, arXiv:2309.10713).

    From "Interpret Vision Transformers as ConvNets with Dynamic Convolutions": the softmax over the keys replaced
    by a ReLU of the scores followed by a LayerNorm over the keys,

    .. math::
        a_{t\cdot} = \mathrm{LN}_s\big(\mathrm{ReLU}(\sigma\, q_t \cdot k_s)\big), \qquad o_t = \sum_s a_{ts} v_s

    each row of the weights of zero mean and unit variance over its keys (all zero when every score of the row is
    negative).
"""
        + _SOURCES
    )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.relu_ln_attention(q, k, v, causal, mask, self.eps, self.scale, return_weights)
