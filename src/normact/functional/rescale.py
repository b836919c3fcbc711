"""Stateless form of DehazeFormer's RescaleNorm (RLN, "Revised LayerNorm"; Song, He, Qian & Du, 2022)."""

from __future__ import annotations

import torch
from torch import Tensor

from normact._checks import check_eps, check_tensor, shape_str, upcast

__all__ = ["rescale_norm"]


def rescale_norm(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    rescale_weight: Tensor,
    rescale_bias: Tensor | None,
    rebias_weight: Tensor,
    rebias_bias: Tensor | None,
    eps: float = 1e-5,
    detach_grad: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""RescaleNorm / RLN (Song, He, Qian & Du, 2022, arXiv:2204.03883) of an ``(N, C, *)`` input.

    Per sample, :math:`\mu` and :math:`\sigma = \sqrt{\mathrm{mean}((x - \mu)^2) + \epsilon}` over all of
    (C, \*); returns ``(y, rescale, rebias)`` with :math:`y = (x - \mu)/\sigma \cdot w + b` (per-channel
    ``weight``, ``bias``, each optional), ``rescale = rescale_weight * sigma + rescale_bias`` and
    ``rebias = rebias_weight * mu + rebias_bias`` of shape (N, C, 1, ...) (the official 1x1 convolutions from
    one channel to C). With ``detach_grad`` no gradient flows from rescale/rebias into x through
    :math:`\sigma` and :math:`\mu`."""
    name = "rescale_norm"
    check_tensor(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} expects an input of shape (N, C, *), got shape {shape_str(x.shape)}")
    check_eps(eps)
    c = x.shape[1]
    for arg, t in (
        ("weight", weight),
        ("bias", bias),
        ("rescale_weight", rescale_weight),
        ("rescale_bias", rescale_bias),
        ("rebias_weight", rebias_weight),
        ("rebias_bias", rebias_bias),
    ):
        if t is not None and t.numel() != c:
            raise ValueError(
                f"{name}: {arg} must have {c} elements for input shape {shape_str(x.shape)}, got shape "
                f"{shape_str(t.shape)}"
            )
    xf = upcast(x)
    dims = tuple(range(1, x.dim()))
    view = (1, c) + (1,) * (x.dim() - 2)
    mean = xf.mean(dims, keepdim=True)
    centered = xf - mean
    std = torch.sqrt(centered.square().mean(dims, keepdim=True) + eps)
    y = centered / std
    if weight is not None:
        y = y * weight.to(xf.dtype).view(view)
    if bias is not None:
        y = y + bias.to(xf.dtype).view(view)
    s, mu = (std.detach(), mean.detach()) if detach_grad else (std, mean)
    rescale = s * rescale_weight.to(xf.dtype).view(view)
    rebias = mu * rebias_weight.to(xf.dtype).view(view)
    if rescale_bias is not None:
        rescale = rescale + rescale_bias.to(xf.dtype).view(view)
    if rebias_bias is not None:
        rebias = rebias + rebias_bias.to(xf.dtype).view(view)
    return y.to(x.dtype), rescale.to(x.dtype), rebias.to(x.dtype)
