"""Stateless gated linear units beyond SwiGLU/GeGLU: GLU (torch.nn.GLU's convention), ReGLU and the bilinear unit.

The input is split in two halves :math:`(a, b)` along ``dim`` (``x.chunk(2, dim)``); the output is half as wide.
ReGLU and the bilinear unit follow Shazeer (2020) and this package's SwiGLU/GeGLU: the **first** half ``a`` goes
through the activation, the second ``b`` is the value. GLU follows ``torch.nn.GLU`` and Dauphin et al. (2016):
the **second** half is the gate, :math:`a \\odot \\sigma(b)`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from normact.functional._act_common import split_halves

__all__ = ["bilinear", "glu", "reglu"]


def glu(x: Tensor, dim: int = -1) -> Tensor:
    r"""GLU as ``torch.nn.functional.glu``: split ``x`` in halves :math:`(a, b)` along ``dim``;
    :math:`a \odot \sigma(b)` (the second half is the gate)."""
    split_halves(x, dim, "glu")
    return F.glu(x, dim)


def reglu(x: Tensor, dim: int = -1) -> Tensor:
    r"""ReGLU: split ``x`` in halves :math:`(a, b)` along ``dim``; :math:`\max(0, a) \odot b`. Exactly at
    :math:`a = 0` the derivative with respect to :math:`a` is 0, that of ReLU's :math:`a \le 0` piece."""
    a, b = split_halves(x, dim, "reglu")
    return F.relu(a) * b


def bilinear(x: Tensor, dim: int = -1) -> Tensor:
    r"""Bilinear unit (a GLU without activation): split ``x`` in halves :math:`(a, b)` along ``dim``;
    :math:`a \odot b`."""
    a, b = split_halves(x, dim, "bilinear")
    return a * b
