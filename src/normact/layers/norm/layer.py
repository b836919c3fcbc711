"""Per-sample normalizations over the last dimensions: LayerNorm and RMSNorm (torch's and the paper's)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, normalize_shape
from normact.layers import papers
from normact.layers.norm._channel import reset_channel_affine
from normact.layers.norm._features import add_elementwise_affine
from normact.registry import Param, register

__all__ = ["LayerNorm", "RMSNorm", "RMSNormPaper"]


class _LastDimNorm(nn.Module):
    """Shared constructor of the last-dimension norms: shape, eps, affine switches and factory kwargs."""

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]
    normalized_shape: tuple[int, ...]
    _has_bias_switch = True  # False for the norms without a ``bias`` argument (no ``bias=`` in the repr)

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None,
        elementwise_affine: bool,
        bias: bool,
        *,
        allow_none_eps: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.normalized_shape = normalize_shape(normalized_shape)
        self.eps = check_eps(eps, allow_none=allow_none_eps)
        self.elementwise_affine = bool(elementwise_affine)
        add_elementwise_affine(self, self.normalized_shape, self.elementwise_affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0."""
        reset_channel_affine(self)

    def extra_repr(self) -> str:
        text = f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        if self._has_bias_switch:
            text += f", bias={self.bias is not None}"
        return text


_AFFINE_PARAMS = (
    Param("weight", "normalized_shape", "1"),
    Param("bias", "normalized_shape", "0"),
)
# The paper's RMSNorm and its variants: a gain, and an offset only with bias=True (off by default).
_GAIN_OPTIONAL_BIAS_PARAMS = (
    Param("weight", "normalized_shape", "1"),
    Param("bias", "normalized_shape", "0 (bias=True only)"),
)


@register(
    "layernorm",
    kind="norm",
    verified_against=("torch.nn.LayerNorm",),
    paper=papers.LAYER_NORM,
    formula="y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, over the last dims (biased variance)",
    functional=NF.layer_norm,
    params=_AFFINE_PARAMS,
    aliases=("ln",),
)
class LayerNorm(_LastDimNorm):
    r"""Layer normalization (Ba, Kiros & Hinton, 2016, arXiv:1607.06450).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma + \beta

    mean and biased variance over the last ``len(normalized_shape)`` dimensions; same semantics, kernel and
    state-dict keys as ``torch.nn.LayerNorm``. Known limitation of that kernel: it applies the affine as
    :math:`x \cdot r\gamma + (\beta - \mu r \gamma)`, :math:`r = 1/\sqrt{\sigma^2+\epsilon}`, so rows of
    (near) zero variance and large mean lose accuracy to cancellation (about 0.05 absolute in bfloat16 for
    one element of 1e4 with the default eps).

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the variance inside the square root. Default: 1e-5.
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
        return NF.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


@register(
    "rmsnorm",
    kind="norm",
    verified_against=("torch.nn.RMSNorm",),
    paper=papers.RMS_NORM,
    formula="y = x / sqrt(mean(x^2) + eps) * weight, over the last dims (torch.nn.RMSNorm semantics)",
    functional=NF.rms_norm,
    params=(Param("weight", "normalized_shape", "1"),),
)
class RMSNorm(_LastDimNorm):
    r"""RMSNorm with ``torch.nn.RMSNorm`` semantics (Zhang & Sennrich, 2019, arXiv:1910.07467).

    .. math::
        y = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}} \odot \gamma

    ``eps`` inside the square root. ``eps=None`` (default, as torch) uses ``torch.finfo(dtype).eps`` of the
    computation dtype (float32 for float16/bfloat16 inputs, which are normalized in float32).
    The paper's own form, with ``eps`` outside the root and an optional bias, is :class:`RMSNormPaper`.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the mean square. Default: None (machine epsilon).
        elementwise_affine: learn a per-element gain ``weight`` (init 1). Default: True.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    _has_bias_switch = False

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            normalized_shape, eps, elementwise_affine, False, allow_none_eps=True, device=device, dtype=dtype
        )

    def forward(self, x: Tensor) -> Tensor:
        return NF.rms_norm(x, self.normalized_shape, self.weight, self.eps)


@register(
    "rmsnorm_paper",
    kind="norm",
    paper=papers.RMS_NORM,
    formula="y = x / (||x||_2 / sqrt(d) + eps) * weight (+ bias), over the last dims (eps outside the root)",
    functional=NF.rms_norm_paper,
    params=_GAIN_OPTIONAL_BIAS_PARAMS,
)
class RMSNormPaper(_LastDimNorm):
    r"""RMSNorm as defined by the paper's code (Zhang & Sennrich, 2019, arXiv:1910.07467).

    .. math::
        y = \frac{x}{\mathrm{RMS}(x) + \epsilon} \odot g + b, \qquad
        \mathrm{RMS}(x) = \frac{\lVert x \rVert_2}{\sqrt{d}}

    Unlike :class:`RMSNorm`, ``eps`` (default 1e-8) is added **outside** the square root, and an offset
    ``b`` (init 0) is available with ``bias=True`` (off by default, as in the paper).

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the RMS. Default: 1e-8.
        elementwise_affine: learn the gain ``weight`` (init 1). Default: True.
        bias: learn the offset ``bias`` (init 0). Default: False.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-8,
        elementwise_affine: bool = True,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return NF.rms_norm_paper(x, self.normalized_shape, self.weight, self.bias, self.eps)
