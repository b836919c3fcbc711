"""Stateless Generalized Divisive Normalization (Ballé, Laparra & Simoncelli, 2015) and its inverse.

The parameters are passed as they are stored: by default reparametrized as in CompressAI (``beta`` and
``gamma`` hold ``sqrt(max(v + offset^2, offset^2))`` of the effective values ``v``), and mapped back with
a lower bound whose gradient lets a parameter stuck at the bound move up again; ``reparam_offset=None``
takes ``beta`` and ``gamma`` as the effective (non-negative) values. float16/bfloat16 inputs are computed
in float32 (``x^2`` of |x| = 1e4 overflows float16); the result has the input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from normact._checks import check_float, check_tensor, shape_str, upcast

__all__ = ["gdn_lower_bound", "gdn_reparam", "generalized_divisive_norm"]


class _LowerBound(torch.autograd.Function):
    """``max(x, bound)``; the gradient passes where ``x >= bound`` or where it would move ``x`` up
    (``grad < 0`` under gradient descent), so a parameter sitting at the bound is not stuck there."""

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.bound = bound
        return torch.clamp(x, min=bound)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        passes = (x >= ctx.bound) | (grad < 0)
        return grad * passes.to(grad.dtype), None


def gdn_lower_bound(x: Tensor, bound: float) -> Tensor:
    """``max(x, bound)`` with the pass-through gradient of CompressAI's ``LowerBound`` (Ballé et al.): the
    gradient is kept where ``x >= bound`` or where it is negative (descent would increase ``x``)."""
    return _LowerBound.apply(x, float(bound))


def gdn_reparam(stored: Tensor, minimum: float = 0.0, reparam_offset: float = 2.0**-18) -> Tensor:
    """Effective non-negative value of a reparametrized GDN parameter:
    ``max(stored, sqrt(minimum + offset^2))^2 - offset^2`` (so ``>= minimum``)."""
    pedestal = reparam_offset * reparam_offset
    bound = math.sqrt(minimum + pedestal)
    return gdn_lower_bound(stored, bound) ** 2 - pedestal


def generalized_divisive_norm(
    x: Tensor,
    beta: Tensor,
    gamma: Tensor,
    inverse: bool = False,
    simplified: bool = False,
    beta_min: float = 1e-6,
    reparam_offset: float | None = 2.0**-18,
) -> Tensor:
    r"""GDN (or its inverse) across the channels of an ``(N, C, *)`` input, at each position:

    .. math::
        y_i = \frac{x_i}{\sqrt{\beta_i + \sum_j \gamma_{ij} x_j^2}}, \qquad
        \text{inverse: } y_i = x_i \sqrt{\beta_i + \sum_j \gamma_{ij} x_j^2}

    ``simplified`` (Johnston et al., 2019) uses :math:`\beta_i + \sum_j \gamma_{ij} |x_j|` without the root.
    ``beta`` (C,) and ``gamma`` (C, C) are the stored parameters: reparametrized (``beta`` bounded below by
    ``beta_min``, ``gamma`` by 0, see :func:`gdn_reparam`) unless ``reparam_offset`` is None, in which case
    they are used as given (they must then be non-negative, ``beta`` positive)."""
    check_tensor(x, "generalized_divisive_norm")
    check_float("beta_min", beta_min, positive=True)
    if reparam_offset is not None:
        check_float("reparam_offset", reparam_offset, positive=True)
    layout = "(N, C, *)"
    if x.dim() < 2:
        raise ValueError(
            f"generalized_divisive_norm expects an input of shape {layout}, got shape {shape_str(x.shape)}"
        )
    c = x.shape[1]
    if beta.dim() != 1 or beta.shape[0] != c:
        raise ValueError(
            f"generalized_divisive_norm expects beta of shape ({c},) for an input of shape "
            f"{shape_str(x.shape)} (channels at dim 1), got beta of shape {shape_str(beta.shape)}"
        )
    if gamma.shape != (c, c):
        raise ValueError(
            f"generalized_divisive_norm expects gamma of shape ({c}, {c}) for an input of shape "
            f"{shape_str(x.shape)} (channels at dim 1), got gamma of shape {shape_str(gamma.shape)}"
        )
    xf = upcast(x)
    b, g = upcast(beta), upcast(gamma)
    if reparam_offset is not None:
        b = gdn_reparam(b, beta_min, reparam_offset)
        g = gdn_reparam(g, 0.0, reparam_offset)
    pooled = xf.abs() if simplified else xf * xf
    n = x.shape[0]
    norm = torch.matmul(g.to(pooled.dtype), pooled.reshape(n, c, -1)) + b.to(pooled.dtype).view(1, c, 1)
    norm = norm.reshape(x.shape)
    if simplified:
        y = xf * norm if inverse else xf / norm
    else:
        y = xf * torch.sqrt(norm) if inverse else xf * torch.rsqrt(norm)
    return y.to(x.dtype)
