"""Pieces shared by the functional forms of the norms with batch statistics over an ``(N, C, *)`` input: the
per-channel view and reduced dims, the argument checks, the batch moments with their size check, the
running-statistics update and the casting affine."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from normact._checks import check_eps, check_float, check_tensor, shape_str
from normact.distributed import batch_moments, sync_active

__all__: list[str] = []  # private helpers: nothing for normact.functional to re-export

_NEED = "in training needs more than 1 value per channel (N * spatial > 1)"


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


def check_numel(name: str, tensors: Iterable[tuple[str, Tensor | None]], channels: int) -> None:
    """Each given tensor has ``channels`` elements."""
    for arg, t in tensors:
        if t is not None and t.numel() != channels:
            raise ValueError(f"{name}: {arg} must have {channels} elements, got shape {shape_str(t.shape)}")


def check_factor(factor: float | Tensor, name: str = "momentum") -> None:
    """A running-average factor: a number in [0, 1], or a tensor (not checked: no host read)."""
    if not isinstance(factor, Tensor):
        check_float(name, factor, low=0.0, high=1.0)


def batch_stats(
    name: str, xf: Tensor, sync: bool, process_group: Any, need: str = _NEED
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel batch mean, biased variance and count of an (N, C, *) input over (N, *spatial) (over the
    process group with ``sync``); a ``ValueError`` ``f"{name} {need}, got input shape ..."`` when a channel
    has at most one value and no group adds more."""
    synced = sync and sync_active(process_group)
    n = xf.numel() // xf.shape[1] if xf.shape[1] else 0
    if n <= 1 and not synced:
        raise ValueError(f"{name} {need}, got input shape {shape_str(xf.shape)}")
    return batch_moments(xf, reduce_dims(xf), sync=synced, process_group=process_group)


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
        factor = momentum.to(mean.dtype) if isinstance(momentum, Tensor) else momentum
        rm, rv = old if old is not None else (running_mean.to(mean.dtype), running_var.to(mean.dtype))
        running_mean.copy_(torch.lerp(rm, mean.detach(), factor))
        running_var.copy_(torch.lerp(rv, unbiased, factor))


def cast_affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, view: tuple[int, ...]) -> Tensor:
    """``y * weight + bias`` with the parameters reshaped to ``view`` and cast to ``y``'s dtype."""
    if weight is not None:
        y = y * weight.view(view).to(y.dtype)
    if bias is not None:
        y = y + bias.view(view).to(y.dtype)
    return y
