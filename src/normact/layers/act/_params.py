"""Parameter plumbing shared by the activation modules: the ``dim`` and axis arguments, a parameter that is one
scalar or one value per channel (learnable or a fixed buffer), and filling parameters with their initial
values."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normact._checks import check_int
from normact.layers.norm._channel import add_learnable

AXIS_MIN = -(2**31)


def check_dim(dim: object) -> int | None:
    """``dim``, the number of channels of a per-channel parameter (an int >= 1), or None for one scalar."""
    return None if dim is None else check_int("dim", dim)


def check_axis(name: str, axis: object) -> int:
    """An axis of the input: any int (the forward pass checks it against the input's rank)."""
    return check_int(name, axis, minimum=AXIS_MIN)


def add_scalar_or_channel(
    module: nn.Module,
    name: str,
    dim: int | None,
    learnable: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> None:
    """Register ``name``, uninitialized, of shape () for ``dim=None`` or (dim,): a parameter when ``learnable``,
    else a buffer."""
    shape = () if dim is None else (dim,)
    add_learnable(module, name, torch.empty(shape, device=device, dtype=dtype), learnable)


def fill_tensors(module: nn.Module, **values: float | Sequence[float] | Tensor) -> None:
    """Set the named parameters or buffers of ``module`` without autograd: a number fills one; a tensor, or a
    sequence of numbers (as float64), is copied into it, broadcast to its shape."""
    with torch.no_grad():
        for name, value in values.items():
            target = getattr(module, name)
            if isinstance(value, numbers.Real):
                target.fill_(value)
            else:
                target.copy_(value if isinstance(value, Tensor) else torch.tensor(value, dtype=torch.float64))
