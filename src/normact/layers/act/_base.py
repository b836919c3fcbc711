"""Shared pieces of the activation modules: the base class (its ``extra_repr`` lists the hyperparameters), the
activations that are their functional form with those hyperparameters, torch's ``inplace`` switch, and the
gated activations' split axis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from normact.layers.act._params import check_axis


class Activation(nn.Module):
    """An activation module whose ``extra_repr`` lists its hyperparameters, the attributes named in
    ``_hyperparameters``, as ``name=value`` with the value's ``repr`` (none: an empty repr)."""

    _hyperparameters: ClassVar[tuple[str, ...]] = ()

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={getattr(self, name)!r}" for name in self._hyperparameters)


class FunctionalActivation(Activation):
    """An activation that is its functional form ``_functional`` (a ``staticmethod``): ``forward(x)`` returns
    ``_functional(x, *self._functional_args())``, by default the hyperparameters in their ``_hyperparameters``
    order."""

    _functional: ClassVar[Callable[..., Tensor]]

    def forward(self, x: Tensor) -> Tensor:
        return self._functional(x, *self._functional_args())

    def _functional_args(self) -> list[Any]:
        """What ``forward`` passes to ``_functional`` after the input: the hyperparameters' values."""
        return [getattr(self, name) for name in self._hyperparameters]


class InplaceActivation(FunctionalActivation):
    """An activation with torch's ``inplace`` switch (overwrite the input with the output): passed to the
    functional form after the other hyperparameters, and shown in the repr when on."""

    __constants__ = ["inplace"]

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = bool(inplace)

    def _functional_args(self) -> list[Any]:
        return [*super()._functional_args(), self.inplace]

    def extra_repr(self) -> str:
        fields = super().extra_repr()
        if not self.inplace:
            return fields
        return f"{fields}, inplace=True" if fields else "inplace=True"


class SplitActivation(FunctionalActivation):
    """An activation of the two halves of its input along ``dim`` (gate and value); the output is half as wide."""

    __constants__ = ["dim"]
    _hyperparameters = ("dim",)

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_axis("dim", dim)
