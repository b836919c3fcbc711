"""Linear attentions without softmax, normalized elsewhere: Galerkin and Fourier attention (layer-normalized
keys and values, or queries and keys, and a 1/n mean over the keys) and TransNormer's NormAttention (a norm on
the output, with TransNormerLLM's exponential decay). Each has the explicit O(n^2) form and the O(n) recurrent
form (``mode``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.functional.attention_linear import FEATURE_MAPS, MODES, OUTPUT_NORMS
from normact.layers.attention._base import AttentionNormalizer
from normact.registry import Paper, register

__all__ = ["FourierAttention", "GalerkinAttention", "NormLinearAttention"]

GALERKIN = Paper("Choose a Transformer: Fourier or Galerkin", 2021, "2105.14995", "Cao")
TRANSNORMER = Paper("The Devil in Linear Transformer", 2022, "2210.10340", "Qin, Han, Sun, Li, Kong, Barnes, Zhong")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return str(value)


@register(
    "galerkin_attention",
    kind="attention",
    paper=GALERKIN,
    formula="o_t = (1/n_t) sum_s (q_t . LN(k_s)) LN(v_s) = q_t (LN(K)^T LN(V)) / n; LN over head_dim, no softmax",
    functional=NF.galerkin_attention,
)
class GalerkinAttention(AttentionNormalizer):
    r"""Galerkin attention (Cao, 2021, arXiv:2105.14995): softmax-free, keys and values layer-normalized over
    the head dimension,

    .. math::
        o_t = \frac{1}{n_t} \sum_s (q_t \cdot \tilde k_s)\, \tilde v_s
            = \frac{1}{n}\, q_t\, (\tilde K^\top \tilde V), \qquad \tilde k = \mathrm{LN}(k),\ \tilde v = \mathrm{LN}(v)

    a Petrov-Galerkin projection of the queries on the span of the keys; :math:`n_t` is the number of keys query t
    attends (all S, the causal prefix, or the unpadded keys). ``mode="recurrent"`` computes
    :math:`\tilde K^\top \tilde V` first, O(n d^2). The authors' per-head LayerNorms have an affine (identity at
    initialisation) that is left out here. ``need_weights`` returns :math:`q_t\cdot\tilde k_s/n_t`: signed,
    unnormalized, and they multiply the normalized values.

    Args:
        eps: the LayerNorm epsilon. Default: 1e-5 (the authors' code).
        mode: "parallel" (explicit weights, any mask) or "recurrent" (O(n); key masks only). Default: "parallel".
    """

    _hyperparameters = ("eps", "mode")

    def __init__(self, eps: float = 1e-5, mode: str = "parallel") -> None:
        super().__init__()
        self.eps = check_float("eps", eps, positive=True)
        self.mode = _check_choice("mode", mode, MODES)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.galerkin_attention(q, k, v, causal, mask, self.eps, self.mode, return_weights)


@register(
    "fourier_attention",
    kind="attention",
    paper=GALERKIN,
    formula="o_t = (scale/n_t) sum_s (LN(q_t) . LN(k_s)) v_s; LN over head_dim, scale = 1/sqrt(head_dim)",
    functional=NF.fourier_attention,
)
class FourierAttention(AttentionNormalizer):
    r"""Fourier attention (Cao, 2021, arXiv:2105.14995): softmax-free, queries and keys layer-normalized over the
    head dimension,

    .. math::
        o_t = \frac{\sigma}{n_t} \sum_s (\tilde q_t \cdot \tilde k_s)\, v_s,
            \qquad \tilde q = \mathrm{LN}(q),\ \tilde k = \mathrm{LN}(k)

    a quadrature of a kernel integral; :math:`n_t` is the number of keys query t attends. The authors' code keeps
    :math:`\sigma = 1/\sqrt{D}`; the paper writes :math:`(\tilde Q \tilde K^\top) V / n` (``scale=1``). The
    per-head LayerNorm affine of the code (identity at initialisation) is left out. ``need_weights`` returns the
    signed weights :math:`\sigma\,\tilde q_t\cdot\tilde k_s/n_t`.

    Args:
        scale: :math:`\sigma`; default :math:`1/\sqrt{D}`.
        eps: the LayerNorm epsilon. Default: 1e-5.
        mode: "parallel" or "recurrent" (:math:`\tilde Q(\tilde K^\top V)`, O(n)). Default: "parallel".
    """

    _hyperparameters = ("scale", "eps", "mode")

    def __init__(self, scale: float | None = None, eps: float = 1e-5, mode: str = "parallel") -> None:
        super().__init__()
        self.scale = None if scale is None else check_float("scale", scale, positive=True)
        self.eps = check_float("eps", eps, positive=True)
        self.mode = _check_choice("mode", mode, MODES)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.fourier_attention(q, k, v, causal, mask, self.scale, self.eps, self.mode, return_weights)


@register(
    "norm_linear_attention",
    kind="attention",
    paper=TRANSNORMER,
    formula="o_t = SRMSNorm(sum_s lambda_h^|t-s| (silu(q_t) . silu(k_s)) v_s); lambda_h = exp(-m_h), ALiBi slopes m_h",
    functional=NF.norm_linear_attention,
    aliases=("transnormer_attention",),
)
class NormLinearAttention(AttentionNormalizer):
    r"""TransNormer's NormAttention (Qin et al., 2022, arXiv:2210.10340) with the decay of TransNormerLLM
    (arXiv:2307.14995): linear attention whose output, not its weights, is normalized,

    .. math::
        o_t = \mathrm{Norm}\Big(\sum_s \lambda_h^{|t-s|}\, \big(\phi(q_t)\cdot\phi(k_s)\big)\, v_s\Big),
        \qquad \lambda_h = e^{-m_h (1 - l/(L-1) + 10^{-5})}

    with :math:`m_h` the ALiBi slopes of the H heads, l the layer index of L layers. Causal, this is
    TransNormerLLM's Lightning attention, :math:`S_t = \lambda S_{t-1} + \phi(k_t)^\top v_t`,
    :math:`o_t = \mathrm{Norm}(\phi(q_t) S_t)`. The output gate and projections of the block are left to the
    caller. ``need_weights`` returns :math:`\lambda^{|t-s|}\phi(q_t)\cdot\phi(k_s)`, before the normalization.

    Args:
        decay: "alibi" (the per-head :math:`\lambda_h` above), a number in (0, 1] for every head, or None (no
            decay, TransNormer). Default: "alibi".
        layer_index: l. Default: 0.
        num_layers: L. Default: 1.
        feature_map: :math:`\phi`: "silu" (TransNormerLLM), "elu_plus_one" (TransNormer), "relu", "identity".
        norm: "rms" (SRMSNorm :math:`x/\sqrt{\overline{x^2}+\epsilon}`) or "layer" (LayerNorm, no affine).
        per_head: normalize each head's output alone instead of all heads of a token together (the code's
            norm over the concatenated hidden state). Default: False.
        eps: the norm's epsilon. Default: 1e-6.
        mode: "parallel" or "recurrent" (running state, O(n)). Default: "parallel".
    """

    _hyperparameters = ("decay", "layer_index", "num_layers", "feature_map", "norm", "per_head", "eps", "mode")

    def __init__(
        self,
        decay: str | float | None = "alibi",
        layer_index: int = 0,
        num_layers: int = 1,
        feature_map: str = "silu",
        norm: str = "rms",
        per_head: bool = False,
        eps: float = 1e-6,
        mode: str = "parallel",
    ) -> None:
        super().__init__()
        if decay is not None and decay != "alibi":
            decay = check_float("decay", decay, positive=True, high=1.0)
        self.decay = decay
        self.num_layers = check_int("num_layers", num_layers)
        self.layer_index = check_int("layer_index", layer_index, minimum=0)
        if self.layer_index >= self.num_layers:
            raise ValueError(f"layer_index must be < num_layers = {self.num_layers}, got {self.layer_index}")
        self.feature_map = _check_choice("feature_map", feature_map, FEATURE_MAPS)
        self.norm = _check_choice("norm", norm, OUTPUT_NORMS)
        if not isinstance(per_head, bool):
            raise TypeError(f"per_head must be a bool, got {per_head!r}")
        self.per_head = per_head
        self.eps = check_float("eps", eps, positive=True)
        self.mode = _check_choice("mode", mode, MODES)

    def head_decay(self, num_heads: int) -> Tensor | float | None:
        """The decay passed to the functional form for ``num_heads`` heads."""
        if self.decay == "alibi":
            return NF.transnormer_decay(num_heads, self.layer_index, self.num_layers)
        return self.decay

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool, mask: Tensor | None, return_weights: bool) -> Any:
        return NF.norm_linear_attention(
            q,
            k,
            v,
            self.head_decay(q.shape[1] if isinstance(q, Tensor) and q.dim() == 4 else 1),  # bad q: the check raises
            causal,
            mask,
            self.feature_map,
            self.norm,
            self.per_head,
            self.eps,
            self.mode,
            return_weights,
        )
