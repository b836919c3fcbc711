"""Stateless forms of the batch-dependent normalization variants: Batch Renormalization (Ioffe, 2017), IBN
(Pan et al., 2018) and Batch-Channel Normalization (Qiao et al., 2019).

Parameters and buffers are arguments; running statistics passed in are updated in place in training, as
``torch.nn.functional.batch_norm`` does. Batch moments go through :func:`normact.distributed.batch_moments`, so
``sync=True`` combines them over a process group. float16/bfloat16 inputs are normalized in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_eps, check_float, shape_str, upcast
from normact.functional import _batch
from normact.functional._state import read_state

__all__ = ["batch_channel_norm", "batch_renorm", "ibn"]


def batch_renorm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    r_max: float = 3.0,
    d_max: float = 5.0,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Batch Renormalization (Ioffe, 2017, arXiv:1702.03275) over dim 1 of an ``(N, C, *)`` input.

    Training: :math:`y = (\frac{x - \mu_B}{\sigma_B} r + d)\gamma + \beta` with
    :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}`, :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}`,
    :math:`r = \mathrm{clip}_{[1/r_{max}, r_{max}]}(\mathrm{sg}(\sigma_B / \sigma))` and
    :math:`d = \mathrm{clip}_{[-d_{max}, d_{max}]}(\mathrm{sg}((\mu_B - \text{running\_mean}) / \sigma))`; the
    running statistics are then lerped towards the batch mean and the unbiased batch variance with
    ``momentum`` (a float or a 0-d tensor). Evaluation: BatchNorm with the running statistics."""
    name = "batch_renorm"
    _batch.check_running_input(name, x, eps, running_mean, running_var, [("weight", weight), ("bias", bias)])
    _batch.check_factor(momentum)
    check_float("r_max", r_max, low=1.0)
    check_float("d_max", d_max, nonnegative=True)
    xf = upcast(x)
    view = _batch.channel_view(xf)
    # read_state: both buffers are updated below; under torch.compile the partitioner could otherwise
    # recompute r and d from the updated buffers in the backward pass (see normact.functional._state)
    rm = read_state(running_mean).to(xf.dtype)
    rv = read_state(running_var).to(xf.dtype)
    sigma = torch.sqrt(rv + eps)
    if training:
        mean, var, count = _batch.batch_stats(name, xf, sync, process_group)
        inv_std = torch.rsqrt(var + eps)
        with torch.no_grad():
            sigma_b = torch.sqrt(var.detach() + eps)
            r = (sigma_b / sigma).clamp(1.0 / r_max, r_max)
            d = ((mean.detach() - rm) / sigma).clamp(-d_max, d_max)
        y = (xf - mean.view(view)) * (inv_std * r).view(view) + d.view(view)
        _batch.update_running_stats(running_mean, running_var, mean, var, count, momentum, old=(rm, rv))
    else:
        y = (xf - rm.view(view)) / sigma.view(view)
    return _batch.cast_affine(y, weight, bias, view).to(x.dtype)


