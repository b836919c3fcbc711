"""Stateless gated linear units beyond SwiGLU/GeGLU: GLU (torch.nn.GLU's convention), ReGLU and the bilinear unit.

The input is split in two halves :math:`(a, b)` along ``dim`` (``x.chunk(2, dim)``); the output is half as wide.
ReGLU and the bilinear unit follow Shazeer (2020) and this package's SwiGLU/GeGLU: the **first** half ``a`` goes
through the activation, the second ``b`` is the value. GLU follows ``torch.nn.GLU`` and Dauphin et al. (2016):
the **second** half is the gate, :math:`a \\odot \\sigma(b)`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_tensor

__all__ = ["bilinear", "glu", "reglu"]


def _split_halves(x: Tensor, dim: int, name: str) -> tuple[Tensor, Tensor]:
    """The halves ``(a, b)`` of ``x`` along ``dim``: ``TypeError`` for a non-floating input, ``ValueError`` naming
    the shape for a 0-d input, an axis out of range or an odd size."""
    check_tensor(x, name)
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name} splits dim {dim}, but got an input of shape {tuple(x.shape)}")
    if x.shape[dim] % 2:
        raise ValueError(f"{name} expects an even size at dim {dim} (two halves), got shape {tuple(x.shape)}")
    first, second = x.chunk(2, dim=dim)
    return first, second


def glu(x: Tensor, dim: int = -1) -> Tensor:
    r"""GLU as ``torch.nn.functional.glu``: split ``x`` in halves :math:`(a, b)` along ``dim``;
    :math:`a \odot \sigma(b)` (the second half is the gate)."""
    _split_halves(x, dim, "glu")
    return F.glu(x, dim)


def reglu(x: Tensor, dim: int = -1) -> Tensor:
    r"""ReGLU: split ``x`` in halves :math:`(a, b)` along ``dim``; :math:`\max(0, a) \odot b`. Exactly at
    :math:`a = 0` the derivative with respect to :math:`a` is 0, that of ReLU's :math:`a \le 0` piece."""
    a, b = _split_halves(x, dim, "reglu")
    return F.relu(a) * b


def bilinear(x: Tensor, dim: int = -1) -> Tensor:
    r"""Bilinear unit (a GLU without activation): split ``x`` in halves :math:`(a, b)` along ``dim``;
    :math:`a \odot b`."""
    a, b = _split_halves(x, dim, "bilinear")
    return a * b
