"""Gated linear units: the input is split in a gate half and a value half; the output is half as wide.

SwiGLU, GeGLU, ReGLU and the bilinear unit follow Shazeer (2020): the **first** half goes through the activation,
the second is the value. GLU follows ``torch.nn.GLU`` and Dauphin et al. (2016): the **second** half is the gate.
"""

from __future__ import annotations

from normact import functional as NF
from normact.layers import papers
from normact.layers.act._base import SplitActivation
from normact.registry import Paper, register

__all__ = ["GLU", "BilinearGLU", "GeGLU", "ReGLU", "SwiGLU"]

GLU_PAPER = Paper(
    "Language Modeling with Gated Convolutional Networks", 2016, "1612.08083", "Dauphin, Fan, Auli, Grangier"
)


@register(
    "swiglu",
    kind="act",
    paper=papers.GLU_VARIANTS,
    formula="(a, b) = split(x, 2, dim); f(x) = silu(a) * b",
    functional=NF.swiglu,
    gated=True,
)
class SwiGLU(SplitActivation):
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

    _functional = staticmethod(NF.swiglu)


@register(
    "geglu",
    kind="act",
    paper=papers.GLU_VARIANTS,
    formula="(a, b) = split(x, 2, dim); f(x) = gelu(a) * b",
    functional=NF.geglu,
    gated=True,
)
class GeGLU(SplitActivation):
    r"""GeGLU activation (Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202).

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = \mathrm{GELU}(a) \odot b

    The first half along ``dim`` is the gate, the second the value (exact GELU).

    Args:
        dim: the axis to split (its size must be even). Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    _functional = staticmethod(NF.geglu)


@register(
    "glu",
    kind="act",
    paper=GLU_PAPER,
    formula="(a, b) = split(x, 2, dim); f(x) = a * sigmoid(b)  (the second half is the gate, as torch.nn.GLU)",
    functional=NF.glu,
    gated=True,
    verified_against=("torch.nn.GLU",),
)
class GLU(SplitActivation):
    r"""Gated linear unit, GLU (Dauphin, Fan, Auli & Grangier, 2016, arXiv:1612.08083), as ``torch.nn.GLU``.

    From "Language Modeling with Gated Convolutional Networks".

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = a \odot \sigma(b)

    Dauphin et al. write :math:`h = (XW + b) \otimes \sigma(XV + c)`: the **second** half is the gate. This is
    what ``torch.nn.GLU`` computes and what this layer computes (numerically identical to it, tested), so a
    checkpoint's fused projection keeps its meaning. Note the difference from :class:`SwiGLU`, :class:`GeGLU`,
    :class:`ReGLU` here (and Shazeer's :math:`\sigma(xW) \otimes xV`), which activate the **first** half.

    Args:
        dim: the axis to split (its size must be even). Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    _functional = staticmethod(NF.glu)


@register(
    "reglu",
    kind="act",
    paper=papers.GLU_VARIANTS,
    formula="(a, b) = split(x, 2, dim); f(x) = max(0, a) * b",
    functional=NF.reglu,
    smooth=False,
    gated=True,
)
class ReGLU(SplitActivation):
    r"""ReGLU activation (Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202).

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = \max(0, a) \odot b

    Shazeer's :math:`\mathrm{ReGLU}(x, W, V) = \max(0, xW) \otimes xV` with the two projections fused: the first
    half along ``dim`` is the gate, the second the value (as in :class:`SwiGLU`). Not differentiable where
    :math:`a = 0`: there the derivative with respect to :math:`a` is 0, that of ReLU's :math:`a \le 0` piece.
    Unbounded below (the value half has either sign).

    Args:
        dim: the axis to split (its size must be even). Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    _functional = staticmethod(NF.reglu)


@register(
    "bilinear",
    kind="act",
    paper=papers.GLU_VARIANTS,
    formula="(a, b) = split(x, 2, dim); f(x) = a * b",
    functional=NF.bilinear,
    gated=True,
)
class BilinearGLU(SplitActivation):
    r"""Bilinear unit (Shazeer, "GLU Variants Improve Transformer", 2020, arXiv:2002.05202): a GLU without activation.

    The bilinear layer goes back to Mnih & Hinton (2007).

    .. math::
        (a, b) = \mathrm{split}(x), \qquad f(x) = a \odot b

    Shazeer's :math:`\mathrm{Bilinear}(x, W, V) = xW \otimes xV` with the two projections fused along ``dim``
    (first half, second half). Not to be confused with ``torch.nn.Bilinear``, a layer with its own weights.

    Args:
        dim: the axis to split (its size must be even). Default: -1.

    Shape:
        Input ``(*, 2h, *)``; output ``(*, h, *)``.
    """

    _functional = staticmethod(NF.bilinear)
