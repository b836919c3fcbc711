"""Softmax activations along one axis: Softmax, LogSoftmax and Softmin (torch.nn semantics). They mix the
entries of a vector, so they are registered ``elementwise=False``."""

from __future__ import annotations

from normact import functional as NF
from normact._checks import check_int
from normact.layers.act._base import FunctionalActivation
from normact.registry import Paper, register

__all__ = ["LogSoftmax", "Softmax", "Softmin"]

SOFTMAX = Paper(
    "Probabilistic Interpretation of Feedforward Classification Network Outputs, with Relationships to "
    "Statistical Pattern Recognition",
    1990,
    None,
    "Bridle",
)


class _AlongDim(FunctionalActivation):
    """An activation normalizing along one axis ``dim`` (an int, -1 by default; torch's implicit choice of
    dim for ``dim=None`` is deprecated there and not offered here)."""

    __constants__ = ["dim"]
    _hyperparameters = ("dim",)

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, minimum=-(1 << 30))


@register(
    "softmax",
    kind="act",
    paper=SOFTMAX,
    formula="y_i = exp(x_i) / sum_j exp(x_j) along dim (default -1)",
    functional=NF.softmax,
    bounded_below=True,
    elementwise=False,
    verified_against=("torch.nn.Softmax",),
)
class Softmax(_AlongDim):
    r"""Softmax (Bridle, 1990; no arXiv id) along ``dim``, as ``torch.nn.Softmax``.

    .. math::
        y_i = \frac{e^{x_i}}{\sum_j e^{x_j}}

    Outputs lie in (0, 1) and sum to 1 along ``dim``; invariant to adding a constant along ``dim``.
    float16/bfloat16 inputs are computed in float32.

    Args:
        dim: the axis to normalize along. Default: -1.

    Shape:
        Input of any shape with at least one dim; output the same shape.
    """

    _functional = staticmethod(NF.softmax)


@register(
    "log_softmax",
    kind="act",
    paper=SOFTMAX,
    formula="y_i = x_i - log(sum_j exp(x_j)) along dim (default -1)",
    functional=NF.log_softmax,
    elementwise=False,
    verified_against=("torch.nn.LogSoftmax",),
)
class LogSoftmax(_AlongDim):
    r"""Log-softmax (the logarithm of Bridle's 1990 softmax; no arXiv id) along ``dim``, as
    ``torch.nn.LogSoftmax``.

    .. math::
        y_i = x_i - \log \sum_j e^{x_j}

    Computed without forming the softmax (no underflow to log 0). float16/bfloat16 inputs are computed in
    float32.

    Args:
        dim: the axis to normalize along. Default: -1.

    Shape:
        Input of any shape with at least one dim; output the same shape.
    """

    _functional = staticmethod(NF.log_softmax)


@register(
    "softmin",
    kind="act",
    paper=SOFTMAX,
    formula="y_i = exp(-x_i) / sum_j exp(-x_j) along dim (default -1)",
    functional=NF.softmin,
    bounded_below=True,
    elementwise=False,
    verified_against=("torch.nn.Softmin",),
)
class Softmin(_AlongDim):
    r"""Softmin, the softmax of :math:`-x` (Bridle, 1990; no arXiv id), along ``dim``, as ``torch.nn.Softmin``.

    .. math::
        y_i = \frac{e^{-x_i}}{\sum_j e^{-x_j}}

    float16/bfloat16 inputs are computed in float32.

    Args:
        dim: the axis to normalize along. Default: -1.

    Shape:
        Input of any shape with at least one dim; output the same shape.
    """

    _functional = staticmethod(NF.softmin)
