"""Attention score normalizers that keep a row normalization without the softmax: normalized attention
(rows standardized), LSSA/LSSAR (Softplus, an l1 normalization, a ReLU^p sharpening) and linear log-normal
attention LLN (moment-matched exponential feature maps, O(n))."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.functional.attention_normalized import lln_feature_scales
from normact.layers.attention._base import AttentionNormalizer
from normact.registry import Paper, Param, register

__all__ = ["LLNAttention", "LSSAAttention", "LSSARAttention", "NormalizedAttention"]

NORMALIZED_ATTENTION = Paper(
    "Normalized Attention Without Probability Cage", 2020, "2005.09561", "Richter, Wattenhofer"
)
SOFTPLUS_ATTENTION = Paper(
    "Softplus Attention with Re-weighting Boosts Length Extrapolation in Large Language Models",
    2025,
    "2501.13428",
    "Gao, Spratling",
)
LLN = Paper("Linear Log-Normal Attention with Unbiased Concentration", 2023, "2311.13541", "Nahshan, Kampeas, Haleva")


@register(
    "normalized_attention",
    kind="attention",
    paper=NORMALIZED_ATTENTION,
    formula="o_t = sum_s (g (s_ts - mean_t) / (std_t + eps) + b) v_s, s_ts = q_t . k_s, statistics over kept keys",
    functional=NF.normalized_attention,
    params=(Param("gain", "(heads,)", "1"), Param("bias", "(heads,)", "0")),
    aliases=("nap",),
)
class NormalizedAttention(AttentionNormalizer):
    r"""Normalized attention, NAP (Richter & Wattenhofer, 2020, arXiv:2005.09561): the softmax replaced by
    standardizing each row of scores over its kept keys,

    .. math::
        o_t = \sum_s \left(g_h\, \frac{q_t \cdot k_s - \mu_t}{\sigma_t + \epsilon} + b_h\right) v_s

    with :math:`\mu_t, \sigma_t` the mean and (population) standard deviation of row t's scores; weights may be
    negative and need not sum to 1 (no "probability cage"). As the authors' code: no :math:`1/\sqrt{D}`, a
    learnable gain (1) and bias (0) per head, :math:`\epsilon` = 1e-3 added to :math:`\sigma`.

    Args:
        heads: number of heads with their own gain and bias; 1 shares one pair across all heads. Default: 1.
        eps: added to the standard deviation. Default: 1e-3.
    """

    _hyperparameters = ("heads", "eps")

    def __init__(
        self,
        heads: int = 1,
        eps: float = 1e-3,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.heads = check_int("heads", heads)
        self.eps = check_float("eps", eps, positive=True)
        self.gain = nn.Parameter(torch.empty(self.heads, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(self.heads, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gain = 1, bias = 0."""
        nn.init.ones_(self.gain)
        nn.init.zeros_(self.bias)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.normalized_attention(q, k, v, self.gain, self.bias, causal, mask, self.eps, return_weights)


@register(
    "lssa_attention",
    kind="attention",
    paper=SOFTPLUS_ATTENTION,
    formula="w_ts = l1-normalize_s softplus(log(D) log(N_t) q_t.k_s / (|q_t| |k_s|)), N_t = keys row t attends",
    functional=NF.lssa_attention,
)
class LSSAAttention(AttentionNormalizer):
    r"""Length-scaled Softplus attention, LSSA (Gao & Spratling, 2025, arXiv:2501.13428): softmax split into a
    positive map and an :math:`\ell_1` normalization, the map being Softplus of L2-normalized scores with a
    temperature growing with the log of the number :math:`N_t` of keys row t attends,

    .. math::
        w_{ts} = \frac{\mathrm{softplus}(\log D \log N_t\, \hat q_t \cdot \hat k_s)}
        {\sum_{s'} \mathrm{softplus}(\log D \log N_t\, \hat q_t \cdot \hat k_{s'})}, \qquad
        \hat x = x / \max(\lVert x \rVert, \epsilon)

    (:math:`N_t = t + 1` under a causal mask; D the head dimension).

    Args:
        eps: the smallest norm divided by in the L2 normalization. Default: 1e-12.
    """

    _hyperparameters = ("eps",)

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = check_float("eps", eps, positive=True)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.lssa_attention(q, k, v, causal, mask, self.eps, return_weights)


