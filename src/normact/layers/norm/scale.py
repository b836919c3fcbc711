"""ScaleNorm: normalize each vector to a learned length (Nguyen & Salazar, 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, normalize_shape
from normact.layers import papers
from normact.layers.norm._channel import add_learnable
from normact.registry import Param, register

__all__ = ["ScaleNorm"]


@register(
    "scalenorm",
    kind="norm",
    paper=papers.SCALE_NORM,
    formula="y = g * x / max(||x||_2, eps), over the last dims, one learnable scalar g (init sqrt(d))",
    functional=NF.scale_norm,
    params=(Param("scale", "()", "sqrt(d), d = prod(normalized_shape)"),),
)
class ScaleNorm(nn.Module):
    r"""ScaleNorm (Nguyen & Salazar, "Transformers without Tears", 2019, arXiv:1910.05895).

    .. math::
        y = g \, \frac{x}{\max(\lVert x \rVert_2, \epsilon)}

    over the last ``len(normalized_shape)`` dims, with one scalar ``g`` initialised to
    :math:`\sqrt{d}`, :math:`d = \prod` ``normalized_shape`` (so that it starts close to an RMSNorm
    without gain). ``eps`` clamps the norm from below as in the paper's code.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: lower bound of the norm. Default: 1e-5.
        affine: learn ``g`` (a parameter); otherwise ``g`` is a fixed buffer. Default: True.
        scale_init: initial ``g``. Default: None, meaning :math:`\sqrt{d}`.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    __constants__ = ["normalized_shape", "eps", "affine"]

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        affine: bool = True,
        scale_init: float | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.normalized_shape = normalize_shape(normalized_shape)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        self.scale_init = (
            math.sqrt(math.prod(self.normalized_shape)) if scale_init is None else check_float("scale_init", scale_init)
        )
        add_learnable(self, "scale", torch.empty((), device=device, dtype=dtype), self.affine)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """g = scale_init (sqrt(d) by default)."""
        with torch.no_grad():
            self.scale.fill_(self.scale_init)

    def forward(self, x: Tensor) -> Tensor:
        return NF.scale_norm(x, self.normalized_shape, self.scale, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, affine={self.affine}, scale_init={self.scale_init:.6g}"
