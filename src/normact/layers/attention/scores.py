"""Attention score normalizers that act on the score matrix: softmax, QKNorm (normalized queries and keys with a
learnable scale), sigmoid (elementwise, no row normalization)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.layers.attention._base import AttentionNormalizer
from normact.registry import Paper, Param, register

__all__ = ["QKNormAttention", "SigmoidAttention", "SoftmaxAttention"]

TRANSFORMER = Paper("Attention Is All You Need", 2017, "1706.03762", "Vaswani et al.")
QK_NORM = Paper("Query-Key Normalization for Transformers", 2020, "2010.04245", "Henry, Dachapally, Pawar, Chen")
SIGMOID_ATTENTION = Paper(
    "Theory, Analysis, and Best Practices for Sigmoid Self-Attention", 2024, "2409.04431", "Ramapuram et al."
)


def _check_scale(scale: float | None) -> float | None:
    return None if scale is None else check_float("scale", scale, positive=True)


@register(
    "softmax_attention",
    kind="attention",
    paper=TRANSFORMER,
    formula="o_t = sum_s softmax_s(scale * q_t . k_s) v_s, scale = 1/sqrt(head_dim) by default",
    functional=NF.softmax_attention,
    verified_against=("torch.nn.functional.scaled_dot_product_attention",),
)
class SoftmaxAttention(AttentionNormalizer):
    r"""Softmax attention (Vaswani et al., 2017, arXiv:1706.03762):

    .. math::
        o_t = \sum_s \mathrm{softmax}_s(\sigma\, q_t \cdot k_s)\, v_s

    through ``torch.nn.functional.scaled_dot_product_attention`` (its fused kernels) unless the weights are
    requested or the inputs are float64.

    Args:
        scale: :math:`\sigma`; default :math:`1/\sqrt{D}`.
    """

    _hyperparameters = ("scale",)

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.scale = _check_scale(scale)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.softmax_attention(q, k, v, causal, mask, self.scale, return_weights)


@register(
    "sigmoid_attention",
    kind="attention",
    paper=SIGMOID_ATTENTION,
    formula="o_t = sum_s sigmoid(scale * q_t . k_s + b) v_s, b = -log(S) for S keys by default (weights ~ 1/S)",
    functional=NF.sigmoid_attention,
)
class SigmoidAttention(AttentionNormalizer):
    r"""Sigmoid attention (Ramapuram et al., 2024, arXiv:2409.04431):

    .. math::
        o_t = \sum_s \sigma(s\, q_t \cdot k_s + b)\, v_s

    each weight on its own (no row normalization); masked keys weigh 0.

    Args:
        bias: b; default :math:`-\log S` for S keys, the paper's choice, which makes every weight about
            :math:`1/S` when the scores are near 0 (exactly :math:`1/(S+1)` at 0).
        scale: s; default :math:`1/\sqrt{D}`.
    """

    _hyperparameters = ("bias", "scale")

    def __init__(self, bias: float | None = None, scale: float | None = None) -> None:
        super().__init__()
        self.bias = None if bias is None else check_float("bias", bias)
        self.scale = _check_scale(scale)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.sigmoid_attention(q, k, v, self.bias, causal, mask, self.scale, return_weights)


def qk_norm_gain(seq_len: int) -> float:
    """QKNorm's initial gain g0 = log2(L^2 - L) for sequences of length L (the 97.5th percentile of the training
    lengths): the log of the number of off-diagonal entries of the score matrix."""
    seq_len = check_int("seq_len", seq_len)
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (g0 = log2(L^2 - L)), got {seq_len}")
    return math.log2(seq_len * seq_len - seq_len)


@register(
    "qk_norm_attention",
    kind="attention",
    paper=QK_NORM,
    formula="o_t = sum_s softmax_s(g * q_t.k_s / (|q_t| |k_s|)) v_s; g learnable, g0 = log2(L^2 - L)",
    functional=NF.qk_norm_attention,
    params=(Param("gain", "()", "log2(seq_len^2 - seq_len) (seq_len = 50: 11.2586)"),),
    aliases=("qknorm",),
)
class QKNormAttention(AttentionNormalizer):
    r"""QKNorm (Henry et al., 2020, arXiv:2010.04245): queries and keys L2-normalized over the head dimension,

    .. math::
        o_t = \sum_s \mathrm{softmax}_s\left(g\, \frac{q_t \cdot k_s}{\lVert q_t\rVert \lVert k_s\rVert}\right) v_s

    scores in :math:`[-g, g]` with a learnable scalar g instead of :math:`1/\sqrt{D}`. As the authors' code:
    ``F.normalize`` (eps 1e-12) and g initialised to :math:`\log_2(L^2 - L)`.

    Args:
        seq_len: L, the 97.5th percentile of the training sequence lengths (sets g0). Default: 50.
        eps: the smallest norm divided by. Default: 1e-12.
    """

    _hyperparameters = ("seq_len", "eps")

    def __init__(
        self,
        seq_len: int = 50,
        eps: float = 1e-12,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.seq_len = check_int("seq_len", seq_len)
        qk_norm_gain(self.seq_len)
        self.eps = check_float("eps", eps, positive=True)
        self.gain = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gain = log2(seq_len^2 - seq_len)."""
        with torch.no_grad():
            self.gain.fill_(qk_norm_gain(self.seq_len))

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.qk_norm_attention(q, k, v, self.gain, causal, mask, self.eps, return_weights)
