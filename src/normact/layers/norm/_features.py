"""Construction shared by the norms of this package: the checked channel count and ``eps`` of the per-channel
norms with their ``affine`` switch, and the element-wise affine of the norms over the last dimensions."""

from __future__ import annotations

from typing import Any

from torch import nn

from normact._checks import check_eps, check_int
from normact.layers.norm._channel import add_channel_affine

__all__: list[str] = []  # private helpers


class FeatureNorm(nn.Module):
    """Base of the norms over ``num_features`` channels with an ``eps``: ``__init__`` checks and keeps both;
    :meth:`_add_affine` adds the ``affine`` switch and the per-channel ``weight`` and ``bias`` it controls."""

    def __init__(self, num_features: int, eps: float) -> None:
        super().__init__()
        self.num_features = check_int("num_features", num_features)
        self.eps = check_eps(eps)

    def _add_affine(self, affine: bool, factory_kwargs: dict[str, Any]) -> None:
        """Keep the ``affine`` switch and register ``weight`` and ``bias`` of shape (C,), uninitialized (``None``
        without ``affine``)."""
        self.affine = bool(affine)
        add_channel_affine(self, self.num_features, self.affine, factory_kwargs)


def add_elementwise_affine(
    module: nn.Module,
    shape: int | tuple[int, ...],
    elementwise_affine: bool,
    bias: bool,
    factory_kwargs: dict[str, Any],
) -> None:
    """Register ``weight`` of ``shape`` (with ``elementwise_affine``) and ``bias`` of ``shape`` (with both
    switches), uninitialized, else ``None``: torch's LayerNorm parameters."""
    add_channel_affine(module, shape, elementwise_affine, factory_kwargs, ("weight",))
    add_channel_affine(module, shape, elementwise_affine and bias, factory_kwargs, ("bias",))
