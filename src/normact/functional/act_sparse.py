"""Stateless activations built for activation sparsity: dReLU (TurboSparse), FATReLU (ProSparse) and the top-k
activation of Top-k Transformers (the Lazy Neuron paper).

Every function takes a floating-point tensor (``TypeError`` otherwise) and returns a tensor of the same dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_float, check_int, check_tensor
from normact.functional._act_common import split_halves

__all__ = ["drelu", "fatrelu", "topk_activation"]


def drelu(x: Tensor, dim: int = -1) -> Tensor:
    r"""dReLU: split ``x`` in halves :math:`(a, b)` along ``dim`` (gate projection first, up projection
    second); :math:`\max(0, a) \odot \max(0, b)`. Exactly at :math:`a = 0` (or :math:`b = 0`) the derivative
    with respect to that half is 0, that of ReLU's :math:`a \le 0` piece."""
    a, b = split_halves(x, dim, "drelu")
    return F.relu(a) * F.relu(b)


def fatrelu(x: Tensor, threshold: float = 0.01) -> Tensor:
    r"""FATReLU (forced activation threshold): :math:`x` where :math:`x \ge T`, else 0 (``threshold`` = T >= 0).
    The comparison runs in the input's dtype (T rounded to it). Exactly at :math:`x = T` the derivative is 1,
    that of the :math:`x \ge T` piece."""
    check_tensor(x, "fatrelu")
    threshold = check_float("threshold", threshold, nonnegative=True)
    return torch.where(x >= threshold, x, 0.0)


def topk_activation(x: Tensor, k: int, relu: bool = True) -> Tensor:
    r"""Top-k activation along the last dim: keep the ``k`` largest entries of each vector ``x[..., :]`` (their
    :math:`\max(0, x)` when ``relu``), zero the rest.

    Equal values are ranked by position (the lower index is larger), so exactly ``min(k, d)`` entries are kept;
    a last dim of size ``d <= k`` is kept whole. The gradient flows to the kept entries only.
    """
    check_tensor(x, "topk_activation")
    k = check_int("k", k)
    if x.dim() == 0:
        raise ValueError(f"topk_activation expects input of shape (*, d) (at least 1-D), got shape {tuple(x.shape)}")
    y = F.relu(x) if relu else x
    if k >= x.shape[-1]:
        return y if relu else x.clone()
    # a stable descending sort keeps equal entries in index order: ties are broken by position, deterministically
    kept = torch.sort(x.detach(), dim=-1, descending=True, stable=True).indices[..., :k]
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device).scatter_(-1, kept, True)
    return torch.where(mask, y, 0.0)
