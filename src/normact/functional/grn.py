"""Stateless Global Response Normalization (Woo et al., ConvNeXt V2, 2023).

The per-channel L2 norms over (H, W) of float16/bfloat16 inputs are taken in float32; the result has the
input's dtype. ``torch.linalg.vector_norm`` has a zero (not NaN) gradient at an all-zero map.
"""

from __future__ import annotations

import torch
from torch import Tensor

from normact._checks import check_channels, check_eps, check_rank, check_tensor, shape_str, upcast

__all__ = ["global_response_norm"]


def global_response_norm(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    eps: float = 1e-6,
    channels_last: bool = False,
) -> Tensor:
    r"""Global Response Normalization of an ``(N, C, H, W)`` input (``(N, H, W, C)`` with ``channels_last``):

    .. math::
        G_c = \lVert x_{:,:,c} \rVert_2, \quad N_c = \frac{G_c}{\mathrm{mean}_c G_c + \epsilon}, \quad
        y = \gamma \odot (x \odot N) + \beta + x

    per sample; ``weight`` (:math:`\gamma`) and ``bias`` (:math:`\beta`) have shape ``(C,)``."""
    check_tensor(x, "global_response_norm")
    check_eps(eps)
    layout = "(N, H, W, C)" if channels_last else "(N, C, H, W)"
    check_rank(x, (4,), "global_response_norm", layout)
    axis = -1 if channels_last else 1
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dim() != 1:
            raise ValueError(f"global_response_norm expects {name} of shape (C,), got shape {shape_str(t.shape)}")
        check_channels(x, axis, t.numel(), "global_response_norm", f"{layout} with C = {name}.numel()")
    spatial, view = ((1, 2), (1, 1, 1, -1)) if channels_last else ((2, 3), (1, -1, 1, 1))
    xf = upcast(x)
    gx = torch.linalg.vector_norm(xf, ord=2, dim=spatial, keepdim=True)
    nx = gx / (gx.mean(dim=axis, keepdim=True) + eps)
    y = xf * nx * weight.view(view) + bias.view(view) + xf
    return y.to(x.dtype)
