"""Stateless L1 normalizations: the mean absolute deviation in place of the standard deviation, over the
last dims (layer form) or over the batch per channel (batch form, running statistics, data-parallel sync).

L1 batch normalization is Wu et al. (2018, arXiv:1802.09769) and Hoffer et al. (2018, arXiv:1803.01814);
Guo et al. (2024, arXiv:2411.10948) build fully quantized normalization layers on the same statistic.
float16/bfloat16 inputs are normalized in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normact._checks import (
    check_channels,
    check_float,
    shape_str,
    upcast,
)
from normact.distributed import sync_active
from normact.functional._affine import affine
from normact.functional._batch import channel_view, check_nc_input, reduce_dims
from normact.functional._last_dim import check_last_dim_input, last_dims

__all__ = ["L2_EQUIVALENT_SCALE", "l1_batch_norm", "l1_layer_norm"]

L2_EQUIVALENT_SCALE = math.sqrt(math.pi / 2)
"""For Gaussian data E|x - mu| = sigma sqrt(2/pi): sqrt(pi/2) times the mean absolute deviation estimates
the standard deviation, so the L1 layers approximate their L2 counterparts."""


def l1_layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    scale: float = L2_EQUIVALENT_SCALE,
) -> Tensor:
    r"""L1 layer normalization over the last ``len(normalized_shape)`` dims:
    :math:`y = (x - \mu) / (s \cdot \mathrm{mean}|x - \mu| + \epsilon)\,\gamma + \beta`, ``s = scale``."""
    shape = check_last_dim_input("l1_layer_norm", x, normalized_shape, eps)
    check_float("scale", scale, positive=True)
    xf = upcast(x)
    dims = last_dims(len(shape))
    centred = xf - xf.mean(dims, keepdim=True)
    deviation = centred.abs().mean(dims, keepdim=True)
    y = centred / (scale * deviation + eps)
    return affine(y, weight, bias).to(x.dtype)


def _l1_moments(x: Tensor, sync: bool, process_group: Any) -> tuple[Tensor, Tensor]:
    """Per-channel mean and mean absolute deviation of an (N, C, *) input over N and the spatial dims,
    across the process group when ``sync`` is on and a group is active (differentiable all-reduce)."""
    dims, view = reduce_dims(x), channel_view(x)
    if not (sync and sync_active(process_group)):
        mean = x.mean(dims)
        return mean, (x - mean.view(view)).abs().mean(dims)
    from torch.distributed.nn.functional import all_reduce

    count = torch.tensor([float(x.numel() // x.shape[1])], dtype=x.dtype, device=x.device)
    totals = all_reduce(torch.cat([x.sum(dims), count]), group=process_group)
    mean = totals[:-1] / totals[-1]
    deviation = all_reduce((x - mean.view(view)).abs().sum(dims), group=process_group) / totals[-1]
    return mean, deviation


def l1_batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_dev: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    scale: float = L2_EQUIVALENT_SCALE,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""L1 batch normalization over dim 1 of an ``(N, C, *)`` input.

    Training: :math:`y = (x - \mu_B) / (d_B + \epsilon)\,\gamma + \beta` with :math:`\mu_B` the batch mean and
    :math:`d_B = s\cdot\mathrm{mean}_B|x - \mu_B|` per channel over N and the spatial dims (the whole process
    group with ``sync``); ``running_mean`` and ``running_dev`` (when given) are lerped towards
    :math:`\mu_B, d_B` with ``momentum`` (a float or a 0-d tensor). Evaluation (``training=False``):
    :math:`y = (x - \text{running\_mean}) / (\text{running\_dev} + \epsilon)\,\gamma + \beta`."""
    name = "l1_batch_norm"
    check_nc_input(name, x, eps)
    check_float("scale", scale, positive=True)
    for label, t in (("running_mean", running_mean), ("running_dev", running_dev), ("weight", weight), ("bias", bias)):
        if t is not None:
            check_channels(x, 1, t.numel(), name, f"(N, C, *) with C = {label}.numel()")
    if (running_mean is None) != (running_dev is None):
        raise ValueError(f"{name} needs both running_mean and running_dev, or neither")
    xf = upcast(x)
    view = channel_view(x)
    if training or running_mean is None:
        if x.numel() // max(x.shape[1], 1) <= 1:
            raise ValueError(
                f"{name} in training needs more than 1 value per channel, got input shape {shape_str(x.shape)}"
            )
        mean, deviation = _l1_moments(xf, sync, process_group)
        deviation = scale * deviation
        if training and running_mean is not None and running_dev is not None:
            with torch.no_grad():
                factor = momentum.to(xf.dtype) if isinstance(momentum, Tensor) else momentum
                running_mean.copy_(torch.lerp(running_mean.to(xf.dtype), mean.detach(), factor))
                running_dev.copy_(torch.lerp(running_dev.to(xf.dtype), deviation.detach(), factor))
    else:
        mean, deviation = running_mean.to(xf.dtype), running_dev.to(xf.dtype)
    y = (xf - mean.view(view)) / (deviation.view(view) + eps)
    return affine(y, weight, bias, view).to(x.dtype)
