"""The elementwise affine that ends most normalizations, shared by the functional families."""

from __future__ import annotations

from torch import Tensor


def affine(y: Tensor, weight: Tensor | None, bias: Tensor | None, view: tuple[int, ...] | None = None) -> Tensor:
    """``y * weight + bias``, either of them optional; with ``view`` (e.g. ``(1, C, 1, 1)``) the parameters are
    reshaped to it first, otherwise they broadcast against the trailing dims."""
    if weight is not None:
        y = y * (weight if view is None else weight.view(view))
    if bias is not None:
        y = y + (bias if view is None else bias.view(view))
    return y
