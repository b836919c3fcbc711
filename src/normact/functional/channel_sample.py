"""Stateless per-sample norms of channels-first maps: LayerNorm over the channels at each position
(``layer_norm2d``, timm's LayerNorm2d) and GroupNorm with one group (``group_norm1``, timm's GroupNorm1).

float16/bfloat16 inputs are normalized in float32 (torch's kernels with float32 parameters); the result has
the input's dtype.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_channels, check_eps, check_rank, check_tensor, shape_str
from normact.functional._norm_stats import float32_inputs

__all__ = ["group_norm1", "layer_norm2d"]


def _check_affine(x: Tensor, weight: Tensor | None, bias: Tensor | None, name: str, layout: str) -> None:
    for arg, t in (("weight", weight), ("bias", bias)):
        if t is None:
            continue
        if t.dim() != 1:
            raise ValueError(f"{name} expects {arg} of shape (C,), got shape {shape_str(t.shape)}")
        check_channels(x, 1, t.numel(), name, f"{layout} with C = {arg}.numel()")


def layer_norm2d(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-6,
) -> Tensor:
    r"""Layer normalization over the channels of an ``(N, C, H, W)`` input, at each (sample, position):
    :math:`y = (x - \mathrm{E}_c[x]) / \sqrt{\mathrm{Var}_c[x] + \epsilon}\,\gamma + \beta` (biased
    variance; ``weight``/``bias`` of shape ``(C,)``)."""
    check_tensor(x, "layer_norm2d")
    check_eps(eps)
    check_rank(x, (4,), "layer_norm2d", "(N, C, H, W)")
    _check_affine(x, weight, bias, "layer_norm2d", "(N, C, H, W)")
    shape = (x.shape[1],)
    xc, weight_c, bias_c = float32_inputs(x, weight, bias)
    y = F.layer_norm(xc.permute(0, 2, 3, 1), shape, weight_c, bias_c, eps)
    return y.permute(0, 3, 1, 2).to(x.dtype)


def group_norm1(
    x: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group normalization with one group of an ``(N, C, *)`` input: each sample normalized by its mean and
    biased variance over all of (C, \*), then a per-channel affine ``weight``/``bias`` of shape ``(C,)``."""
    check_tensor(x, "group_norm1")
    check_eps(eps)
    if x.dim() < 2:
        raise ValueError(f"group_norm1 expects an input of shape (N, C, *), got shape {shape_str(x.shape)}")
    _check_affine(x, weight, bias, "group_norm1", "(N, C, *)")
    if math.prod(x.shape[1:]) <= 1:
        raise ValueError(
            f"group_norm1 needs more than 1 value per sample (C x spatial), got input shape {shape_str(x.shape)}"
        )
    xc, weight_c, bias_c = float32_inputs(x, weight, bias)
    return F.group_norm(xc, 1, weight_c, bias_c, eps).to(x.dtype)
