r"""Stateless form of the separable layer normalization of EquiformerV2 (Liao, Wood, Das & Smidt, ICLR 2024,
arXiv:2306.12059) for SO(3)-equivariant features stored as real spherical-harmonic coefficients.

The input holds, for each of C channels, the coefficients of degrees L = 0..lmax along dim -2, degree L taking
the 2L + 1 rows ``L**2 .. (L+1)**2 - 1`` (the layout of the official ``nets/equiformer_v2``: ``(N, (lmax+1)**2, C)``,
channels last). Degree 0 is invariant and gets a LayerNorm over the channels; the degrees L >= 1 are scaled by
one shared inverse RMS, which commutes with any rotation of the (2L+1)-vectors. float16/bfloat16 inputs are
normalized in float32.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normact._checks import check_eps, check_int, check_tensor, shape_str, upcast

__all__ = ["separable_layer_norm"]

NORMALIZATIONS = ("component", "norm")


def _degree_weight(weight: Tensor, lmax: int) -> Tensor:
    """Rows 1..lmax of the (lmax+1, C) per-degree weight, row L repeated over degree L's 2L + 1 coefficients:
    ((lmax+1)**2 - 1, C)."""
    return torch.cat([weight[degree : degree + 1].expand(2 * degree + 1, -1) for degree in range(1, lmax + 1)], dim=0)


def separable_layer_norm(
    x: Tensor,
    lmax: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    normalization: str = "component",
    std_balance_degrees: bool = True,
) -> Tensor:
    r"""Separable layer normalization (EquiformerV2, arXiv:2306.12059) of an input of shape
    ``(*, (lmax+1)**2, C)``.

    Degree 0: :math:`y^{(0)} = (x^{(0)} - \mathrm{mean}_c)/\sqrt{\mathrm{var}_c + \epsilon}\,\gamma^{(0)} +
    \beta`. Degrees L >= 1: :math:`y^{(L)} = x^{(L)} / \sqrt{\sigma^2 + \epsilon}\,\gamma^{(L)}` with, for
    ``normalization="component"`` and ``std_balance_degrees=True`` (the official defaults),
    :math:`\sigma^2 = \frac{1}{L_{max}} \sum_{L=1}^{L_{max}} \frac{1}{C} \sum_c \frac{1}{2L+1} \sum_m
    (x^{(L)}_{m,c})^2`; with ``std_balance_degrees=False`` the plain mean of the squares over every L >= 1
    coefficient and channel; with ``normalization="norm"`` the sum over the coefficients and the mean over the
    channels (``std_balance_degrees`` is then ignored, as in the official code). ``weight`` has shape
    ``(lmax+1, C)`` (row L scales degree L), ``bias`` shape ``(C,)`` (degree 0 only); either may be None."""
    name = "separable_layer_norm"
    check_tensor(x, name)
    lmax = check_int("lmax", lmax, minimum=0)
    check_eps(eps)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    rows = (lmax + 1) ** 2
    if x.dim() < 2 or x.shape[-2] != rows:
        raise ValueError(
            f"{name} expects an input of shape (*, (lmax+1)**2, C) = (*, {rows}, C) for lmax={lmax}, "
            f"got shape {shape_str(x.shape)}"
        )
    channels = x.shape[-1]
    for arg, t, shape in (("weight", weight, (lmax + 1, channels)), ("bias", bias, (channels,))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(
                f"{name}: {arg} must have shape {shape_str(shape)} for input shape {shape_str(x.shape)}, "
                f"got shape {shape_str(t.shape)}"
            )
    xf = upcast(x)
    scalars = xf[..., :1, :]
    mean = scalars.mean(-1, keepdim=True)
    var = (scalars - mean).square().mean(-1, keepdim=True)
    y0 = (scalars - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y0 = y0 * weight[0].to(xf.dtype)
    if bias is not None:
        y0 = y0 + bias.to(xf.dtype)
    if lmax == 0:
        return y0.to(x.dtype)
    higher = xf[..., 1:, :]
    squares = higher.square()
    if normalization == "norm":
        per_channel = squares.sum(-2, keepdim=True)
    elif std_balance_degrees:
        per_degree = [
            squares[..., degree * degree - 1 : (degree + 1) ** 2 - 1, :].sum(-2, keepdim=True) / (2 * degree + 1)
            for degree in range(1, lmax + 1)
        ]
        per_channel = sum(per_degree) / lmax
    else:
        per_channel = squares.mean(-2, keepdim=True)
    scale = torch.rsqrt(per_channel.mean(-1, keepdim=True) + eps)
    y = higher * scale
    if weight is not None:
        y = y * _degree_weight(weight.to(xf.dtype), lmax)
    return torch.cat([y0, y], dim=-2).to(x.dtype)
