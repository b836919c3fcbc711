"""Stateless math of the last-dimension RMS variants: SimpleRMSNorm, partial RMSNorm, CRMSNorm and FixNorm.

Parameters are arguments, as in ``torch.nn.functional``. Each function validates its input and
hyperparameters; float16/bfloat16 inputs are normalized in float32 and returned in their own dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_float, upcast
from normact.functional._affine import affine
from normact.functional._last_dim import check_last_dim_input, last_dims
from normact.functional._norm_stats import rescale_to_length

__all__ = ["crms_norm", "fix_norm", "partial_rms_norm", "simple_rms_norm"]


def check_p(p: object) -> float:
    """The partial-RMSNorm fraction ``p`` must lie in (0, 1]."""
    p = check_float("p", p, high=1.0)
    if p <= 0.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    return p


def partial_size(d: int, p: float) -> int:
    r"""Number of leading features partial RMSNorm reads: :math:`k = \lceil p\,d \rceil` (at least 1).

    ``p * d`` is rounded to 9 decimals first, so that ``0.07 * 100`` (7.000000000000001 in binary) gives 7.
    """
    return max(1, min(d, math.ceil(round(d * check_p(p), 9))))


def simple_rms_norm(x: Tensor, normalized_shape: int | Sequence[int], eps: float = 1e-6) -> Tensor:
    r"""SimpleRMSNorm (TransNormerLLM): :math:`y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon}`, no gain,
    over the last ``len(normalized_shape)`` dims."""
    shape = check_last_dim_input("simple_rms_norm", x, normalized_shape, eps)
    return F.rms_norm(upcast(x), shape, None, eps).to(x.dtype)


def partial_rms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    p: float = 0.0625,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    r"""Partial RMSNorm (Zhang & Sennrich): :math:`y = x / (\overline{\mathrm{RMS}}(x) + \epsilon)\,g + b`,
    :math:`\overline{\mathrm{RMS}}(x) = \lVert x_{1:k} \rVert_2 / \sqrt{k}` over the first
    :math:`k = \lceil p\,d \rceil` of the ``d`` normalized elements (row-major order when several dims are
    normalized); ``eps`` outside the root as in the paper's code."""
    shape = check_last_dim_input("partial_rms_norm", x, normalized_shape, eps)
    n = len(shape)
    k = partial_size(math.prod(shape), p)
    xf = upcast(x)
    head = xf.flatten(-n)[..., :k]
    rms = torch.linalg.vector_norm(head, ord=2, dim=-1, keepdim=True) * (k**-0.5)
    rms = rms.view(*rms.shape[:-1], *([1] * n))
    return affine(xf / (rms + eps), weight, bias).to(x.dtype)


def crms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Compressed RMSNorm (Jiang et al.): the RMSNorm of the zero-mean :math:`(d+1)`-vector
    :math:`(x, -\sum_i x_i)` restricted to its first ``d`` coordinates,
    :math:`y = x / \sqrt{(\lVert x\rVert_2^2 + (\sum_i x_i)^2)/(d+1) + \epsilon}\,\gamma + \beta`."""
    shape = check_last_dim_input("crms_norm", x, normalized_shape, eps)
    dims = last_dims(len(shape))
    d = math.prod(shape)
    xf = upcast(x)
    total = xf.sum(dims, keepdim=True)
    mean_square = (xf.square().sum(dims, keepdim=True) + total.square()) / (d + 1)
    return affine(xf * torch.rsqrt(mean_square + eps), weight, bias).to(x.dtype)


def fix_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    length: float = 1.0,
    eps: float = 1e-12,
) -> Tensor:
    r"""FixNorm: :math:`y = g\,x / \max(\lVert x\rVert_2, \epsilon)` with a fixed (not learned) length
    :math:`g` = ``length``, over the last ``len(normalized_shape)`` dims."""
    shape = check_last_dim_input("fix_norm", x, normalized_shape, eps)
    length = check_float("length", length, positive=True)
    return rescale_to_length(upcast(x), last_dims(len(shape)), length, eps).to(x.dtype)
