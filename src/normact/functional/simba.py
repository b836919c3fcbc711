r"""The SimBa residual block (Lee et al., 2024, arXiv:2410.09754): a pre-LayerNorm MLP branch on a linear shortcut,
:math:`x + W_2\,\mathrm{ReLU}(W_1 \mathrm{LN}(x) + b_1) + b_2`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_eps, check_tensor, check_trailing

__all__ = ["simba_block"]


def simba_block(
    x: Tensor,
    norm_weight: Tensor | None,
    norm_bias: Tensor | None,
    fc1_weight: Tensor,
    fc1_bias: Tensor | None,
    fc2_weight: Tensor,
    fc2_bias: Tensor | None,
    eps: float = 1e-6,
) -> Tensor:
    r"""SimBa's residual block over the last dim of ``x`` (*, d):

    .. math::
        y = x + W_2\,\mathrm{ReLU}\big(W_1\,\mathrm{LN}(x) + b_1\big) + b_2, \qquad
        \mathrm{LN}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

    with ``fc1_weight`` :math:`W_1` (h, d), ``fc2_weight`` :math:`W_2` (d, h) (h = 4d in the paper) and the
    LayerNorm gain/bias ``norm_weight``/``norm_bias`` (d,) or None."""
    check_tensor(x, "simba_block")
    for what, w in (("fc1_weight", fc1_weight), ("fc2_weight", fc2_weight)):
        if not isinstance(w, Tensor) or w.dim() != 2:
            raise ValueError(f"simba_block: {what} must be a 2-D tensor, got {getattr(w, 'shape', w)}")
    d, hidden = fc1_weight.shape[1], fc1_weight.shape[0]
    if tuple(fc2_weight.shape) != (d, hidden):
        raise ValueError(
            f"simba_block: fc2_weight must have shape ({d}, {hidden}) for fc1_weight of shape "
            f"{tuple(fc1_weight.shape)}, got {tuple(fc2_weight.shape)}"
        )
    check_trailing(x, (d,), "simba_block")
    eps = check_eps(eps)
    h = F.layer_norm(x, (d,), norm_weight, norm_bias, eps)
    return x + F.linear(torch.relu(F.linear(h, fc1_weight, fc1_bias)), fc2_weight, fc2_bias)
