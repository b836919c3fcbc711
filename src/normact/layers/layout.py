"""Registry norms in any tensor layout: :func:`norm_layer` builds a drop-in normalization of the registry for
inputs laid out as ``nchw`` (feature maps), ``nc`` (features) or ``nlc`` (token sequences), adapting it by its
registry ``input_layout``: last-dimension norms (LayerNorm, RMSNorm, DyT...) to channels-first feature maps,
channel norms (BatchNorm, GroupNorm...) to token sequences (statistics over the batch and the positions, as
BatchNorm in a graph transformer), features-last token norms (PowerNorm...) to both; group norms get
``gcd(C, 32)`` groups. Norms with conditioning inputs or structured layouts (SPADE, TD-LayerNorm, MPBN...) are
refused with a clear error. Used by the transformer blocks and normact bench's models."""

from __future__ import annotations

import inspect
import math

from torch import Tensor, nn

from normact.layers.norm.batch import BatchNorm1d
from normact.registry import get_info

__all__ = ["check_drop_in", "is_none", "norm_layer", "wrapped_norm"]

NONE = ("none", "identity", "")


def is_none(name: str | None) -> bool:
    return name is None or name.lower() in NONE


class _ChannelsLast(nn.Module):
    """Apply a last-dimension norm to (N, C, *) input by moving C last and back."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class _ChannelsFirst(nn.Module):
    """Apply a channel norm to (N, C) or (N, L, C) input as (N, C, L[, 1])."""

    def __init__(self, norm: nn.Module, rank: int) -> None:
        super().__init__()
        self.norm, self.rank = norm, rank

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = x.reshape(shape[0], -1, shape[-1]).transpose(1, 2)  # (N, C, L)
        if self.rank == 4:
            y = y.unsqueeze(-1)
        y = self.norm(y)
        return y.reshape(shape[0], shape[-1], -1).transpose(1, 2).reshape(shape)


def norm_layer(name: str | None, channels: int, layout: str, **kwargs) -> nn.Module:
    """A normalization over ``channels`` for inputs laid out as ``nchw``, ``nc`` or ``nlc``."""
    if is_none(name):
        return nn.Identity()
    info = get_info(name)
    if info.kind != "norm":
        raise ValueError(f"{name!r} is a {info.kind}, not a normalization layer")
    if layout not in ("nchw", "nc", "nlc"):
        raise ValueError(f"layout must be nchw, nc or nlc, got {layout!r}")
    check_drop_in(name)
    if "num_groups" in inspect.signature(info.factory).parameters and "num_groups" not in kwargs:
        kwargs["num_groups"] = math.gcd(channels, 32)  # 32 groups where C allows, else the largest divisor
    module = info.factory(channels, **kwargs)
    if info.input_layout == "tokens":
        return module if layout == "nlc" else _Tokens(module, layout)
    channel_first = info.input_layout == "channels_first"
    if channel_first and layout == "nchw":
        return module if info.cls is not BatchNorm1d else _ChannelsFirst3d(module)
    if channel_first:
        return _ChannelsFirst(module, rank=3 if info.cls is BatchNorm1d else 4)
    return _ChannelsLast(module) if layout == "nchw" else module


def check_drop_in(name: str) -> None:
    """``ValueError`` unless ``name`` is a normalization the benchmark models can plug in (``drop_in``)."""
    info = get_info(name)
    if info.kind == "norm" and not info.properties.drop_in:
        raise ValueError(
            f"{info.name!r} is not a drop-in normalization (it takes a conditioning input or a structured layout, "
            f"see `normact info {info.name}`); the benchmark models take drop-in norms only"
        )


class _Tokens(nn.Module):
    """Apply a features-last token norm (input (N, L, C)) to (N, C), (N, C, H, W) or (N, L, C) input."""

    def __init__(self, norm: nn.Module, layout: str) -> None:
        super().__init__()
        self.norm, self.layout = norm, layout

    def forward(self, x: Tensor) -> Tensor:
        if self.layout == "nc":
            return self.norm(x.unsqueeze(1)).squeeze(1)
        if self.layout == "nchw":
            tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
            return self.norm(tokens).transpose(1, 2).reshape(x.shape)
        return self.norm(x)


class _ChannelsFirst3d(nn.Module):
    """BatchNorm1d on (N, C, H, W): as (N, C, H*W)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2)).view_as(x)


def wrapped_norm(module: nn.Module) -> nn.Module:
    """The registry norm inside a layout adapter of :func:`norm_layer` (the module itself when not adapted)."""
    return module.norm if isinstance(module, (_ChannelsLast, _ChannelsFirst, _ChannelsFirst3d, _Tokens)) else module