def ibn(
    x: Tensor,
    half: int,
    in_weight: Tensor | None,
    in_bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    bn_weight: Tensor | None = None,
    bn_bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""IBN (Pan, Luo, Shi & Tang, 2018, arXiv:1807.09441) of an ``(N, C, H, W)`` input: channels ``[0, half)``
    instance-normalized (per sample and channel over (H, W), biased variance, affine ``in_weight``/``in_bias``),
    channels ``[half, C)`` batch-normalized (batch statistics in training, or when ``running_mean`` is None,
    with the running statistics updated in place with ``momentum`` and the unbiased variance; the running
    statistics in evaluation; affine ``bn_weight``/``bn_bias``); the two halves concatenated."""
    name = "ibn"
    _batch.check_4d_input(name, x)
    check_eps(eps)
    _batch.check_factor(momentum)
    c = x.shape[1]
    if not 0 <= half <= c:
        raise ValueError(f"{name}: half must be in [0, C] = [0, {c}], got {half}")
    for arg, t, n in (
        ("in_weight", in_weight, half),
        ("in_bias", in_bias, half),
        ("running_mean", running_mean, c - half),
        ("running_var", running_var, c - half),
        ("bn_weight", bn_weight, c - half),
        ("bn_bias", bn_bias, c - half),
    ):
        if t is not None and t.numel() != n:
            raise ValueError(
                f"{name}: {arg} must have {n} elements for input shape {shape_str(x.shape)} and half={half}, "
                f"got shape {shape_str(t.shape)}"
            )
    xf = upcast(x)
    view = _batch.channel_view(xf)
    parts = []
    if half > 0:
        xi = xf[:, :half]
        mean = xi.mean((2, 3), keepdim=True)
        var = (xi - mean).square().mean((2, 3), keepdim=True)
        parts.append(_batch.cast_affine((xi - mean) * torch.rsqrt(var + eps), in_weight, in_bias, view))
    if half < c:
        xb = xf[:, half:]
        mean, var = _batch.batch_or_running_stats(
            name, xb, running_mean, running_var, training, momentum, sync, process_group
        )
        parts.append(_batch.cast_affine(_batch.standardize(xb, mean, var, eps), bn_weight, bn_bias, view))
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    return y.to(x.dtype)


def batch_channel_norm(
    x: Tensor,
    num_groups: int,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    group_weight: Tensor | None = None,
    group_bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Batch-Channel Normalization (Qiao, Wang, Liu, Shen & Yuille, 2019, arXiv:1903.10520) of an
    ``(N, C, *)`` input, the estimated-statistics form of the official ``BCNorm(estimate=True)``.

    Training first updates the estimates in place (no gradient):
    ``running_mean <- lerp(running_mean, E_B[x], momentum)`` and
    ``running_var <- lerp(running_var, E_B[(x - running_mean_old)^2], momentum)`` (batch moments over
    (N, *spatial), across the process group with ``sync``); then, in training and evaluation alike,
    :math:`\hat x = (x - \hat\mu)/\sqrt{\hat\sigma^2 + \epsilon}\,\gamma_b + \beta_b` with the (updated)
    estimates, followed by a normalization of each sample's ``num_groups`` groups of C/G channels and the
    spatial dims (biased variance, ``eps`` inside the root) and a per-group affine ``group_weight``,
    ``group_bias`` of shape (G,)."""
    name = "batch_channel_norm"
    channels = _batch.check_running_input(name, x, eps, running_mean, running_var, [("weight", weight), ("bias", bias)])
    _batch.check_factor(momentum)
    if not isinstance(num_groups, int) or num_groups < 1 or channels % num_groups:
        raise ValueError(f"{name}: num_groups must be a positive divisor of C = {channels}, got {num_groups!r}")
    for arg, t in (("group_weight", group_weight), ("group_bias", group_bias)):
        if t is not None and t.numel() != num_groups:
            raise ValueError(f"{name}: {arg} must have {num_groups} elements, got shape {shape_str(t.shape)}")
    xf = upcast(x)
    view = _batch.channel_view(xf)
    rm = running_mean.to(xf.dtype)
    rv = running_var.to(xf.dtype)
    if training:
        with torch.no_grad():
            mean, var, _ = _batch.channel_moments(xf.detach(), sync, process_group)
            est_var = var + (mean - rm).square()  # E_B[(x - running_mean_old)^2]
        rm, rv = _batch.lerp_running_stats(running_mean, running_var, mean, est_var, momentum, old=(rm, rv))
    y = _batch.cast_affine(_batch.standardize(xf, rm, rv, eps), weight, bias, view)
    n = y.shape[0]
    yg = y.reshape(n, num_groups, -1)
    gmean = yg.mean(-1, keepdim=True)
    gvar = (yg - gmean).square().mean(-1, keepdim=True)
    yg = (yg - gmean) * torch.rsqrt(gvar + eps)
    gview = (1, num_groups, 1)
    yg = _batch.cast_affine(yg, group_weight, group_bias, gview)
    return yg.reshape(x.shape).to(x.dtype)
