"""Stateless forms of the rational and smoothed activations: Padé Activation Units (Molina, Schramowski &
Kersting, 2020) and the Smooth Activation Unit (Biswas et al., 2021).

Learnable coefficients are arguments. float16/bfloat16 inputs are computed in float32 (powers up to x^5 and
the SAU's (n x)^2 overflow half precision) and returned in the input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import check_channels, check_float, check_tensor, shape_str, upcast

__all__ = ["pau", "sau"]

PAU_VERSIONS = ("A", "B")


def _coefficients(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"pau: {name} must be a floating-point tensor, got {type(t).__name__}")
    if t.dim() != 1 or t.numel() == 0:
        raise ValueError(f"pau: {name} must have shape (k,) with k >= 1, got shape {shape_str(t.shape)}")
    return t


def pau(x: Tensor, numerator: Tensor, denominator: Tensor, version: str = "A") -> Tensor:
    r"""Padé Activation Unit, the "safe" rational function :math:`F(x) = P(x) / Q(x)` with
    :math:`P(x) = \sum_{j=0}^{m} a_j x^j` (``numerator`` :math:`= (a_0, \dots, a_m)`) and, for
    ``denominator`` :math:`= (b_1, \dots, b_n)`,

    - ``version="A"`` (the official code's default): :math:`Q(x) = 1 + \sum_{k=1}^{n} |b_k|\,|x|^k`;
    - ``version="B"``: :math:`Q(x) = 1 + \left|\sum_{k=1}^{n} b_k x^k\right|`.

    Both give :math:`Q \ge 1`, so :math:`F` has no poles. The polynomials are evaluated by Horner's rule."""
    check_tensor(x, "pau")
    a = _coefficients(numerator, "numerator")
    b = _coefficients(denominator, "denominator")
    if version not in PAU_VERSIONS:
        raise ValueError(f"pau: version must be one of {PAU_VERSIONS}, got {version!r}")
    xf = upcast(x)
    a, b = a.to(xf.dtype), b.to(xf.dtype)
    p = a[-1].expand_as(xf)
    for j in range(a.numel() - 2, -1, -1):
        p = p * xf + a[j]
    if version == "A":
        ax, ab = xf.abs(), b.abs()
        q = ab[-1].expand_as(xf)
        for k in range(b.numel() - 2, -1, -1):
            q = q * ax + ab[k]
        q = 1.0 + q * ax
    else:
        q = b[-1].expand_as(xf)
        for k in range(b.numel() - 2, -1, -1):
            q = q * xf + b[k]
        q = 1.0 + (q * xf).abs()
    return (p / q).to(x.dtype)


def _per_channel(p: Tensor, x: Tensor, channel_axis: int, name: str) -> Tensor:
    """A (C,) parameter reshaped to broadcast along ``channel_axis`` of ``x``; a 0-d one unchanged."""
    if p.dim() == 0:
        return p
    check_channels(x, channel_axis, p.numel(), name, f"(..., C, ...) with C at dim {channel_axis}")
    axis = channel_axis % x.dim()
    return p.reshape((-1,) + (1,) * (x.dim() - axis - 1))


def sau(x: Tensor, alpha: Tensor | float = 0.15, n: float = 20000.0, channel_axis: int = -1) -> Tensor:
    r"""Smooth Activation Unit: the Leaky ReLU with slope :math:`\alpha` convolved with the Gaussian
    :math:`\phi_n(x) = \frac{n}{\sqrt{2\pi}} e^{-n^2 x^2 / 2}` (standard deviation :math:`\sigma = 1/n`):

    .. math::
        f(x) = \frac{1+\alpha}{2} x + \frac{1-\alpha}{2}\left(x\,\mathrm{erf}\!\left(\frac{n x}{\sqrt2}\right)
        + \frac{\sqrt{2/\pi}}{n} e^{-n^2 x^2/2}\right)

    A tensor ``alpha`` of shape ``(C,)`` applies per channel along ``channel_axis``; a 0-d tensor or a float
    to all elements."""
    check_tensor(x, "sau")
    n = check_float("n", n, positive=True)
    alpha = _per_channel(alpha, x, channel_axis, "sau") if isinstance(alpha, Tensor) else check_float("alpha", alpha)
    xf = upcast(x)
    if isinstance(alpha, Tensor):
        alpha = alpha.to(xf.dtype)
    nx = n * xf
    abs_part = xf * torch.erf(nx / math.sqrt(2.0)) + math.sqrt(2.0 / math.pi) / n * torch.exp(-0.5 * nx * nx)
    return (0.5 * (1 + alpha) * xf + 0.5 * (1 - alpha) * abs_part).to(x.dtype)
