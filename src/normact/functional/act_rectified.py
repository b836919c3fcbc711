"""Stateless math of the piecewise / rectified activations that ``torch.nn`` ships (LeakyReLU, PReLU, RReLU,
ELU, SELU, CELU, ReLU6, Hardtanh, Threshold, Hardshrink, Softshrink, Tanhshrink), with torch's semantics and
argument names.

Every function takes a floating-point tensor (``TypeError`` otherwise), validates its hyperparameters
(``ValueError``/``TypeError`` naming the argument) and returns a tensor of the input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_channels, check_float, check_tensor, upcast
from normact.functional._act_common import check_hardtanh_bounds, check_rrelu_bounds

__all__ = [
    "celu",
    "elu",
    "hardshrink",
    "hardtanh",
    "leaky_relu",
    "prelu",
    "relu6",
    "rrelu",
    "selu",
    "softshrink",
    "tanhshrink",
    "threshold",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def leaky_relu(x: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    r"""Leaky ReLU: :math:`x` for :math:`x > 0`, :math:`\text{negative\_slope} \cdot x` otherwise."""
    check_tensor(x, "leaky_relu")
    negative_slope = check_float("negative_slope", negative_slope)
    return F.leaky_relu(x, negative_slope, inplace=inplace)


def prelu(x: Tensor, weight: Tensor) -> Tensor:
    r"""PReLU: :math:`\max(0, x) + a \min(0, x)` with a learnable slope ``weight``.

    A ``weight`` of one element is shared by every element of ``x`` (any rank); one of ``C > 1`` elements
    applies per channel along dim 1, as in ``torch.nn.functional.prelu``: ``x`` must be ``(N, C, *)``."""
    check_tensor(x, "prelu")
    if not isinstance(weight, Tensor):
        raise TypeError(f"prelu expects weight to be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() > 1 or weight.numel() == 0:
        raise ValueError(f"prelu expects a weight of shape (1,) or (C,), got shape {tuple(weight.shape)}")
    channels = weight.numel()
    if channels > 1:
        check_channels(x, 1, channels, "prelu", "(N, C, *)")
    return F.prelu(x, weight.reshape(channels))


def rrelu(
    x: Tensor, lower: float = 1.0 / 8, upper: float = 1.0 / 3, training: bool = False, inplace: bool = False
) -> Tensor:
    r"""Randomized leaky ReLU: :math:`x` for :math:`x \ge 0`, :math:`a x` otherwise.

    In training each element draws its own slope :math:`a \sim U(\text{lower}, \text{upper})` from torch's
    generator (the same draws as ``torch.nn.functional.rrelu`` under the same seed); in evaluation
    :math:`a = (\text{lower} + \text{upper}) / 2`. float16/bfloat16 inputs in training (for which torch's CPU
    kernel has no implementation) draw and multiply in float32 and are rounded back."""
    check_tensor(x, "rrelu")
    lower, upper = check_rrelu_bounds(lower, upper)
    if training and x.dtype in _LOW_PRECISION:
        y = F.rrelu(x.float(), lower, upper, training=True).to(x.dtype)
        return x.copy_(y) if inplace else y
    return F.rrelu(x, lower, upper, training=training, inplace=inplace)


def elu(x: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    r"""ELU: :math:`x` for :math:`x > 0`, :math:`\alpha (e^x - 1)` otherwise (``alpha >= 0``)."""
    check_tensor(x, "elu")
    alpha = check_float("alpha", alpha, nonnegative=True)
    return F.elu(x, alpha, inplace=inplace)


def selu(x: Tensor, inplace: bool = False) -> Tensor:
    r"""SELU: :math:`\lambda x` for :math:`x > 0`, :math:`\lambda \alpha (e^x - 1)` otherwise, with
    :math:`\alpha = 1.6732632423543772848170429916717` and :math:`\lambda = 1.0507009873554804934193349852946`."""
    check_tensor(x, "selu")
    return F.selu(x, inplace=inplace)


def celu(x: Tensor, alpha: float = 1.0, inplace: bool = False) -> Tensor:
    r"""CELU: :math:`\max(0, x) + \min(0, \alpha (e^{x/\alpha} - 1))` (``alpha > 0``)."""
    check_tensor(x, "celu")
    alpha = check_float("alpha", alpha, positive=True)
    return F.celu(x, alpha, inplace=inplace)


def relu6(x: Tensor, inplace: bool = False) -> Tensor:
    r"""ReLU6: :math:`\min(\max(0, x), 6)`."""
    check_tensor(x, "relu6")
    return F.relu6(x, inplace=inplace)


def hardtanh(x: Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> Tensor:
    r"""Hardtanh: :math:`\min(\max(x, \text{min\_val}), \text{max\_val})` (``min_val < max_val``)."""
    check_tensor(x, "hardtanh")
    min_val, max_val = check_hardtanh_bounds(min_val, max_val)
    return F.hardtanh(x, min_val, max_val, inplace=inplace)


def threshold(x: Tensor, threshold: float, value: float, inplace: bool = False) -> Tensor:
    r"""Threshold: :math:`x` for :math:`x > \text{threshold}`, ``value`` otherwise."""
    check_tensor(x, "threshold")
    threshold = check_float("threshold", threshold)
    value = check_float("value", value)
    return F.threshold(x, threshold, value, inplace=inplace)


def hardshrink(x: Tensor, lambd: float = 0.5) -> Tensor:
    r"""Hardshrink: :math:`x` for :math:`|x| > \lambda`, 0 otherwise (``lambd >= 0``)."""
    check_tensor(x, "hardshrink")
    lambd = check_float("lambd", lambd, nonnegative=True)
    return F.hardshrink(x, lambd)


def softshrink(x: Tensor, lambd: float = 0.5) -> Tensor:
    r"""Softshrink: :math:`\operatorname{sign}(x) \max(|x| - \lambda, 0)` (``lambd >= 0``)."""
    check_tensor(x, "softshrink")
    lambd = check_float("lambd", lambd, nonnegative=True)
    return F.softshrink(x, lambd)


# x cosh x - sinh x = sum_{n >= 1} 2n x^(2n+1) / (2n+1)!: c_n = 2n / (2n+1)! for n = 1..10 (for |x| < 1 the terms
# beyond n = 10 are below 1e-18 of the first)
_TANHSHRINK_SERIES = tuple(2 * n / math.factorial(2 * n + 1) for n in range(1, 11))


def tanhshrink(x: Tensor) -> Tensor:
    r"""Tanhshrink: :math:`x - \tanh(x)`.

    Accurate to a few ulps relative to the result in every dtype: for :math:`|x| < 1`, where the subtraction
    cancels (:math:`x - \tanh x \approx x^3 / 3`; ``torch.nn.functional.tanhshrink`` returns 0 below
    :math:`|x| \approx 10^{-4}` in float32), it is :math:`(x \cosh x - \sinh x) / \cosh x` with the numerator's
    all-same-sign series :math:`\sum_{n \ge 1} 2n\, x^{2n+1} / (2n+1)!`; elsewhere torch's value.
    float16/bfloat16 inputs are computed in float32 and rounded back."""
    check_tensor(x, "tanhshrink")
    xf = upcast(x)
    small = xf.abs() < 1.0
    xs = torch.where(small, xf, 0.0)  # the series only where it is used: finite values and gradients elsewhere
    z = xs * xs
    poly = torch.full_like(z, _TANHSHRINK_SERIES[-1])
    for c in reversed(_TANHSHRINK_SERIES[:-1]):
        poly = poly * z + c
    series = xs * z * poly / torch.cosh(xs)
    return torch.where(small, series, F.tanhshrink(xf)).to(x.dtype)
