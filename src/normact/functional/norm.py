"""Stateless normalization math: parameters and buffers are arguments, as in ``torch.nn.functional``.

Each function validates its input (floating dtype, shape against the parameters) and raises a
``ValueError``/``TypeError`` naming the expected shape. Reductions of float16/bfloat16 inputs run in
float32 so that squares of large inputs (|x| ~ 1e4) do not overflow; the result has the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import (
    check_channels,
    check_eps,
    check_int,
    check_tensor,
    check_trailing,
    upcast,
)
from normact.functional._affine import affine
from normact.functional._last_dim import check_last_dim_input, last_dims
from normact.functional._norm_stats import (
    check_per_channel,
    float32_inputs,
    rescale_to_length,
    with_running_stats_in_float32,
)

__all__ = [
    "batch_norm",
    "dyt",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "rms_norm_paper",
    "scale_norm",
]


def layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Layer normalization over the last ``len(normalized_shape)`` dims:
    :math:`y = (x - \mu)/\sqrt{\sigma^2 + \epsilon}\,\gamma + \beta` (biased variance)."""
    shape = check_last_dim_input("layer_norm", x, normalized_shape, eps)
    return F.layer_norm(x, shape, weight, bias, eps)


def rms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    r"""RMSNorm with torch's semantics: :math:`y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon}\,\gamma`.

    ``eps=None`` uses ``torch.finfo(x.dtype).eps`` of the computation type (float32 for float16/bfloat16 input).
    """
    shape = check_last_dim_input("rms_norm", x, normalized_shape, eps, allow_none_eps=True)
    # torch's kernel accumulates float16/bfloat16 in float32 (checked at |x| = 1e4 by the harness).
    return F.rms_norm(x, shape, weight, eps)


def rms_norm_paper(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    r"""RMSNorm as in Zhang & Sennrich's code: :math:`y = x / (\mathrm{RMS}(x) + \epsilon)\,g + b`,
    :math:`\mathrm{RMS}(x) = \lVert x\rVert_2/\sqrt{d}` (``eps`` outside the root)."""
    shape = check_last_dim_input("rms_norm_paper", x, normalized_shape, eps)
    xf = upcast(x)
    dims = last_dims(len(shape))
    d = math.prod(shape)
    rms = torch.linalg.vector_norm(xf, ord=2, dim=dims, keepdim=True) * (d**-0.5)
    return affine(xf / (rms + eps), weight, bias).to(x.dtype)


def scale_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    scale: Tensor | float,
    eps: float = 1e-5,
) -> Tensor:
    r"""ScaleNorm: :math:`y = g \cdot x / \max(\lVert x\rVert_2, \epsilon)` over the last dims, one scalar ``g``."""
    shape = check_last_dim_input("scale_norm", x, normalized_shape, eps)
    return rescale_to_length(upcast(x), last_dims(len(shape)), scale, eps).to(x.dtype)


def dyt(
    x: Tensor,
    alpha: Tensor | float,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    channels_last: bool = True,
) -> Tensor:
    r"""Dynamic Tanh: :math:`y = \gamma \odot \tanh(\alpha x) + \beta`, ``weight``/``bias`` on the last dim
    (``channels_last=True``) or on dim 1 (``channels_last=False``, NC... layouts)."""
    check_tensor(x, "dyt")
    y = torch.tanh(alpha * x)
    if weight is None and bias is None:
        return y
    ref = weight if weight is not None else bias
    assert ref is not None
    if channels_last:
        check_trailing(x, ref.shape, "dyt")
        return affine(y, weight, bias)
    check_channels(x, 1, ref.numel(), "dyt", "(N, C, *)")
    return affine(y, weight, bias, (-1,) + (1,) * (x.dim() - 2))


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Batch normalization over dim 1 of an ``(N, C, *)`` input:
    :math:`y = (x - \mathrm{E}[x])/\sqrt{\mathrm{Var}[x] + \epsilon}\,\gamma + \beta`, statistics over
    ``N`` and the spatial dims in training (running statistics updated in place with ``momentum``),
    the running statistics in evaluation."""
    check_tensor(x, "batch_norm")
    if x.dim() < 2:
        raise ValueError(f"batch_norm expects an input of shape (N, C, *), got shape {tuple(x.shape)}")
    check_eps(eps)
    channel_tensors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    check_per_channel(x, "batch_norm", "(N, C, *) with C = {arg}.numel()", channel_tensors)
    if training:
        per_channel = x.numel() // x.shape[1] if x.shape[1] else 0
        if per_channel <= 1:
            raise ValueError(
                f"batch_norm in training needs more than 1 value per channel, got input shape {tuple(x.shape)}"
            )
    return with_running_stats_in_float32(
        F.batch_norm, x, running_mean, running_var, weight, bias, training, momentum, eps
    )


def group_norm(
    x: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Group normalization of an ``(N, C, *)`` input: channels split into ``num_groups`` groups,
    each normalized by its own mean and biased variance over its channels and spatial dims."""
    check_tensor(x, "group_norm")
    num_groups = check_int("num_groups", num_groups)
    check_eps(eps)
    if x.dim() < 2:
        raise ValueError(f"group_norm expects an input of shape (N, C, *), got shape {tuple(x.shape)}")
    if x.shape[1] % num_groups:
        raise ValueError(f"group_norm expects C divisible by num_groups={num_groups}, got input shape {tuple(x.shape)}")
    check_per_channel(x, "group_norm", "(N, C, *)", {"weight": weight, "bias": bias})
    if x.shape[1] // num_groups * math.prod(x.shape[2:]) <= 1:
        raise ValueError(
            f"group_norm needs more than 1 value per group (C/G x spatial), got num_groups={num_groups} and "
            f"input shape {tuple(x.shape)}"
        )
    xc, weight_c, bias_c = float32_inputs(x, weight, bias)
    return F.group_norm(xc, num_groups, weight_c, bias_c, eps).to(x.dtype)


def instance_norm(
    x: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Instance normalization: each (sample, channel) of an ``(N, C, *)`` input normalized over its spatial dims."""
    check_tensor(x, "instance_norm")
    check_eps(eps)
    if x.dim() < 3:
        raise ValueError(f"instance_norm expects an input of shape (N, C, L, ...), got shape {tuple(x.shape)}")
    channel_tensors = {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias}
    check_per_channel(x, "instance_norm", "(N, C, *)", channel_tensors)
    if use_input_stats and math.prod(x.shape[2:]) <= 1:
        raise ValueError(f"instance_norm needs more than 1 spatial value per channel, got input shape {tuple(x.shape)}")
    return with_running_stats_in_float32(
        F.instance_norm, x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps
    )
