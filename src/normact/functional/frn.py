"""Stateless Filter Response Normalization with its Thresholded Linear Unit (Singh & Krishnan, 2019).

The per-(sample, channel) mean square over (H, W) of float16/bfloat16 inputs is taken in float32 (the square
of |x| = 1e4 overflows float16); the result has the input's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normact._checks import check_channels, check_eps, check_rank, check_tensor, shape_str, upcast

__all__ = ["filter_response_norm"]

_LAYOUT = "(N, C, H, W)"


def filter_response_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    tau: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Filter Response Normalization of an ``(N, C, H, W)`` input, followed by the TLU when ``tau`` is given:

    .. math::
        \nu^2 = \mathrm{mean}_{hw}(x^2), \quad
        y = \gamma \frac{x}{\sqrt{\nu^2 + \epsilon}} + \beta, \quad z = \max(y, \tau)

    ``weight`` (:math:`\gamma`), ``bias`` (:math:`\beta`) and ``tau`` have shape ``(C,)``; ``tau=None`` skips
    the TLU (plain FRN)."""
    check_tensor(x, "filter_response_norm")
    check_eps(eps)
    check_rank(x, (4,), "filter_response_norm", _LAYOUT)
    for name, t in (("weight", weight), ("bias", bias), ("tau", tau)):
        if t is not None and t.dim() != 1:
            raise ValueError(f"filter_response_norm expects {name} of shape (C,), got shape {shape_str(t.shape)}")
        if t is not None:
            check_channels(x, 1, t.numel(), "filter_response_norm", f"(N, C, H, W) with C = {name}.numel()")
    view = (1, -1, 1, 1)
    xf = upcast(x)
    nu2 = xf.square().mean(dim=(2, 3), keepdim=True)
    y = xf * torch.rsqrt(nu2 + eps)
    y = y * weight.view(view) + bias.view(view)
    if tau is not None:
        y = torch.maximum(y, tau.view(view).to(y.dtype))
    return y.to(x.dtype)