@register(
    "lssar_attention",
    kind="attention",
    paper=SOFTPLUS_ATTENTION,
    formula="w_ts = l1-normalize_s ReLU(N_t a_ts - o_t)^p, a = LSSA weights, p = 15, o_t = 1 (0 if N_t <= 3)",
    functional=NF.lssar_attention,
    smooth=False,
)
class LSSARAttention(AttentionNormalizer):
    r"""LSSA with re-weighting, LSSAR (Gao & Spratling, 2025, arXiv:2501.13428): the LSSA weights
    :math:`a_{ts}` sharpened by a shifted power and renormalized,

    .. math::
        w_{ts} = \frac{\mathrm{ReLU}(N_t\, a_{ts} - o_t)^p}{\sum_{s'} \mathrm{ReLU}(N_t\, a_{ts'} - o_t)^p}

    keeping only keys above the uniform weight :math:`o_t/N_t`; :math:`p \to \infty` tends to the argmax. The
    paper's shift matrix O is all ones but for its first three rows: here :math:`o_t` = ``offset`` unless row t
    attends at most ``exempt_keys`` keys (the same rows under a causal mask). A uniform LSSA row has nothing
    above the shift and gets zero weights.

    Args:
        power: p (>= 1); the paper uses 15 for extrapolation (3 at the training length). Default: 15.
        offset: the shift o. Default: 1.
        exempt_keys: rows with at most this many keys are not shifted. Default: 3.
        eps: the smallest norm divided by in the L2 normalization. Default: 1e-12.
    """

    _hyperparameters = ("power", "offset", "exempt_keys", "eps")

    def __init__(self, power: float = 15.0, offset: float = 1.0, exempt_keys: int = 3, eps: float = 1e-12) -> None:
        super().__init__()
        self.power = check_float("power", power, low=1.0)
        self.offset = check_float("offset", offset, nonnegative=True)
        self.exempt_keys = check_int("exempt_keys", exempt_keys, minimum=0)
        self.eps = check_float("eps", eps, positive=True)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.lssar_attention(
            q, k, v, self.power, self.offset, self.exempt_keys, causal, mask, self.eps, return_weights
        )


@register(
    "lln_attention",
    kind="attention",
    paper=LLN,
    formula="o_t = e^(a q_t) . sum_s e^(b k_s) v_s / e^(a q_t) . sum_s e^(b k_s); (a, b) moment-matched to softmax",
    functional=NF.lln_attention,
)
class LLNAttention(AttentionNormalizer):
    r"""Linear log-normal attention, LLN (Nahshan, Kampeas & Haleva, 2023, arXiv:2311.13541): linear attention
    with elementwise exponential feature maps whose temperatures match the log-normal spread of softmax
    attention,

    .. math::
        o_t = \frac{e^{\alpha q_t} \cdot \sum_s e^{\beta k_s} v_s^\top}{e^{\alpha q_t} \cdot \sum_s e^{\beta k_s}},
        \qquad \alpha = \frac{\tilde\sigma}{\sigma_q}, \; \beta = \frac{\tilde\sigma}{\sigma_k}, \;
        \tilde\sigma^2 = \frac{\sigma_q^2 \sigma_k^2 - b}{2a}

    (a = 0.14855..., b = -0.35487..., the authors' fit). Without ``causal``, in O(T + S) time; causal calls use
    the explicit weights (robust at any scale) unless ``causal_prefix_sums``. Rows are normalized exactly (the
    authors add 1e-8 to the denominator); see :func:`normact.functional.lln_attention`.

    Args:
        sigma_q, sigma_k: the query and key standard deviations the temperatures are matched to; None
            estimates them from each call's kept entries without gradient, as the authors' code, which makes
            the output depend on the whole batch and, when causal, on future tokens. Default: 1.0 (fixed).
        causal_prefix_sums: causal attention in O(T + S) by prefix sums (can underflow for scores beyond
            about 80 in float32). Default: False.
    """

    _hyperparameters = ("sigma_q", "sigma_k", "causal_prefix_sums")

    def __init__(
        self, sigma_q: float | None = 1.0, sigma_k: float | None = 1.0, causal_prefix_sums: bool = False
    ) -> None:
        super().__init__()
        self.sigma_q = None if sigma_q is None else check_float("sigma_q", sigma_q, positive=True)
        self.sigma_k = None if sigma_k is None else check_float("sigma_k", sigma_k, positive=True)
        self.causal_prefix_sums = bool(causal_prefix_sums)

    def feature_scales(self) -> tuple[float, float] | None:
        """(alpha, beta) when both standard deviations are fixed, else None."""
        if self.sigma_q is None or self.sigma_k is None:
            return None
        alpha, beta = lln_feature_scales(self.sigma_q, self.sigma_k)
        return float(alpha), float(beta)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.lln_attention(
            q, k, v, self.sigma_q, self.sigma_k, causal, mask, self.causal_prefix_sums, return_weights
        )
