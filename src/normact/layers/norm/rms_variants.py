"""Last-dimension RMS variants from the papers: SimpleRMSNorm (TransNormerLLM), partial RMSNorm (Zhang &
Sennrich), CRMSNorm (Jiang et al.) and FixNorm (Nguyen & Salazar)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, normalize_shape
from normact.functional.rms_variants import check_p, partial_size
from normact.layers import papers
from normact.layers.norm.layer import _AFFINE_PARAMS, _GAIN_OPTIONAL_BIAS_PARAMS, _LastDimNorm
from normact.registry import Paper, register

__all__ = ["CRMSNorm", "FixNorm", "PartialRMSNorm", "SimpleRMSNorm"]

TRANSNORMER_LLM = Paper(
    "Scaling TransNormer to 175 Billion Parameters",
    2023,
    "2307.14995",
    "Qin, Li, Sun, Sun, Shen, Han, Wei, Lv, Luo, Qiao, Zhong",
)
PRE_CRMS_NORM = Paper(
    "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient Pre-LN Transformers",
    2023,
    "2305.14858",
    "Jiang, Gu, Zhu, Pan",
)


@register(
    "simple_rmsnorm",
    kind="norm",
    paper=TRANSNORMER_LLM,
    formula="y = x / sqrt(mean(x^2) + eps), over the last dims, no learnable gain (eps 1e-6 inside the root)",
    functional=NF.simple_rms_norm,
)
class SimpleRMSNorm(nn.Module):
    r"""SimpleRMSNorm (Qin, Li, Sun et al., "Scaling TransNormer to 175 Billion Parameters", 2023, arXiv:2307.14995).

    .. math::
        y = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}}

    over the last ``len(normalized_shape)`` dims, :math:`d = \prod` ``normalized_shape``: an RMSNorm
    without the learnable gain. The paper (Eq. 8) writes :math:`x / (\lVert x\rVert_2/\sqrt{d})` without
    ``eps``; the authors' PyTorch reference (``SimpleRMSNormTorch``, Doraemonzzz) computes
    ``x * rsqrt(mean(x^2) + eps)`` in float32 with ``eps=1e-6``, which is what this layer does. It equals
    ``torch.nn.functional.rms_norm(x, normalized_shape, None, eps)``. (An earlier code base of the same
    author, transnormer-v2, put ``eps=1e-4`` outside the root; that form is :class:`RMSNormPaper` without gain.)

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the mean square inside the root. Default: 1e-6.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    __constants__ = ["normalized_shape", "eps"]

    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-6) -> None:
        super().__init__()
        self.normalized_shape = normalize_shape(normalized_shape)
        self.eps = check_eps(eps)

    def forward(self, x: Tensor) -> Tensor:
        return NF.simple_rms_norm(x, self.normalized_shape, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


@register(
    "partial_rmsnorm",
    kind="norm",
    paper=papers.RMS_NORM,
    formula=(
        "y = x / (||x[:k]||_2 / sqrt(k) + eps) * weight (+ bias), k = ceil(p * d) leading features "
        "(p = 6.25%), over the last dims (eps outside the root)"
    ),
    functional=NF.partial_rms_norm,
    params=_GAIN_OPTIONAL_BIAS_PARAMS,
)
class PartialRMSNorm(_LastDimNorm):
    r"""Partial RMSNorm, pRMSNorm (Zhang & Sennrich, "Root Mean Square Layer Normalization", 2019, arXiv:1910.07467).

    .. math::
        y = \frac{x}{\overline{\mathrm{RMS}}(x) + \epsilon} \odot g + b, \qquad
        \overline{\mathrm{RMS}}(x) = \sqrt{\frac{1}{k}\sum_{i=1}^{k} x_i^2}, \quad k = \lceil p\, d \rceil

    The RMS is estimated from the first :math:`k` of the :math:`d = \prod` ``normalized_shape`` elements
    (row-major order when several dims are normalized); the paper uses :math:`p = 6.25\%`. As in the paper's
    code (``rmsnorm_torch.py``), ``eps`` (default 1e-8) is added outside the root and the offset ``b`` is
    off by default. Deliberate difference: that code takes ``k = int(p * d)`` (floor, which is 0 for
    ``p * d < 1``); here :math:`k = \lceil p\,d \rceil \ge 1`, equal whenever ``p * d`` is an integer. With
    ``p = 1`` the layer is :class:`RMSNormPaper`.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        p: fraction of the normalized elements the RMS is estimated from, in (0, 1]. Default: 0.0625.
        eps: added to the partial RMS. Default: 1e-8.
        elementwise_affine: learn the gain ``weight`` (init 1). Default: True.
        bias: learn the offset ``bias`` (init 0). Default: False.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    __constants__ = ["normalized_shape", "eps", "elementwise_affine", "p"]

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        p: float = 0.0625,
        eps: float = 1e-8,
        elementwise_affine: bool = True,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        p = check_p(p)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)
        self.p = p
        self.k = partial_size(math.prod(self.normalized_shape), self.p)

    def forward(self, x: Tensor) -> Tensor:
        return NF.partial_rms_norm(x, self.normalized_shape, self.p, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p} (k={self.k})"


@register(
    "crmsnorm",
    kind="norm",
    paper=PRE_CRMS_NORM,
    formula=(
        "y = x / sqrt((||x||_2^2 + (sum x)^2) / (d + 1) + eps) * weight + bias, over the last dims: the RMSNorm "
        "of the zero-mean (d+1)-vector (x, -sum x) compressed to its first d coordinates"
    ),
    functional=NF.crms_norm,
    params=_AFFINE_PARAMS,
)
class CRMSNorm(_LastDimNorm):
    r"""Compressed RMSNorm (Jiang, Gu, Zhu & Pan, "Pre-RMSNorm and Pre-CRMSNorm Transformers", 2023, arXiv:2305.14858).

    .. math::
        y = \frac{x}{\sqrt{\frac{1}{d+1}\left(\sum_{i=1}^{d} x_i^2 + \big(\sum_{i=1}^{d} x_i\big)^2\right)
        + \epsilon}} \odot \gamma + \beta

    A zero-mean vector :math:`z \in \mathbb{R}^{d+1}` is losslessly stored as its first :math:`d`
    coordinates :math:`x` (the last is :math:`-\sum_i x_i`); CRMSNorm of :math:`x` is RMSNorm of :math:`z`
    restricted to those coordinates, so ``CRMSNorm(z[..., :-1]) == RMSNorm(z)[..., :-1] ==
    LayerNorm(z)[..., :-1]`` for zero-mean :math:`z` (same ``eps``, no affine). ``normalized_shape`` is the
    compressed size :math:`d`. Formula and ``eps=1e-5`` follow the authors' code (``crms_norm`` in
    ZixuanJiang/pre-rmsnorm-transformer, computed in float32). Deliberate difference: that code's module
    subclasses ``torch.nn.LayerNorm`` but ignores its affine (the paper folds :math:`\gamma, \beta` into the
    next linear layer); here the per-element ``weight`` (init 1) and ``bias`` (init 0) are applied as in
    LayerNorm, which leaves the initial output unchanged.

    Args:
        normalized_shape: size of the trailing (compressed) dimension(s) to normalize.
        eps: added to the mean square inside the root. Default: 1e-5.
        elementwise_affine: learn a per-element gain ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        bias: learn the ``bias`` too (with ``elementwise_affine``). Default: True.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return NF.crms_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


