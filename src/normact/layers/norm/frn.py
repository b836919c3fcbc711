"""Filter Response Normalization with the Thresholded Linear Unit (Singh & Krishnan, 2019): per-sample,
per-channel normalization by the mean square over (H, W), no mean subtraction, no batch dependence."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact.layers.norm._channel import (
    LAYOUT_2D,
    add_channel_affine,
    check_input,
    options_repr,
    reset_channel_affine,
)
from normact.layers.norm._features import FeatureNorm
from normact.registry import Paper, Param, register

__all__ = ["FilterResponseNorm2d"]

FRN = Paper(
    "Filter Response Normalization Layer: Eliminating Batch Dependence in the Training of Deep Neural Networks",
    2019,
    "1911.09737",
    "Singh, Krishnan",
)

_FORMULA = "y = weight * x / sqrt(nu2 + eps) + bias; nu2 = mean of x^2 over (H, W) per sample and channel"
_AFFINE = (Param("weight", "(C,)", "1"), Param("bias", "(C,)", "0"))
_FRN_ENTRY: dict[str, Any] = {"kind": "norm", "paper": FRN, "functional": NF.filter_response_norm}  # both entries


@register(
    "frn_no_tlu",
    verified_against=("timm.layers.filter_response_norm.FilterResponseNormAct2d",),
    formula=_FORMULA + " (no TLU)",
    params=_AFFINE,
    defaults={"apply_act": False},
    **_FRN_ENTRY,
)
@register(
    "frn",
    verified_against=("timm.layers.filter_response_norm.FilterResponseNormTlu2d",),
    formula=_FORMULA + "; then the TLU z = max(y, tau), tau learned per channel",
    params=(*_AFFINE, Param("tau", "(C,)", "0")),
    smooth=False,
    aliases=("frn_tlu",),
    **_FRN_ENTRY,
)
class FilterResponseNorm2d(FeatureNorm):
    r"""Filter Response Normalization (Singh & Krishnan, 2019, arXiv:1911.09737) with its TLU, on ``(N, C, H, W)``.

    .. math::
        \nu^2 = \frac{1}{HW}\sum_{h,w} x_{nchw}^2, \qquad
        y = \gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta, \qquad
        z = \max(y, \tau)

    per sample and channel (no mean subtraction, no batch statistics). :math:`\gamma` = 1, :math:`\beta` = 0
    and the TLU threshold :math:`\tau` = 0 are learned per channel; ``apply_act=False`` drops the TLU
    (registry name ``frn_no_tlu``: plain FRN, no ``tau`` parameter). With ``apply_act=True`` this is timm's
    ``FilterResponseNormTlu2d`` (``frntlu`` in timm's norm-act factory), with ``apply_act=False`` timm's
    ``FilterResponseNormAct2d(apply_act=False)``; same parameter names, shapes, initial values and
    state-dict keys (timm's unused ``rms`` flag is not taken; ``eps`` comes second, as in every normact
    norm, where timm puts ``apply_act`` second: pass it by keyword). The TLU's kink sits where :math:`y = \tau`,
    which depends on the whole map, so the layer is registered as non-smooth.

    Differences: ``eps`` defaults to timm's 1e-5 (the paper's listing uses 1e-6); the paper's learned
    :math:`\epsilon` variant for 1x1 maps is not implemented (``eps`` is a fixed constant). On 1x1 maps FRN
    degenerates to :math:`\gamma\, x/\sqrt{x^2 + \epsilon} + \beta` (close to a sign function), as in the paper.
    float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        eps: added to :math:`\nu^2` inside the square root. Default: 1e-5.
        apply_act: apply the TLU :math:`\max(y, \tau)` and learn ``tau``. Default: True.

    Shape:
        Input ``(N, C, H, W)``; output the same shape.
    """

    __constants__ = ["num_features", "eps", "apply_act"]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        apply_act: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.apply_act = bool(apply_act)
        add_channel_affine(self, self.num_features, True, factory_kwargs)
        add_channel_affine(self, self.num_features, self.apply_act, factory_kwargs, ("tau",))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0, tau = 0."""
        reset_channel_affine(self, biases=("bias", "tau"))

    def forward(self, x: Tensor) -> Tensor:
        check_input(self, x, (4,), LAYOUT_2D)
        return NF.filter_response_norm(x, self.weight, self.bias, self.tau, self.eps)

    def extra_repr(self) -> str:
        return options_repr(self, "eps", "apply_act")
