"""Argument and input validation shared by the functional forms and the modules.

Every user mistake becomes a ``ValueError`` or ``TypeError`` whose message names what was expected
(the shape, the range) and what was received, before torch is asked to do anything with it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

ShapeLike = int | Sequence[int] | torch.Size

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def shape_str(shape: Sequence[int]) -> str:
    """``(2, 3, 4)`` for any sequence of ints; ``(5,)`` for one."""
    dims = tuple(int(d) for d in shape)
    return str(dims)


def check_int(name: str, value: object, *, minimum: int = 1) -> int:
    """An integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    low: float | None = None,
    high: float | None = None,
) -> float:
    """A finite real number, optionally > 0, >= 0 or inside ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def check_eps(eps: object, *, allow_none: bool = False) -> float | None:
    """``eps`` must be a finite number > 0 (or ``None`` where the layer defines a dtype default)."""
    if eps is None and allow_none:
        return None
    if type(eps) is float and 0.0 < eps < float("inf"):
        return eps  # fast path for the per-call check in functional forms
    return check_float("eps", eps, positive=True)


def check_momentum(momentum: object) -> float | None:
    """``momentum`` is ``None`` (cumulative average) or a number in [0, 1]."""
    if momentum is None:
        return None
    return check_float("momentum", momentum, low=0.0, high=1.0)


def normalize_shape(normalized_shape: ShapeLike, name: str = "normalized_shape") -> tuple[int, ...]:
    """An int or a sequence of positive ints, as a tuple (torch.nn.LayerNorm's rule)."""
    if type(normalized_shape) is tuple and all(type(d) is int and d > 0 for d in normalized_shape) and normalized_shape:
        return normalized_shape  # fast path: the per-call re-check of a module's own, already checked shape
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        dims: tuple[object, ...] = (normalized_shape,)
    elif isinstance(normalized_shape, Sequence | torch.Size):
        dims = tuple(normalized_shape)
    else:
        raise TypeError(f"{name} must be an int or a sequence of ints, got {type(normalized_shape).__name__}")
    if not dims:
        raise ValueError(f"{name} must name at least one dimension, got ()")
    return tuple(check_int(f"{name}[{i}]", d) for i, d in enumerate(dims))


def check_tensor(x: object, layer: str) -> torch.Tensor:
    """A floating-point tensor, or a ``TypeError`` naming what was received."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point tensor, got dtype {x.dtype}")
    return x


def check_trailing(x: torch.Tensor, normalized_shape: Sequence[int], layer: str) -> None:
    """The last ``len(normalized_shape)`` dimensions of ``x`` must equal ``normalized_shape``."""
    k = len(normalized_shape)
    if x.dim() < k or tuple(x.shape[-k:]) != tuple(normalized_shape):
        expected = "(*, " + ", ".join(str(d) for d in normalized_shape) + ")"
        raise ValueError(
            f"{layer} expects input of shape {expected} (normalized_shape={shape_str(normalized_shape)}), "
            f"got shape {shape_str(x.shape)}"
        )


def check_rank(x: torch.Tensor, ranks: Sequence[int], layer: str, layout: str) -> None:
    """``x.dim()`` must be one of ``ranks``; ``layout`` spells the expected shape, e.g. ``(N, C, H, W)``."""
    if x.dim() not in ranks:
        allowed = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{layer} expects a {allowed} input of shape {layout}, got shape {shape_str(x.shape)}")


def check_channels(x: torch.Tensor, axis: int, channels: int, layer: str, layout: str) -> None:
    """``x.shape[axis]`` must equal ``channels``."""
    if x.dim() <= (axis if axis >= 0 else -axis - 1) or x.shape[axis] != channels:
        raise ValueError(
            f"{layer} expects input of shape {layout} with {channels} channels at dim {axis}, "
            f"got shape {shape_str(x.shape)}"
        )


def check_channel_input(
    x: object,
    layer: str,
    channels: int,
    *,
    ranks: Sequence[int] | None = None,
    min_rank: int = 2,
    axis: int = 1,
    layout: str = "(N, {C}, *)",
) -> None:
    """The input check of a channel norm: a floating tensor of a valid rank (one of ``ranks``, or at least
    ``min_rank``) with ``channels`` entries at ``axis``. ``layout`` spells the expected shape with ``{C}`` for
    the channel count; it is only formatted when the check fails, so the common case stays cheap."""
    check_tensor(x, layer)
    assert isinstance(x, torch.Tensor)
    rank_ok = x.dim() in ranks if ranks is not None else x.dim() >= min_rank
    if rank_ok and x.shape[axis] == channels:
        return
    spelled = layout.format(C=channels)
    if not rank_ok:
        if ranks is not None:
            check_rank(x, ranks, layer, spelled)
        raise ValueError(f"{layer} expects an input of shape {spelled}, got shape {shape_str(x.shape)}")
    check_channels(x, axis, channels, layer, spelled)


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 to float32 for reductions that would overflow or lose precision; others unchanged."""
    return x.float() if x.dtype in _LOW_PRECISION else x
