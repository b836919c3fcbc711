"""Stateless math of the smooth / sigmoidal activations that ``torch.nn`` ships (Sigmoid, Tanh, LogSigmoid,
Softplus, Softsign, Hardsigmoid, Hardswish) with torch's semantics and argument names, and the sigmoid
approximation of GELU, :math:`x\\,\\sigma(1.702 x)`.

Every function takes a floating-point tensor (``TypeError`` otherwise), validates its hyperparameters
(``ValueError``/``TypeError`` naming the argument) and returns a tensor of the input's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_float, check_tensor, upcast

__all__ = [
    "gelu_sigmoid",
    "hardsigmoid",
    "hardswish",
    "logsigmoid",
    "sigmoid",
    "softplus",
    "softsign",
    "tanh",
]

GELU_SIGMOID_SCALE = 1.702
"""The slope of the logistic gate that approximates the normal CDF: :math:`\\Phi(x) \\approx \\sigma(1.702 x)`
(Hendrycks & Gimpel, arXiv:1606.08415; the authors' code README, hendrycks/GELUs)."""


def sigmoid(x: Tensor) -> Tensor:
    r"""Logistic sigmoid: :math:`\sigma(x) = 1 / (1 + e^{-x})`."""
    check_tensor(x, "sigmoid")
    return torch.sigmoid(x)


def tanh(x: Tensor) -> Tensor:
    r"""Hyperbolic tangent: :math:`\tanh(x) = (e^x - e^{-x}) / (e^x + e^{-x})`."""
    check_tensor(x, "tanh")
    return torch.tanh(x)


def logsigmoid(x: Tensor) -> Tensor:
    r"""Log-sigmoid: :math:`\log \sigma(x) = -\mathrm{softplus}(-x)`, computed without overflow for large
    :math:`|x|`."""
    check_tensor(x, "logsigmoid")
    return F.logsigmoid(x)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    r"""Softplus: :math:`\frac{1}{\beta} \log(1 + e^{\beta x})`, and :math:`x` where :math:`\beta x >`
    ``threshold`` (torch's linear region, for numerical stability). ``beta`` and ``threshold`` must be > 0."""
    check_tensor(x, "softplus")
    beta = check_float("beta", beta, positive=True)
    threshold = check_float("threshold", threshold, positive=True)
    return F.softplus(x, beta, threshold)


def softsign(x: Tensor) -> Tensor:
    r"""Softsign: :math:`x / (1 + |x|)`."""
    check_tensor(x, "softsign")
    return F.softsign(x)


def hardsigmoid(x: Tensor, inplace: bool = False) -> Tensor:
    r"""Hard sigmoid: :math:`\mathrm{ReLU6}(x + 3) / 6` (0 for :math:`x \le -3`, 1 for :math:`x \ge 3`).

    The values are ``torch.nn.functional.hardsigmoid``'s (the same operations: add 3, clamp to [0, 6], divide
    by 6; float16/bfloat16 in float32), and so is the derivative's convention (1/6 strictly inside (-3, 3), 0
    elsewhere, kinks included), but the float64 derivative is 1/6 to double precision: torch's CPU backward
    multiplies by 1/6 rounded to float32 (relative error 3e-8) in every dtype."""
    check_tensor(x, "hardsigmoid")
    xf = upcast(x)
    y = (F.hardtanh(xf + 3.0, 0.0, 6.0) / 6.0).to(x.dtype)
    return x.copy_(y) if inplace else y


def hardswish(x: Tensor, inplace: bool = False) -> Tensor:
    r"""Hard swish: :math:`x\,\mathrm{ReLU6}(x + 3) / 6` (0 for :math:`x \le -3`, :math:`x` for :math:`x \ge 3`)."""
    check_tensor(x, "hardswish")
    return F.hardswish(x, inplace=inplace)


def gelu_sigmoid(x: Tensor) -> Tensor:
    r"""The sigmoid approximation of GELU (also known as QuickGELU): :math:`x\,\sigma(1.702 x)`.
    float16/bfloat16 inputs are computed in float32 and rounded back."""
    check_tensor(x, "gelu_sigmoid")
    xf = upcast(x)
    return (xf * torch.sigmoid(GELU_SIGMOID_SCALE * xf)).to(x.dtype)
