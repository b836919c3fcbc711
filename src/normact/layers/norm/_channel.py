"""Per-channel parameters and running statistics shared by the channel norms (BatchNorm, GroupNorm,
InstanceNorm, and the catalog's later channel norms): torch's names, shapes and initial values."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def add_channel_affine(module: nn.Module, num_features: int, affine: bool, factory_kwargs: dict[str, Any]) -> None:
    """Register ``weight`` and ``bias`` of shape (C,) (or ``None`` without ``affine``); filled by
    :func:`reset_channel_affine`."""
    for name in ("weight", "bias"):
        value = nn.Parameter(torch.empty(num_features, **factory_kwargs)) if affine else None
        module.register_parameter(name, value)


def reset_channel_affine(module: nn.Module) -> None:
    """weight = 1, bias = 0 (when present)."""
    if module.weight is not None:
        nn.init.ones_(module.weight)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


def add_running_stats(
    module: nn.Module, num_features: int, track: bool, factory_kwargs: dict[str, Any], *, count: bool
) -> None:
    """Register ``running_mean`` (0), ``running_var`` (1) and, with ``count``, ``num_batches_tracked`` (0,
    int64), or ``None`` buffers when not tracking."""
    module.register_buffer("running_mean", torch.zeros(num_features, **factory_kwargs) if track else None)
    module.register_buffer("running_var", torch.ones(num_features, **factory_kwargs) if track else None)
    if count:
        tracked = torch.tensor(0, dtype=torch.long, device=factory_kwargs.get("device")) if track else None
        module.register_buffer("num_batches_tracked", tracked)


def reset_running_stats(module: nn.Module) -> None:
    """running_mean = 0, running_var = 1, num_batches_tracked = 0 (when tracked)."""
    if module.running_mean is not None:
        module.running_mean.zero_()
        module.running_var.fill_(1)
    if getattr(module, "num_batches_tracked", None) is not None:
        module.num_batches_tracked.zero_()
