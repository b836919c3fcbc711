"""Linear attentions with a norm-aware kernel or a refined forget gate: NaLaFormer's norm-aware linear attention
(query-norm power, ReLU sign split, mean-normalized) and ReGLA (safe exponential features, refined forget gate,
a norm on the output). Each has the explicit O(n^2) form and the O(n) recurrent form (``mode``)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.functional.attention_linear import MODES, OUTPUT_NORMS
from normact.layers.attention._base import AttentionNormalizer
from normact.registry import Paper, Param, register

__all__ = ["NaLaAttention", "ReGLAAttention"]

NALAFORMER = Paper(
    "NaLaFormer: Norm-Aware Linear Attention for Transformer Models",
    2025,
    "2506.21137",
    "Meng, Luo, Huo, Wang, Li, Zhang",
)
REGLA = Paper(
    "ReGLA: Refining Gated Linear Attention", 2025, "2502.01578", "Lu, Kobyzev, Rezagholizadeh, Chen, Langlais"
)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)


@register(
    "nala_attention",
    kind="attention",
    paper=NALAFORMER,
    formula=(
        "w_ts = phi_q(q_t).phi_k(k_s) / (sum_s' phi_q(q_t).phi_k(k_s') + n_t eps); phi_q = [(relu(+-q)/|q|)^p], "
        "p = 3 (0.5 + tanh|q|), phi_k = [relu(+-k^3)]"
    ),
    functional=NF.nala_attention,
    aliases=("nalaformer_attention", "norm_aware_linear_attention"),
    smooth=False,
)
class NaLaAttention(AttentionNormalizer):
    r"""Norm-aware linear attention, NaLa (Meng et al., 2025, arXiv:2506.21137): the query norm, which the
    normalization of linear attention cancels, sets the power of the query features, so longer queries give
    spikier (lower-entropy) weights, as in softmax attention; a sign split keeps the features non-negative
    without dropping the negative entries,

    .. math::
        \phi_q(q) = \Big[\big(\tfrac{\mathrm{ReLU}(q)}{\lVert q\rVert}\big)^{p};
            \big(\tfrac{\mathrm{ReLU}(-q)}{\lVert q\rVert}\big)^{p}\Big],\quad p = 3\,(0.5 + \tanh\lVert q\rVert),
        \qquad \phi_k(k) = \big[\mathrm{ReLU}(k^3); \mathrm{ReLU}(-k^3)\big]

    .. math::
        o_t = \frac{\phi_q(q_t)\, \frac{1}{n_t}\sum_s \phi_k(k_s)^\top v_s}
            {\phi_q(q_t) \cdot \frac{1}{n_t}\sum_s \phi_k(k_s) + \epsilon}

    with :math:`n_t` the keys query t attends. As the authors' released ``NormAwareLinearAttn``
    (NaLaformer/NALA.py): the ReLU sign split (the paper's abstract describes a cosine-based mapping),
    :math:`\epsilon` = 1e-6 added to the mean-normalized denominator. The weights
    :math:`\phi_q(q_t)\cdot\phi_k(k_s) / (\sum_{s'}\phi_q(q_t)\cdot\phi_k(k_{s'}) + n_t\epsilon)` are non-negative
    and sum to 1 up to :math:`\epsilon`. Left to the caller: the block's RoPE (the code rotates the features in the
    numerator only), LePE (a depthwise 5x5 convolution of v), LayerNorm, SiLU gate and projections.

    Args:
        eps: added to the mean-normalized denominator. Default: 1e-6.
        mode: "parallel" (explicit weights, any mask) or "recurrent" (O(n); key masks only). Default: "parallel".
    """

    _hyperparameters = ("eps", "mode")

    def __init__(self, eps: float = 1e-6, mode: str = "parallel") -> None:
        super().__init__()
        self.eps = check_float("eps", eps, positive=True)
        self.mode = _check_choice("mode", mode, MODES)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.nala_attention(q, k, v, causal, mask, self.eps, self.mode, return_weights)


@register(
    "regla_attention",
    kind="attention",
    paper=REGLA,
    formula=(
        "o_t = LN(c sum_s sum_i e^(q_ti - max q_t) e^(k_si - M_t) prod_(s<p<=t) F_pi v_s), F = r(1-(1-g)^2) + "
        "(1-r) g^2, g = sigmoid(a + b_g), r = sigmoid(b + b_r), c = 1/(e sqrt(D(e^2-1)))"
    ),
    functional=NF.regla_attention,
    params=(
        Param("gate_bias", "(heads,)", "logit(gate_init) = log(0.95/0.05) = 2.9444"),
        Param("refine_bias", "(heads,)", "0 (r = 1/2: the refined gate equals g)"),
    ),
    smooth=False,
)
class ReGLAAttention(AttentionNormalizer):
    r"""ReGLA, refining gated linear attention (Lu et al., 2025, arXiv:2502.01578): gated linear attention with
    safe exponential features, a forget gate refined against saturation, and a norm on the output in place of
    the linear-attention denominator,

    .. math::
        S_t = \mathrm{Diag}(F_t)\, S_{t-1} + \phi(k_t)^\top v_t, \qquad
        o_t = \mathrm{Norm}\big(c\, \phi(q_t)\, S_t\big), \qquad c = \frac{1}{e\sqrt{D(e^2-1)}}

    .. math::
        F_t = r_t \big(1 - (1-g_t)^2\big) + (1 - r_t)\, g_t^2,\qquad g_t = \sigma(a_t + b_g),\ r_t = \sigma(b_t + b_r)

    with :math:`\phi(x)_i = e^{x_i - \max}` (the query's own maximum; for keys the largest entry of the keys the
    query attends: the paper's maximum over the sequence, a running maximum when causal), F along the key
    features (GLA's outer-product gating) and c the paper's variance reduction (the standard deviation of
    :math:`\sum_i e^{x_i}e^{y_i}` for standard normal x, y). The refined gate lies in
    :math:`[g^2, 1-(1-g)^2]` and its derivative in g does not vanish at the ends; at r = 1/2 it is g. The gate
    comes from the token (:math:`a_t = W_g x_t`), which a q/k/v normalizer does not see: the layer learns a
    per-head bias :math:`b_g` (and :math:`b_r`), and ``forward`` takes the token-dependent logits ``gate_logits``
    :math:`a` and ``refine_logits`` :math:`b` (broadcasting to (B, H, max(T, S), D)) when the caller projects
    them. Without ``causal`` the decay is the same both ways (the gates strictly after the earlier position up to
    the later one). ``need_weights`` returns the weights inside the norm.

    Args:
        heads: heads with their own gate and refiner biases; 1 shares one pair. Default: 1.
        gate_init: :math:`\sigma(b_g)` at initialisation. Default: 0.95.
        norm: "layer" (LayerNorm, no affine) or "rms" on the output. Default: "layer".
        per_head: normalize each head's output alone (else all heads of a token together). Default: True.
        eps: the norm's epsilon. Default: 1e-5.
        scale: c; default :math:`1/(e\sqrt{D(e^2-1)})` for head dimension D.
        mode: "parallel" (explicit weights, any mask) or "recurrent" (running state, O(n); key masks only).
            Default: "parallel".
    """

    _hyperparameters = ("heads", "gate_init", "norm", "per_head", "eps", "scale", "mode")

    def __init__(
        self,
        heads: int = 1,
        gate_init: float = 0.95,
        norm: str = "layer",
        per_head: bool = True,
        eps: float = 1e-5,
        scale: float | None = None,
        mode: str = "parallel",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.heads = check_int("heads", heads)
        self.gate_init = check_float("gate_init", gate_init, low=0.0, high=1.0)
        if not 0.0 < self.gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {gate_init!r}")
        self.norm = _check_choice("norm", norm, OUTPUT_NORMS)
        if not isinstance(per_head, bool):
            raise TypeError(f"per_head must be a bool, got {per_head!r}")
        self.per_head = per_head
        self.eps = check_float("eps", eps, positive=True)
        self.scale = None if scale is None else check_float("scale", scale, positive=True)
        self.mode = _check_choice("mode", mode, MODES)
        self.gate_bias = nn.Parameter(torch.empty(self.heads, device=device, dtype=dtype))
        self.refine_bias = nn.Parameter(torch.empty(self.heads, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gate_bias = logit(gate_init), refine_bias = 0."""
        with torch.no_grad():
            self.gate_bias.fill_(math.log(self.gate_init / (1.0 - self.gate_init)))
            self.refine_bias.zero_()

    def logits(self, gate_logits: Tensor | None = None, refine_logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The gate and refiner logits passed to :func:`normact.functional.regla_attention`: the per-head biases
        (1, heads, 1, 1), plus the token-dependent logits when given."""
        biases = (self.gate_bias.reshape(1, -1, 1, 1), self.refine_bias.reshape(1, -1, 1, 1))
        out = []
        names = ("gate_logits", "refine_logits")
        for what, extra, bias in zip(names, (gate_logits, refine_logits), biases, strict=True):
            try:
                out.append(bias if extra is None else extra + bias)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"regla_attention: {what} must be a tensor broadcasting to (batch, heads, positions, head_dim) "
                    f"with the layer's {self.heads} heads, got {getattr(extra, 'shape', type(extra))}"
                ) from None
        return out[0], out[1]

    def forward(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        *,
        causal: bool = False,
        mask: Tensor | None = None,
        need_weights: bool = False,
        gate_logits: Tensor | None = None,
        refine_logits: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        if isinstance(q, Tensor) and q.dim() == 4 and self.heads not in (1, q.shape[1]):
            raise ValueError(f"regla_attention: the layer has {self.heads} heads of gate biases, q has {q.shape[1]}")
        gate, refine = self.logits(gate_logits, refine_logits)
        return NF.regla_attention(
            q,
            k,
            v,
            gate,
            refine,
            bool(causal),
            mask,
            self.norm,
            self.per_head,
            self.eps,
            self.scale,
            self.mode,
            bool(need_weights),
        )

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return self(q, k, v, causal=causal, mask=mask, need_weights=return_weights)
