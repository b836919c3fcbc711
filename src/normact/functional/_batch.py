"""Pieces shared by the functional forms of the norms with batch statistics over an ``(N, C, *)`` input: the
per-channel view and reduced dims, the argument checks, the batch moments (over a process group with ``sync``)
with their size check, the choice between batch and running statistics, the running-statistics update and the
casting affine."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from normact._checks import check_channels, check_eps, check_float, check_rank, check_tensor, shape_str
from normact.distributed import batch_moments, sync_active

__all__: list[str] = []  # private helpers: nothing for normact.functional to re-export

_NEED = "in training needs more than 1 value per channel (N * spatial > 1)"
# the size check of the 4-D norms whose batch statistics serve evaluation too when there are no running statistics
NEED_NHW = "with batch statistics needs more than 1 value per channel (N * H * W > 1)"


def channel_view(x: Tensor) -> tuple[int, ...]:
    """``(1, -1, 1, ...)``: a per-channel vector shaped to broadcast against ``x`` of shape (N, C, *)."""
    return (1, -1) + (1,) * (x.dim() - 2)


def reduce_dims(x: Tensor) -> tuple[int, ...]:
    """The batch and spatial dims ``(0, 2, 3, ...)`` of an (N, C, *) input."""
    return (0, *range(2, x.dim()))


def check_nc_input(name: str, x: Tensor, eps: float) -> None:
    """A floating tensor of shape (N, C, *) and a valid ``eps``."""
    check_tensor(x, name)
    if x.dim() < 2:
        raise ValueError(f"{name} expects an input of shape (N, C, *), got shape {shape_str(x.shape)}")
    check_eps(eps)


def check_4d_input(name: str, x: Tensor) -> None:
    """A floating tensor of shape (N, C, H, W)."""
    check_tensor(x, name)
    check_rank(x, (4,), name, "(N, C, H, W)")


def check_numel(name: str, tensors: Iterable[tuple[str, Tensor | None]], channels: int) -> None:
    """Each given tensor has ``channels`` elements."""
    for arg, t in tensors:
        if t is not None and t.numel() != channels:
            raise ValueError(f"{name}: {arg} must have {channels} elements, got shape {shape_str(t.shape)}")


def check_running_input(
    name: str,
    x: Tensor,
    eps: float,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    tensors: Iterable[tuple[str, Tensor | None]] = (),
) -> int:
    """An (N, C, *) input and a valid ``eps`` for a norm that needs its running statistics: both given, C =
    ``running_mean.numel()`` channels, and C elements in ``running_var`` and each of ``tensors``; returns C."""
    check_nc_input(name, x, eps)
    if running_mean is None or running_var is None:
        raise ValueError(f"{name} needs running_mean and running_var")
    channels = running_mean.numel()
    check_channels(x, 1, channels, name, f"(N, {channels}, *)")
    check_numel(name, [("running_var", running_var), *tensors], channels)
    return channels


def check_factor(factor: float | Tensor, name: str = "momentum") -> None:
    """A running-average factor: a number in [0, 1], or a tensor (not checked: no host read)."""
    if not isinstance(factor, Tensor):
        check_float(name, factor, low=0.0, high=1.0)


def channel_moments(xf: Tensor, sync: bool, process_group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel batch mean, biased variance and count of an (N, C, *) input over (N, *spatial), over the
    process group with ``sync`` (see :func:`normact.distributed.batch_moments`)."""
    return batch_moments(xf, reduce_dims(xf), sync=sync, process_group=process_group)


def batch_stats(
    name: str,
    xf: Tensor,
    sync: bool,
    process_group: Any,
    need: str = _NEED,
    dims: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel batch mean, biased variance and count of ``xf`` over ``dims`` (default: (N, *spatial) of
    an (N, C, *) input; over the process group with ``sync``); a ``ValueError``
    ``f"{name} {need}, got input shape ..."`` when a channel has at most one value and no group adds more."""
    dims = reduce_dims(xf) if dims is None else dims
    synced = sync and sync_active(process_group)
    n = math.prod([xf.shape[d] for d in dims]) if xf.numel() else 0  # values per channel
    if n <= 1 and not synced:
        raise ValueError(f"{name} {need}, got input shape {shape_str(xf.shape)}")
    return batch_moments(xf, dims, sync=synced, process_group=process_group)


def batch_or_running_stats(
    name: str,
    xf: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float | Tensor,
    sync: bool,
    process_group: Any,
    need: str = _NEED,
    dims: tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor]:
    """The mean and variance a BatchNorm normalizes ``xf`` with: in training, or without running statistics,
    the batch statistics of :func:`batch_stats` (the running statistics, when given, then updated in place by
    :func:`update_running_stats`); otherwise the running statistics in ``xf``'s dtype."""
    if training or running_mean is None or running_var is None:
        mean, var, count = batch_stats(name, xf, sync, process_group, need, dims)
        if training and running_mean is not None and running_var is not None:
            update_running_stats(running_mean, running_var, mean, var, count, momentum)
        return mean, var
    return running_mean.to(xf.dtype), running_var.to(xf.dtype)


def standardize(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the per-channel ``mean`` and ``var`` of an (N, C, *) input."""
    view = channel_view(x)
    return (x - mean.view(view)) * torch.rsqrt(var.view(view) + eps)


def lerp_factor(factor: float | Tensor, dtype: torch.dtype) -> float | Tensor:
    """A running-average factor ready for ``torch.lerp`` in ``dtype``: a float as is, a tensor cast."""
    return factor.to(dtype) if isinstance(factor, Tensor) else factor


def lerp_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    factor: float | Tensor,
    old: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """In place and without gradient, lerp the running statistics towards ``mean`` and ``var`` with ``factor``
    (a float or a tensor that broadcasts), computed in ``mean``'s dtype from ``old`` (default: the buffers);
    returns the new values in that dtype."""
    with torch.no_grad():
        factor = lerp_factor(factor, mean.dtype)
        rm, rv = old if old is not None else (running_mean.to(mean.dtype), running_var.to(mean.dtype))
        new_mean = torch.lerp(rm, mean.detach(), factor)
        new_var = torch.lerp(rv, var.detach(), factor)
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)
    return new_mean, new_var


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: Tensor,
    momentum: float | Tensor,
    old: tuple[Tensor, Tensor] | None = None,
) -> None:
    """In place and without gradient, lerp the running statistics towards the batch ``mean`` and the unbiased
    batch variance ``var * count / (count - 1)`` with ``momentum`` (a float or a 0-d tensor), computed in
    ``mean``'s dtype; ``old`` gives the values to lerp from (a snapshot of the buffers) instead of the buffers."""
    with torch.no_grad():
        unbiased = var.detach() * (count / (count - 1).clamp_min(1))
    lerp_running_stats(running_mean, running_var, mean, unbiased, momentum, old)


def group_sum(t: Tensor, process_group: Any) -> Tensor:
    """Differentiable sum of ``t`` over the process group (as in :func:`normact.distributed.batch_moments`)."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, group=process_group)


def cast_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, view: tuple[int, ...] | None = None) -> Tensor:
    """``y * weight + bias`` with the parameters cast to ``y``'s dtype and reshaped to ``view`` (without a
    view they broadcast against the trailing dims)."""
    if weight is not None:
        y = y * (weight if view is None else weight.view(view)).to(y.dtype)
    if bias is not None:
        y = y + (bias if view is None else bias.view(view)).to(y.dtype)
    return y
