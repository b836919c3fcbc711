"""Rectified (ReLU) attention: ReLUFormer's length-scaled ReLU weights and ReLA's ReLU weights followed by a gated
RMSNorm over the heads' outputs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.layers.attention._base import AttentionNormalizer
from normact.registry import Paper, Param, register

__all__ = ["ReLAAttention", "ReLUFormerAttention"]

RELUFORMER = Paper("A Study on ReLU and Softmax in Transformer", 2023, "2302.06461", "Shen, Guo, Tan, Tang, Wang, Bian")
RELA = Paper("Sparse Attention with Linear Units", 2021, "2104.07012", "Zhang, Titov, Sennrich")


def _check_scale(scale: float | None) -> float | None:
    return None if scale is None else check_float("scale", scale, positive=True)


@register(
    "reluformer_attention",
    kind="attention",
    paper=RELUFORMER,
    formula="o_t = sum_s ReLU(scale * q_t . k_s) v_s / (gamma * sqrt(n_t / 2)), n_t = keys query t attends",
    functional=NF.reluformer_attention,
    smooth=False,
    aliases=("reluformer",),
)
class ReLUFormerAttention(AttentionNormalizer):
    r"""ReLUFormer's ReLU attention (Shen et al., 2023, arXiv:2302.06461):

    .. math::
        o_t = \frac{1}{\gamma\sqrt{n_t/2}} \sum_s \mathrm{ReLU}(\sigma\, q_t \cdot k_s)\, v_s

    with :math:`n_t` the number of keys query t attends (per token under a causal or padding mask). Without the
    factor the output variance grows like :math:`n_t/2` (the paper's variance explosion on long inputs); with it
    the variance stays at :math:`1/\gamma^2`. The weights are not normalized: a row may be all zero. The paper's
    extra training losses on the weights are not part of this layer.

    Args:
        gamma: :math:`\gamma > 0`. Default: 1.
        scale: :math:`\sigma`; default :math:`1/\sqrt{D}`.
    """

    _hyperparameters = ("gamma", "scale")

    def __init__(self, gamma: float = 1.0, scale: float | None = None) -> None:
        super().__init__()
        self.gamma = check_float("gamma", gamma, positive=True)
        self.scale = _check_scale(scale)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.reluformer_attention(q, k, v, self.gamma, causal, mask, self.scale, return_weights)


@register(
    "rela_attention",
    kind="attention",
    paper=RELA,
    formula=(
        "o_t = sum_s ReLU(scale * q_t . k_s) v_s; out = g * o_t / sqrt(mean(o_t^2) + eps) * sigmoid(w * o_t), "
        "mean over heads and value dims"
    ),
    functional=NF.rela_attention,
    params=(
        Param("weight", "(num_heads, head_dim)", "1"),
        Param("gate", "(num_heads, head_dim)", "U(-sqrt(3/n), sqrt(3/n)), n = num_heads * head_dim"),
    ),
    defaults={"num_heads": 2, "head_dim": 8},
    smooth=False,
    aliases=("rela",),
)
class ReLAAttention(AttentionNormalizer):
    r"""Rectified linear attention, ReLA (Zhang, Titov, Sennrich, 2021, arXiv:2104.07012), the gated variant of
    the authors' code: ReLU weights and a gated RMSNorm over the concatenated heads,

    .. math::
        o_t = \sum_s \mathrm{ReLU}(\sigma\, q_t \cdot k_s)\, v_s, \qquad
        \tilde o_t = g \odot \frac{o_t}{\sqrt{\overline{o_t^2} + \epsilon}} \odot \mathrm{sigmoid}(w \odot o_t)

    :math:`o_t` (heads x value features) of query t, :math:`\overline{o_t^2}` its mean square. As the authors'
    code: g starts at 1, w is an elementwise vector (no projection) drawn from TensorFlow's default Glorot
    uniform for a vector of n = heads x value features entries, :math:`U(\pm\sqrt{3/n})`, and
    :math:`\epsilon = 10^{-8}`. Rows may be all zero ("attend to nothing"); their output is 0.

    Args:
        num_heads: H, the heads of q, k and v.
        head_dim: Dv, the value features per head. (The registry name's defaults are 2 heads of 8 features;
            give your model's sizes.)
        eps: :math:`\epsilon`. Default: 1e-8.
        scale: :math:`\sigma`; default :math:`1/\sqrt{D}`.
    """

    _hyperparameters = ("num_heads", "head_dim", "eps", "scale")

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        eps: float = 1e-8,
        scale: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = check_int("num_heads", num_heads)
        self.head_dim = check_int("head_dim", head_dim)
        self.eps = check_float("eps", eps, positive=True)
        self.scale = _check_scale(scale)
        self.weight = nn.Parameter(torch.empty(self.num_heads, self.head_dim, device=device, dtype=dtype))
        self.gate = nn.Parameter(torch.empty(self.num_heads, self.head_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1; gate ~ U(-sqrt(3/n), sqrt(3/n)) with n = num_heads * head_dim (Glorot for a vector)."""
        bound = math.sqrt(3.0 / (self.num_heads * self.head_dim))
        with torch.no_grad():
            self.weight.fill_(1.0)
            self.gate.uniform_(-bound, bound)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.rela_attention(q, k, v, self.weight, self.gate, causal, mask, self.eps, self.scale, return_weights)
