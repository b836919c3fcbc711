"""Memory-sharing LayerNorm and RMSNorm (Yang, Shi et al., ICML 2024, arXiv:2406.16282): the exact gradient,
computed from the saved **output** and the per-row 1/sigma instead of the input.

A normalization followed by a linear layer normally keeps two activations alive for the backward pass: its own
input (for its gradient) and its output (saved by the linear layer for the weight gradient). The gradient of
LayerNorm/RMSNorm can be written in terms of the normalized output ``y`` alone,

    LN:      dx = rstd * (g - mean(g) - mean(g * y) * y)
    RMSNorm: dx = rstd * (g - mean(g * y) * y)

so the layer saves ``y`` (the very tensor the following linear layer saves: one storage, shared) and ``rstd``
(one value per row), and the input can be freed. This is what the official kernels do (yyyyychen/LowMemoryBP,
``lomem/normalization.py``: ``ctx.save_for_backward(out, rstd)``; ``lomem/csrc/normalization_cuda.cu`` and
``rms_norm_cuda.cu``: the two backward formulas above, with ``rstd`` kept in float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normact._checks import upcast
from normact.functional._affine import affine
from normact.functional._last_dim import check_last_dim_input, last_dims

__all__ = ["ms_layer_norm", "ms_rms_norm"]


class _MemorySharingNorm(torch.autograd.Function):
    """``(y, rstd) = norm(x)`` saving ``(y, rstd)`` only. ``y`` is an output, so a following layer that saves
    its input saves the same storage. ``rstd`` is returned too (as an output it keeps second derivatives exact:
    its own dependence on ``x`` is ``d rstd / dx = -rstd^2 y / D`` for both norms)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, dims: tuple[int, ...], eps: float | None, center: bool) -> tuple[Tensor, Tensor]:
        xf = upcast(x)
        if eps is None:
            eps = torch.finfo(xf.dtype).eps
        if center:
            xf = xf - xf.mean(dims, keepdim=True)
        rstd = torch.rsqrt((xf * xf).mean(dims, keepdim=True) + eps)
        y = (xf * rstd).to(x.dtype)
        ctx.save_for_backward(y, rstd)
        ctx.dims = dims
        ctx.center = center
        ctx.size = math.prod([x.shape[i] for i in dims])
        ctx.set_materialize_grads(False)
        return y, rstd

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor | None, grad_rstd: Tensor | None) -> tuple[Tensor | None, None, None, None]:
        y, rstd = ctx.saved_tensors
        dims: tuple[int, ...] = ctx.dims
        yf = upcast(y)
        grad_x = None
        if grad_y is not None:
            g = upcast(grad_y)
            inner = g - (g * yf).mean(dims, keepdim=True) * yf
            if ctx.center:
                inner = inner - g.mean(dims, keepdim=True)
            grad_x = inner * rstd
        if grad_rstd is not None:  # only in double backward: rstd is not used by the layers
            term = (grad_rstd * rstd * rstd / -ctx.size) * yf
            grad_x = term if grad_x is None else grad_x + term
        return (None if grad_x is None else grad_x.to(y.dtype)), None, None, None


def ms_layer_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Memory-sharing LayerNorm: :math:`y = (x - \mu)/\sqrt{\sigma^2 + \epsilon}\,\gamma + \beta` (biased
    variance over the last ``len(normalized_shape)`` dims) with the backward computed from the saved normalized
    output and 1/sigma, not from ``x``. The gradient is exact. ``weight``/``bias`` are applied by ordinary autograd
    ops after the memory-sharing core; then the normalized tensor, not the affine output, is what is saved, so
    the memory is shared only without them (fold them into the next linear layer instead)."""
    shape = check_last_dim_input("ms_layer_norm", x, normalized_shape, eps)
    y, _ = _MemorySharingNorm.apply(x, last_dims(len(shape)), eps, True)
    return affine(y, weight, bias)


def ms_rms_norm(
    x: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = 1e-5,
) -> Tensor:
    r"""Memory-sharing RMSNorm: :math:`y = x/\sqrt{\mathrm{mean}(x^2) + \epsilon}\,\gamma` (``eps`` inside the
    root, as ``torch.nn.RMSNorm``; ``None`` is the machine epsilon of the computation dtype) with the backward
    computed from the saved normalized output and 1/rms. The gradient is exact; ``weight`` breaks the sharing as
    in :func:`ms_layer_norm`."""
    shape = check_last_dim_input("ms_rms_norm", x, normalized_shape, eps, allow_none_eps=True)
    y, _ = _MemorySharingNorm.apply(x, last_dims(len(shape)), eps, False)
    return affine(y, weight, None)
