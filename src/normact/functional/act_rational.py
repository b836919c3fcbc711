"""Stateless forms of the rational and smoothed activations: Padé Activation Units (Molina, Schramowski &
Kersting, 2020) and the Smooth Activation Unit (Biswas et al., 2021).

Learnable coefficients are arguments. float16/bfloat16 inputs are computed in float32 (powers up to x^5 and
the SAU's (n x)^2 overflow half precision) and returned in the input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import check_float, check_tensor, upcast
from normact.functional._act_common import check_vector, scalar_or_per_channel

__all__ = ["pau", "sau"]

PAU_VERSIONS = ("A", "B")
_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)


def pau(x: Tensor, numerator: Tensor, denominator: Tensor, version: str = "A") -> Tensor:
    r"""Padé Activation Unit, the "safe" rational function :math:`F(x) = P(x) / Q(x)` with
    :math:`P(x) = \sum_{j=0}^{m} a_j x^j` (``numerator`` :math:`= (a_0, \dots, a_m)`) and, for
    ``denominator`` :math:`= (b_1, \dots, b_n)`,

    - ``version="A"`` (the official code's default): :math:`Q(x) = 1 + \sum_{k=1}^{n} |b_k|\,|x|^k`;
    - ``version="B"``: :math:`Q(x) = 1 + \left|\sum_{k=1}^{n} b_k x^k\right|`.

    Both give :math:`Q \ge 1`, so :math:`F` has no poles. The polynomials are evaluated by Horner's rule.
    At a kink (0, and in version B the real roots of :math:`\sum_k b_k x^k`) :math:`|\cdot|` is differentiated
    as 0, torch.abs's convention: :math:`F'(0) = a_1`."""
    check_tensor(x, "pau")
    a = check_vector(numerator, "pau", "numerator")
    b = check_vector(denominator, "pau", "denominator")
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


def sau(x: Tensor, alpha: Tensor | float = 0.15, n: float = 20000.0, channel_axis: int = -1) -> Tensor:
    r"""Smooth Activation Unit: the Leaky ReLU with slope :math:`\alpha` convolved with the Gaussian
    :math:`\phi_n(x) = \frac{n}{\sqrt{2\pi}} e^{-n^2 x^2 / 2}` (standard deviation :math:`\sigma = 1/n`):

    .. math::
        f(x) = \frac{1+\alpha}{2} x + \frac{1-\alpha}{2}\left(x\,\mathrm{erf}\!\left(\frac{n x}{\sqrt2}\right)
        + \frac{\sqrt{2/\pi}}{n} e^{-n^2 x^2/2}\right)

    A tensor ``alpha`` of shape ``(C,)`` applies per channel along ``channel_axis``; a 0-d tensor or a float
    to all elements.

    Computed as :math:`\alpha x + (1 - \alpha)\big(x\,\Phi(n x) + \varphi(n x)/n\big)` (the same function:
    :math:`\alpha x` plus the Gaussian-smoothed ReLU, see :func:`_smooth_relu`): the formula's
    :math:`1 + \mathrm{erf}` cancels for negative :math:`x` and loses the smoothed ReLU's tail (0 instead of
    5e-8 at :math:`x = -5`, :math:`n = 1`, float32), all of the value when :math:`\alpha = 0`."""
    check_tensor(x, "sau")
    n = check_float("n", n, positive=True)
    alpha = scalar_or_per_channel(alpha, x, channel_axis, "sau", "alpha")
    xf = upcast(x)
    if isinstance(alpha, Tensor):
        alpha = alpha.to(xf.dtype)
    return (alpha * xf + (1 - alpha) * _smooth_relu(xf, n)).to(x.dtype)


def _smooth_relu(x: Tensor, n: float) -> Tensor:
    r"""E[ReLU(x + Z/n)], Z ~ N(0, 1): :math:`x\,\Phi(t) + \varphi(t)/n` with :math:`t = n x`.

    For :math:`t \ge 0` as written, :math:`\Phi(t) = \tfrac12\mathrm{erfc}(-t/\sqrt2)`. For :math:`t < 0` the
    two terms cancel (the sum is about :math:`\varphi(t)/(n t^2)`), and erfc's relative error from its rounded
    argument, about :math:`t^2` ulps, would be amplified by another :math:`t^2`; there it is
    :math:`\varphi(t)/n \cdot (1 + t\,\Phi(t)/\varphi(t))` with the Mills ratio
    :math:`\Phi(t)/\varphi(t) = \sqrt{\pi/2}\,\mathrm{erfcx}(-t/\sqrt2)`, whose argument's rounding costs
    O(1) ulps. The two forms are one analytic function, so they agree in value and derivative at the switch."""
    t = n * x
    neg = t < 0
    pos_form = 0.5 * x * torch.erfc(t * -_SQRT_HALF) + _INV_SQRT_2PI / n * torch.exp(-0.5 * t * t)
    tn = torch.where(neg, t, torch.zeros_like(t))  # erfcx(-t / sqrt 2) overflows for large positive t
    mills = _SQRT_HALF_PI * torch.special.erfcx(tn * -_SQRT_HALF)
    neg_form = _INV_SQRT_2PI / n * torch.exp(-0.5 * tn * tn) * (1 + tn * mills)
    return torch.where(neg, neg_form, pos_form)
