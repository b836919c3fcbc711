"""Smoothed and corrected ReLUs: SmeLU, CRReLU and VeLU (see :mod:`normact.layers.act.smooth_relu`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import check_eps, check_float, check_tensor, upcast
from normact.functional._act_common import scalar_or_per_channel

__all__ = ["crrelu", "smelu", "velu", "velu_w2_penalty"]


def smelu(x: Tensor, beta: float = 1.0) -> Tensor:
    r"""Smooth ReLU: :math:`0` for :math:`x \le -\beta`, :math:`(x + \beta)^2 / (4\beta)` for
    :math:`|x| \le \beta`, :math:`x` for :math:`x \ge \beta` (``beta > 0``). The pieces meet with equal
    slopes: the derivative is 0 at :math:`-\beta` and 1 at :math:`\beta` whichever piece counts. Computed in
    float32 for half inputs."""
    check_tensor(x, "smelu")
    beta = check_float("beta", beta, positive=True)
    xf = upcast(x)
    quad = (xf + beta) * (xf + beta) / (4.0 * beta)
    y = torch.where(xf >= beta, xf, torch.where(xf <= -beta, torch.zeros_like(xf), quad))
    return y.to(x.dtype)


def crrelu(x: Tensor, epsilon: Tensor | float = 0.01, channel_axis: int = -1) -> Tensor:
    r"""Correction Regularized ReLU: :math:`\max(0, x) + \varepsilon\, x\, e^{-x^2/2}`. A tensor ``epsilon`` of
    shape ``(C,)`` applies per channel along ``channel_axis``; a 0-d tensor or a float applies to all elements.
    At :math:`x = 0` the derivative is :math:`\varepsilon` (ReLU's derivative there is torch.relu's, 0).
    Computed in float32 for half inputs."""
    check_tensor(x, "crrelu")
    epsilon = scalar_or_per_channel(epsilon, x, channel_axis, "crrelu", "epsilon")
    xf = upcast(x)
    y = torch.relu(xf) + epsilon * xf * torch.exp(-0.5 * xf * xf)
    return y.to(x.dtype)


def velu(
    x: Tensor,
    lambd: Tensor | float = 1.0,
    alpha: float = 0.1,
    beta1: float = 0.1,
    beta2: float = 0.1,
    gamma: float = 0.1,
    momentum: float = 0.9,
    eps: float = 1e-6,
) -> Tensor:
    r"""VeLU, the official code's forward (AshkanShakarami/VeLU, ``VeLU.ipynb``, class ``Velu``):

    .. math::
        s = \Big(\tfrac1D \sum_{d} x_d^2 + \epsilon\Big)^{-1/2}, \qquad
        y = \lambda\, x\, \sigma\big(\alpha\,[\arctan(\beta_1 x) + \arcsin(\mathrm{clip}(\beta_2 x, -1, 1))]\big)
        \,\big(1 + \gamma \tanh(m\, s)\big)

    with the mean over the last dimension (``D`` features). Not elementwise: each element's scale depends on its
    row's root mean square. Computed in float32 for half inputs. Where :math:`|\beta_2 x| \ge 1` the arcsine is
    the constant :math:`\pm\pi/2` with zero derivative (the clip), also at :math:`|\beta_2 x| = 1` exactly, where
    the one-sided derivative of the arcsine is infinite."""
    check_tensor(x, "velu")
    if x.dim() == 0:
        raise ValueError(f"velu expects an input of shape (*, D) (it averages x^2 over the last dim), got shape {()}")
    eps = check_eps(eps)
    xf = upcast(x)
    s = torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)
    adapt = 1.0 + gamma * torch.tanh(momentum * s)
    u = beta2 * xf
    inside = u.abs() < 1.0
    arcsin = torch.where(inside, torch.asin(torch.where(inside, u, torch.zeros_like(u))), math.pi / 2 * torch.sign(u))
    mix = torch.atan(beta1 * xf) + arcsin
    y = xf * torch.sigmoid(alpha * mix) * adapt
    scale = lambd.to(y.dtype) if isinstance(lambd, Tensor) else check_float("lambd", lambd)
    y = scale * y
    return y.to(x.dtype)


def velu_w2_penalty(activation: Tensor) -> Tensor:
    r"""The Wasserstein-2 penalty of VeLU's official code, :math:`(\mu - 0)^2 + (\sigma - 1)^2` with :math:`\mu`,
    :math:`\sigma` the mean and the (population) standard deviation of all elements: the squared W2 distance
    between :math:`N(\mu, \sigma^2)` and :math:`N(0, 1)`. A 0-d float32 (float64 for float64 input) tensor."""
    check_tensor(activation, "velu_w2_penalty")
    a = upcast(activation)
    mean = a.mean()
    # clamped at the smallest normal number so that a constant activation has a finite gradient (sqrt(0))
    std = torch.sqrt(((a - mean) ** 2).mean().clamp_min(torch.finfo(a.dtype).tiny))
    return mean * mean + (std - 1.0) ** 2