@register(
    "fixnorm",
    kind="norm",
    paper=papers.SCALE_NORM,
    formula="y = g * x / max(||x||_2, eps), over the last dims, g a fixed length (default 1, not learned)",
    functional=NF.fix_norm,
)
class FixNorm(nn.Module):
    r"""FixNorm (Nguyen & Salazar, "Transformers without Tears", 2019, arXiv:1910.05895; after Nguyen & Chiang, 2018).

    .. math::
        y = g \, \frac{x}{\max(\lVert x \rVert_2, \epsilon)}

    over the last ``len(normalized_shape)`` dims: every vector is rescaled to the fixed length :math:`g`
    (``length``, a constant, not learned; :class:`ScaleNorm` is the variant with a learned :math:`g`). The
    paper applies it to word embeddings; its code (``fix_norm`` in tnq177/transformers_without_tears) uses
    ``F.normalize``, i.e. :math:`g = 1` and ``eps=1e-12``, the defaults here. That code then multiplies the
    input embeddings by :math:`\sqrt{d}` outside the normalization; ``length=math.sqrt(d)`` folds it in.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        length: the fixed output length :math:`g` (> 0). Default: 1.0.
        eps: lower bound of the norm. Default: 1e-12.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    __constants__ = ["normalized_shape", "length", "eps"]

    def __init__(self, normalized_shape: int | Sequence[int], length: float = 1.0, eps: float = 1e-12) -> None:
        super().__init__()
        self.normalized_shape = normalize_shape(normalized_shape)
        self.length = check_float("length", length, positive=True)
        self.eps = check_eps(eps)

    def forward(self, x: Tensor) -> Tensor:
        return NF.fix_norm(x, self.normalized_shape, self.length, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, length={self.length:.6g}, eps={self.eps}"
