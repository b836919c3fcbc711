"""Rectified activations: ReLU and squared ReLU."""

from __future__ import annotations

from torch import Tensor, nn

from normact import functional as NF
from normact.layers import papers
from normact.layers.act._base import InplaceActivation
from normact.registry import register

__all__ = ["ReLU", "ReLU2"]


@register(
    "relu",
    kind="act",
    bounded_below=True,
    paper=papers.RELU,
    formula="f(x) = max(0, x)",
    functional=NF.relu,
    smooth=False,
    monotonic=True,
)
class ReLU(InplaceActivation):
    r"""Rectified linear unit (Nair & Hinton, 2010; no arXiv id).

    .. math::
        f(x) = \max(0, x)

    Args:
        inplace: overwrite the input. Default: False.
    """

    def forward(self, x: Tensor) -> Tensor:
        return NF.relu(x, self.inplace)


@register(
    "relu2",
    kind="act",
    bounded_below=True,
    paper=papers.RELU2,
    formula="f(x) = max(0, x)^2",
    functional=NF.relu2,
    smooth=False,
    monotonic=True,
    aliases=("squared_relu", "relu_squared"),
)
class ReLU2(nn.Module):
    r"""Squared ReLU (Zhang et al., "ReLU² Wins", 2024, arXiv:2402.03804; introduced in Primer, arXiv:2109.08668).

    .. math::
        f(x) = \max(0, x)^2, \qquad f'(x) = 2 \max(0, x)

    Continuously differentiable; its second derivative jumps at 0.
    """

    def forward(self, x: Tensor) -> Tensor:
        return NF.relu2(x)

    def extra_repr(self) -> str:
        return ""
