"""Stateless forms of the adaptive activations: APA and AGLU (Alexandridis et al., 2024), the trainable
diagonal matrix activation (Liu, Cao, Li & Zikatanov, 2021) and Dice (Zhou et al., 2018).

Learnable parameters and running statistics are arguments; ``dice`` updates the running statistics passed in
place in training, as ``torch.nn.functional.batch_norm`` does, and computes its batch moments through
:func:`normact.distributed.batch_moments` (``sync=True`` combines them over a process group). float16/bfloat16
inputs are computed in float32 and returned in their dtype.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normact._checks import check_channels, check_float, check_tensor, shape_str, upcast
from normact.functional import _batch
from normact.functional._act_common import scalar_or_per_channel

__all__ = ["aglu", "apa", "dice", "matrix_activation"]

APA_LAMBDA_MIN = 1e-4
"""The official code's lower clamp of lambda (kostas1515/AGLU README and Ultralytics' AGLU)."""
_DICE_NEED = "in training needs more than 1 value per channel (N * trailing dims > 1)"


def _parameter(p: Tensor | float, x: Tensor, channel_axis: int, name: str, arg: str) -> Tensor | float:
    if isinstance(p, Tensor) and p.dim() > 1:
        raise ValueError(f"{name}: {arg} must have shape () or (C,), got shape {shape_str(p.shape)}")
    p = scalar_or_per_channel(p, x, channel_axis, name, arg)
    return p.to(x.dtype) if isinstance(p, Tensor) else p


def _softplus(t: Tensor) -> Tensor:
    """ln(1 + e^t) = logaddexp(t, 0): accurate in both tails (no threshold approximation), and its derivative
    exp(t - out) = sigmoid(t) is right everywhere, also at t = 0, where the form max(t, 0) + log1p(e^-|t|)
    would get 0 from autograd (clamp and abs are differentiated as 0 at their switch) instead of 1/2."""
    return torch.logaddexp(t, torch.zeros_like(t))


def _apa(x: Tensor, kappa: Tensor | float, lambda_: Tensor | float, channel_axis: int, name: str) -> Tensor:
    xf = upcast(x)
    k = _parameter(kappa, xf, channel_axis, name, "kappa")
    lam = _parameter(lambda_, xf, channel_axis, name, "lambda_")
    lam = lam.clamp_min(APA_LAMBDA_MIN) if isinstance(lam, Tensor) else max(lam, APA_LAMBDA_MIN)
    log_lam = torch.log(lam) if isinstance(lam, Tensor) else math.log(lam)
    # (lambda e^{-kappa x} + 1)^{-1/lambda} = exp(-softplus(ln lambda - kappa x) / lambda)
    return torch.exp(-_softplus(log_lam - k * xf) / lam)


def apa(x: Tensor, kappa: Tensor | float = 1.0, lambda_: Tensor | float = 1.0, channel_axis: int = -1) -> Tensor:
    r"""Adaptive Parametric Activation :math:`\mathrm{APA}(x) = (\lambda e^{-\kappa x} + 1)^{-1/\lambda}`,
    computed as :math:`\exp(-\mathrm{softplus}(\ln\lambda - \kappa x)/\lambda)` with :math:`\lambda` clamped to
    at least 1e-4 (the official code's clamp). Tensors ``kappa``/``lambda_`` of shape ``(C,)`` apply per
    channel along ``channel_axis``; 0-d tensors or floats to all elements."""
    check_tensor(x, "apa")
    return _apa(x, kappa, lambda_, channel_axis, "apa").to(x.dtype)


def aglu(x: Tensor, kappa: Tensor | float = 1.0, lambda_: Tensor | float = 1.0, channel_axis: int = -1) -> Tensor:
    r"""Adaptive Generalised Linear Unit :math:`\mathrm{AGLU}(x) = x\,\mathrm{APA}(x; \kappa, \lambda)`
    (see :func:`apa`); :math:`\kappa = \lambda = 1` gives SiLU."""
    check_tensor(x, "aglu")
    return (upcast(x) * _apa(x, kappa, lambda_, channel_axis, "aglu")).to(x.dtype)


def check_breakpoints(breakpoints: object) -> tuple[float, ...]:
    """A non-empty, strictly increasing sequence of finite numbers, as a tuple of floats."""
    if isinstance(breakpoints, (str, bytes)) or not isinstance(breakpoints, Sequence):
        raise TypeError(f"breakpoints must be a sequence of numbers, got {type(breakpoints).__name__}")
    values = tuple(check_float(f"breakpoints[{i}]", b) for i, b in enumerate(breakpoints))
    if not values:
        raise ValueError("breakpoints must hold at least one value")
    if any(b >= c for b, c in itertools.pairwise(values)):
        raise ValueError(f"breakpoints must be strictly increasing, got {values}")
    return values


def matrix_activation(
    x: Tensor, levels: Tensor, breakpoints: Sequence[float] = (0.0,), channel_axis: int = -1
) -> Tensor:
    r"""Trainable diagonal matrix activation :math:`\sigma(x) = D(x)\,x`, :math:`D(x) = \mathrm{diag}(t(x_i))`:
    with breakpoints :math:`s_1 < \dots < s_K` (:math:`s_0 = -\infty`, :math:`s_{K+1} = +\infty`) the entry
    is the level of the interval holding :math:`x_i`, :math:`t(x_i) = t_k` for
    :math:`s_k \le x_i < s_{k+1}`. ``levels`` has shape ``(K+1,)`` (shared) or ``(C, K+1)`` (one row per
    channel along ``channel_axis``). At a breakpoint :math:`s_k` the derivative is the level above it,
    :math:`t_k` (the interval the case :math:`s_k \le x_i` assigns it to)."""
    check_tensor(x, "matrix_activation")
    points = check_breakpoints(breakpoints)
    if not isinstance(levels, Tensor) or levels.dim() not in (1, 2) or levels.shape[-1] != len(points) + 1:
        got = shape_str(levels.shape) if isinstance(levels, Tensor) else type(levels).__name__
        raise ValueError(
            f"matrix_activation: levels must have shape ({len(points) + 1},) or (C, {len(points) + 1}) for "
            f"{len(points)} breakpoints, got {got}"
        )
    t = levels.to(x.dtype)
    if t.dim() == 2:
        check_channels(x, channel_axis, t.shape[0], "matrix_activation", f"(..., C, ...) with C at dim {channel_axis}")
        axis = channel_axis % x.dim()
        t = t.reshape((t.shape[0],) + (1,) * (x.dim() - axis - 1) + (t.shape[1],))
    # t_0 + sum_k (t_k - t_{k-1}) [x >= s_k]: the level of x's interval, by comparisons only
    d = t[..., 0]
    for k, s in enumerate(points, start=1):
        d = d + (t[..., k] - t[..., k - 1]) * (x >= s).to(x.dtype)
    return d * x


def dice(
    x: Tensor,
    alpha: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-8,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Dice over dim 1 of an ``(N, C, *)`` input:
    :math:`f(s) = p(s)\,s + (1 - p(s))\,\alpha\,s`,
    :math:`p(s) = \sigma\big((s - \mathrm{E}[s]) / \sqrt{\mathrm{Var}[s] + \epsilon}\big)`.

    Training: per-channel batch mean and biased variance over N and the trailing dims (over the process group
    with ``sync``); the running statistics passed in (if any) are lerped towards the batch mean and the
    unbiased batch variance with ``momentum`` (a float or a 0-d tensor), BatchNorm's convention. Evaluation:
    the running statistics."""
    _batch.check_nc_input("dice", x, eps)
    channels = alpha.numel()
    check_channels(x, 1, channels, "dice", f"(N, {channels}, *)")
    _batch.check_numel("dice", (("running_mean", running_mean), ("running_var", running_var)), channels)
    _batch.check_factor(momentum)
    xf = upcast(x)
    view = _batch.channel_view(x)
    if training:
        mean, var, count = _batch.batch_stats("dice", xf, sync, process_group, need=_DICE_NEED)
        if running_mean is not None and running_var is not None:
            _batch.update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("dice in evaluation needs running_mean and running_var")
        mean, var = running_mean.to(xf.dtype), running_var.to(xf.dtype)
    p = torch.sigmoid((xf - mean.view(view)) * torch.rsqrt(var.view(view) + eps))
    a = alpha.to(xf.dtype).view(view)
    return (xf * (p + (1 - p) * a)).to(x.dtype)
