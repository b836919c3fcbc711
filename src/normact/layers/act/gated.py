"""Gated linear units: the input is split in a gate half and a value half; the output is half as wide."""

from __future__ import annotations

from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_int
from normact.layers import papers
from normact.registry import register

__all__ = ["GeGLU", "SwiGLU"]


class _GLU(nn.Module):
    __constants__ = ["dim"]

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=-(2**31))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


@register(
    "swiglu",
    kind="act",
    paper=papers.GLU_VARIANTS,
    formula="(a, b) = split(x, 2, dim); f(x) = silu(a) * b",
    functional=NF.swiglu,
    gated=True,
)
class SwiGLU(_GLU):
    r"""SwiGLU activation (Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202).

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = \mathrm{SiLU}(a) \odot b

    The input's ``dim`` is split in two halves: the first is the gate, the second the value (the layout
    of a fused ``Linear(d, 2h)`` projection). As in ``torch.nn.GLU``, ``dim`` is the split axis.

    Args:
        dim: the axis to split (its size must be even). Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return NF.swiglu(x, self.dim)


@register(
    "geglu",
    kind="act",
    paper=papers.GLU_VARIANTS,
    formula="(a, b) = split(x, 2, dim); f(x) = gelu(a) * b",
    functional=NF.geglu,
    gated=True,
)
class GeGLU(_GLU):
    r"""GeGLU activation (Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202).

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = \mathrm{GELU}(a) \odot b

    The first half along ``dim`` is the gate, the second the value (exact GELU).

    Args:
        dim: the axis to split (its size must be even). Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        return NF.geglu(x, self.dim)
