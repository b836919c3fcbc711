"""Stateless forms of the learnable polynomial-type activations: PolyReLU and PolyNorm (Zhuo et al., 2024),
the Hermite, Fourier and tropical activations of torchortho (Khalfaoui-Hassani & Kesselheim, 2025) and the
Chebyshev learnable-activation layer of SL²A-INR (Heidari et al., 2024).

Learnable coefficients are arguments. float16/bfloat16 inputs are computed in float32 (powers such as x^3,
x^6 and the factorials overflow or lose half precision) and returned in the input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import check_float, check_tensor, shape_str, upcast
from normact.functional._act_common import check_float_tensor, check_vector

__all__ = ["fourier_act", "hermite_act", "polynorm", "polyrelu", "sl2a_chebyshev", "tropical_act"]

HERMITE_NORMALIZATIONS = ("factorial", "sqrt_factorial")
FOURIER_NORMALIZATIONS = ("factorial", "none")


def _bias(t: object, layer: str) -> Tensor:
    """A tensor of one element (shape (1,) or ()), as a 0-d tensor."""
    t = check_float_tensor(t, layer, "bias")
    if t.numel() != 1 or t.dim() > 1:
        raise ValueError(f"{layer}: bias must have shape (1,) or (), got shape {shape_str(t.shape)}")
    return t.reshape(())


def polyrelu(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    r"""PolyReLU of order :math:`r` = ``weight.numel()``:

    .. math::
        f(x) = \sum_{j=0}^{r-1} w_j\,\mathrm{ReLU}(x)^{r-j} + b

    ``weight`` :math:`= (w_0, \dots, w_{r-1})` in the official order (``weight[0]`` multiplies the highest
    power, ``weight[-1]`` the linear term), ``bias`` of shape ``(1,)`` or ``()``. Evaluated by Horner's rule.
    At :math:`x = 0` the derivative is 0 (ReLU's derivative there is torch.relu's, 0: the left piece)."""
    check_tensor(x, "polyrelu")
    w = check_vector(weight, "polyrelu", "weight")
    b = _bias(bias, "polyrelu")
    xf = upcast(x)
    w, b = w.to(xf.dtype), b.to(xf.dtype)
    r = torch.relu(xf)
    acc = w[0] * r
    for j in range(1, w.numel()):
        acc = (acc + w[j]) * r
    return (acc + b).to(x.dtype)


def _rms_normalize(z: Tensor, eps: float) -> Tensor:
    """z / sqrt(mean(z^2 over the last dim) + eps): RMSNorm without a weight."""
    return z * torch.rsqrt(z.square().mean(-1, keepdim=True) + eps)


def polynorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6) -> Tensor:
    r"""PolyNorm of order :math:`r` = ``weight.numel()``:

    .. math::
        f(x) = \sum_{j=0}^{r-1} w_j\,N\!\left(x^{r-j}\right) + b, \qquad
        N(z) = \frac{z}{\sqrt{\mathrm{mean}_{\text{last dim}}(z^2) + \epsilon}}

    Each power is RMS-normalized over the last dimension (so the output of one position depends on the whole
    last-dimension vector); ``weight[0]`` multiplies the normalized highest power. Input of shape ``(*, d)``."""
    check_tensor(x, "polynorm")
    if x.dim() < 1:
        raise ValueError(
            f"polynorm expects an input of shape (*, d) with at least 1 dimension, got shape {shape_str(x.shape)}"
        )
    w = check_vector(weight, "polynorm", "weight")
    b = _bias(bias, "polynorm")
    eps = check_float("eps", eps, positive=True)
    xf = upcast(x)
    w, b = w.to(xf.dtype), b.to(xf.dtype)
    r = w.numel()
    out = w[r - 1] * _rms_normalize(xf, eps)
    power = xf
    for j in range(r - 2, -1, -1):
        power = power * xf
        out = out + w[j] * _rms_normalize(power, eps)
    return (out + b).to(x.dtype)


def hermite_act(x: Tensor, coefficients: Tensor, normalization: str = "factorial") -> Tensor:
    r"""Learnable Hermite activation of degree :math:`n` = ``coefficients.numel() - 1``:

    .. math::
        f(x) = \sum_{k=0}^{n} a_k\,\frac{\mathrm{He}_k(x)}{c_k}, \qquad
        c_k = k! \ (\texttt{"factorial"}) \ \text{or}\ \sqrt{k!} \ (\texttt{"sqrt_factorial"})

    with the probabilists' Hermite polynomials :math:`\mathrm{He}_0 = 1`, :math:`\mathrm{He}_1 = x`,
    :math:`\mathrm{He}_{k+1} = x\,\mathrm{He}_k - k\,\mathrm{He}_{k-1}`, evaluated by that recurrence on the
    scaled basis. ``"sqrt_factorial"`` makes the basis orthonormal under :math:`N(0, 1)`."""
    check_tensor(x, "hermite_act")
    a = check_vector(coefficients, "hermite_act", "coefficients")
    if normalization not in HERMITE_NORMALIZATIONS:
        raise ValueError(f"hermite_act: normalization must be one of {HERMITE_NORMALIZATIONS}, got {normalization!r}")
    xf = upcast(x)
    a = a.to(xf.dtype)
    prev = torch.ones_like(xf)  # h_0
    out = a[0] * prev
    if a.numel() == 1:
        return out.to(x.dtype)
    cur = xf  # h_1 = He_1 / c_1 = x in both normalizations
    out = out + a[1] * cur
    for k in range(1, a.numel() - 1):
        # He_{k+1} = x He_k - k He_{k-1}, divided by c_{k+1}
        if normalization == "factorial":  # h_k = He_k / k!
            nxt = (xf * cur - prev) / (k + 1)
        else:  # h_k = He_k / sqrt(k!)
            nxt = (xf * cur - math.sqrt(k) * prev) / math.sqrt(k + 1)
        prev, cur = cur, nxt
        out = out + a[k + 1] * cur
    return out.to(x.dtype)


def fourier_act(
    x: Tensor,
    fundamental: Tensor,
    coefficients: Tensor,
    frequencies: Tensor,
    phases: Tensor,
    normalization: str = "factorial",
) -> Tensor:
    r"""Learnable Fourier activation of degree :math:`n` = ``coefficients.numel()``:

    .. math::
        f(x) = a_0 + \sum_{k=1}^{n} \frac{a_k}{c_k} \cos(\omega_k x - \varphi_k), \qquad
        c_k = k! \ (\texttt{"factorial"}) \ \text{or}\ 1 \ (\texttt{"none"})

    with ``fundamental`` :math:`a_0` (shape ``(1,)`` or ``()``) and ``coefficients``, ``frequencies``,
    ``phases`` of shape ``(n,)``, all learnable."""
    check_tensor(x, "fourier_act")
    a0 = _bias(fundamental, "fourier_act")
    a = check_vector(coefficients, "fourier_act", "coefficients")
    n = a.numel()
    w = check_vector(frequencies, "fourier_act", "frequencies", n)
    phi = check_vector(phases, "fourier_act", "phases", n)
    if normalization not in FOURIER_NORMALIZATIONS:
        raise ValueError(f"fourier_act: normalization must be one of {FOURIER_NORMALIZATIONS}, got {normalization!r}")
    xf = upcast(x)
    a0, a, w, phi = (t.to(xf.dtype) for t in (a0, a, w, phi))
    if normalization == "factorial":
        a = a / torch.tensor([float(math.factorial(k)) for k in range(1, n + 1)], dtype=xf.dtype, device=xf.device)
    out = a0 + (a * torch.cos(xf.unsqueeze(-1) * w - phi)).sum(-1)
    return out.to(x.dtype)


def tropical_act(x: Tensor, coefficients: Tensor, gain: float = 1.0) -> Tensor:
    r"""Tropical (max-plus) polynomial activation of degree :math:`n` = ``coefficients.numel() - 1``:

    .. math::
        f(x) = g \max_{k=0,\dots,n} \left(k\,x + c_k\right)

    the tropicalization of :math:`\sum_k c_k x^k` (products become sums, sums become maxima), a convex
    piecewise-linear function with integer slopes :math:`0, \dots, n`; ``gain`` :math:`g` is a fixed factor.
    At a kink (lines tied for the maximum) the derivative is that of the lowest-degree tied line, as in the
    official code (``max(-1)`` returns the first maximum): 0 at :math:`x = 0` for equal coefficients."""
    check_tensor(x, "tropical_act")
    c = check_vector(coefficients, "tropical_act", "coefficients", minimum=2)
    gain = check_float("gain", gain)
    xf = upcast(x)
    c = c.to(xf.dtype)
    out = c[0].expand_as(xf)
    for k in range(1, c.numel()):
        # a strict comparison keeps the earlier (lower-degree) line at a tie, with its whole gradient
        # (torch.maximum splits it between the tied lines); a NaN propagates as through torch.maximum
        line = k * xf + c[k]
        out = torch.where((line > out) | line.isnan(), line, out)
    return (gain * out).to(x.dtype)


def _tanh_angle(x: Tensor) -> Tensor:
    r""":math:`\theta = \arccos(\tanh x) \in (0, \pi)`, computed as :math:`2\arctan(e^{-x})` (and
    :math:`\pi - 2\arctan(e^{x})` for :math:`x < 0`): the same value, with the finite derivative
    :math:`-\mathrm{sech}\,x` everywhere (``acos`` of a rounded :math:`\tanh x = \pm 1` has an infinite one)."""
    pos = x >= 0
    x_pos = torch.where(pos, x, torch.zeros_like(x))
    x_neg = torch.where(pos, torch.zeros_like(x), x)
    return torch.where(pos, 2 * torch.atan(torch.exp(-x_pos)), math.pi - 2 * torch.atan(torch.exp(x_neg)))


def sl2a_chebyshev(x: Tensor, coefficients: Tensor) -> Tensor:
    r"""The Chebyshev learnable-activation layer of SL²A-INR (a Chebyshev KAN layer):

    .. math::
        y_o = \sum_{i=1}^{d_\text{in}} \sum_{k=0}^{K} c_{i,o,k}\, T_k(\tanh x_i), \qquad
        T_k(\cos\theta) = \cos(k\theta)

    ``coefficients`` of shape ``(in_features, out_features, K + 1)``; input ``(*, in_features)``, output
    ``(*, out_features)``. :math:`T_k(\tanh x) = \cos(k\theta)` with :math:`\theta = \arccos(\tanh x)`
    computed as :math:`2\arctan(e^{-x})` (see :func:`_tanh_angle`)."""
    check_tensor(x, "sl2a_chebyshev")
    c = check_float_tensor(coefficients, "sl2a_chebyshev", "coefficients")
    if c.dim() != 3:
        raise ValueError(
            "sl2a_chebyshev: coefficients must have shape (in_features, out_features, degree + 1), "
            f"got shape {shape_str(c.shape)}"
        )
    in_features = c.shape[0]
    if x.dim() < 1 or x.shape[-1] != in_features:
        raise ValueError(
            f"sl2a_chebyshev expects input of shape (*, {in_features}) (in_features={in_features}), "
            f"got shape {shape_str(x.shape)}"
        )
    xf = upcast(x)
    c = c.to(xf.dtype)
    degrees = torch.arange(c.shape[-1], dtype=xf.dtype, device=xf.device)
    basis = torch.cos(_tanh_angle(xf).unsqueeze(-1) * degrees)  # (*, in, K + 1)
    out = torch.einsum("...ik,iok->...o", basis, c)
    return out.to(x.dtype)
