"""Pieces shared by the activations' functional forms (and the checks their modules repeat at construction):
scalar-or-per-channel parameters, the two halves of a gated input, coefficient tensors, and the hyperparameter
checks of GELU, RReLU and Hardtanh."""

from __future__ import annotations

from torch import Tensor

from normact._checks import check_channels, check_float, check_tensor, shape_str

__all__: list[str] = []  # private helpers: nothing for normact.functional to re-export

GELU_APPROXIMATIONS = ("none", "tanh")


def per_channel(p: Tensor, x: Tensor, channel_axis: int, layer: str) -> Tensor:
    """A ``(C,)`` parameter reshaped to broadcast along ``channel_axis`` of ``x``; a 0-d one unchanged."""
    if p.dim() == 0:
        return p
    check_channels(x, channel_axis, p.numel(), layer, f"(..., C, ...) with C at dim {channel_axis}")
    axis = channel_axis % x.dim()
    return p.reshape((-1,) + (1,) * (x.dim() - axis - 1))


def scalar_or_per_channel(p: Tensor | float, x: Tensor, channel_axis: int, layer: str, arg: str) -> Tensor | float:
    """A tensor parameter through :func:`per_channel`; a number checked as a finite float named ``arg``."""
    if isinstance(p, Tensor):
        return per_channel(p, x, channel_axis, layer)
    return check_float(arg, p)


def split_halves(x: Tensor, dim: int, layer: str, halves: str = "two halves") -> tuple[Tensor, Tensor]:
    """The halves ``(a, b)`` of ``x`` along ``dim``: ``TypeError`` for a non-floating input, ``ValueError`` naming
    the shape for a 0-d input, an axis out of range or an odd size (``halves`` names the two parts)."""
    check_tensor(x, layer)
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{layer} splits dim {dim}, but got an input of shape {tuple(x.shape)}")
    if x.shape[dim] % 2:
        raise ValueError(f"{layer} expects an even size at dim {dim} ({halves}), got shape {tuple(x.shape)}")
    first, second = x.chunk(2, dim=dim)
    return first, second


def check_float_tensor(t: object, layer: str, name: str) -> Tensor:
    """``t`` itself, a ``TypeError`` naming ``layer`` and ``name`` unless it is a floating-point tensor."""
    if not isinstance(t, Tensor) or not t.is_floating_point():
        raise TypeError(f"{layer}: {name} must be a floating-point tensor, got {type(t).__name__}")
    return t


def check_vector(t: object, layer: str, name: str, length: int | None = None, minimum: int = 1) -> Tensor:
    """A 1-D floating tensor (of ``length`` entries when given, at least ``minimum`` otherwise)."""
    t = check_float_tensor(t, layer, name)
    if t.dim() != 1 or (length is not None and t.numel() != length) or t.numel() < minimum:
        want = f"({length},)" if length is not None else f"(k,) with k >= {minimum}"
        raise ValueError(f"{layer}: {name} must have shape {want}, got shape {shape_str(t.shape)}")
    return t


def check_gelu_approximate(approximate: str) -> str:
    """GELU's ``approximate``: ``"none"`` or ``"tanh"``."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return approximate


def check_rrelu_bounds(lower: object, upper: object) -> tuple[float, float]:
    """RReLU's slope range: finite ``lower <= upper``."""
    lower, upper = check_float("lower", lower), check_float("upper", upper)
    if lower > upper:
        raise ValueError(f"lower must be <= upper, got lower={lower}, upper={upper}")
    return lower, upper


def check_hardtanh_bounds(min_val: object, max_val: object) -> tuple[float, float]:
    """Hardtanh's clamp range: finite ``min_val < max_val``."""
    min_val, max_val = check_float("min_val", min_val), check_float("max_val", max_val)
    if not min_val < max_val:
        raise ValueError(f"max_val must be > min_val, got min_val={min_val}, max_val={max_val}")
    return min_val, max_val
