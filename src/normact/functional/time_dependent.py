"""Time-dependent LayerNorm and RMSNorm of DiMR (Liu, Zeng, He et al., 2024, arXiv:2406.09416): the affine
parameters are interpolated between two learned endpoints by a learned sigmoid of the time condition ``t``.

Each time-dependent parameter is ``P(t) = s(t) * P0 + (1 - s(t)) * P1`` with ``s(t) = sigmoid(w * t + b)``
elementwise, ``w`` and ``b`` of the parameter's shape (official code qihao067/DiMR,
``libs/core/sigmoid/kernel.py``, ``tdp_torch``: ``addcmul(param1, sigmoid(t * w + b), param0 - param1)``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import shape_str, upcast
from normact.functional._last_dim import check_last_dim_input, last_dims

__all__ = ["td_layer_norm", "td_rms_norm", "time_dependent_parameter"]


def time_dependent_parameter(param0: Tensor, param1: Tensor, slope: Tensor, offset: Tensor, t: Tensor) -> Tensor:
    r"""DiMR's time-dependent parameter :math:`P(t) = s P_0 + (1 - s) P_1`, :math:`s = \sigma(w t + b)`
    elementwise. ``param0``, ``param1``, ``slope`` (w) and ``offset`` (b) share one shape ``S``; ``t`` of any
    shape ``T`` gives a result of shape ``T + S`` (one parameter set per time value)."""
    shape = tuple(param0.shape)
    for name, p in (("param1", param1), ("slope", slope), ("offset", offset)):
        if tuple(p.shape) != shape:
            raise ValueError(
                f"time_dependent_parameter expects {name} of shape {shape_str(shape)} (param0's), "
                f"got shape {shape_str(p.shape)}"
            )
    tv = t.reshape(tuple(t.shape) + (1,) * len(shape))
    s = torch.sigmoid(torch.addcmul(offset, tv, slope))
    return torch.addcmul(param1, s, param0 - param1)


def _time_view(x: Tensor, t: object, k: int, layer: str) -> Tensor:
    """``t`` validated against the input's leading dims ``lead = x.shape[:-k]`` and reshaped to broadcast from the
    left: a tensor of shape (N,) holds one time per sample, (N, L) one per token, () one for all; sizes 1 broadcast."""
    if isinstance(t, numbers.Real) and not isinstance(t, bool):
        t = torch.tensor(float(t), dtype=upcast(x).dtype, device=x.device)
    if not isinstance(t, Tensor):
        raise TypeError(
            f"{layer} expects t as a floating-point tensor of shape (N,) or a number, got {type(t).__name__}"
        )
    if not t.is_floating_point():
        raise TypeError(f"{layer} expects a floating-point t, got dtype {t.dtype}")
    lead = tuple(x.shape[: x.dim() - k])
    if t.dim() > len(lead) or any(a != 1 and a != b for a, b in zip(t.shape, lead, strict=False)):
        expected = f"(N,) = ({lead[0]},)" if lead else "() (a scalar: the input has no leading dims)"
        raise ValueError(
            f"{layer} expects t of shape {expected}, or of any shape that broadcasts from the left against the "
            f"input's leading dims {shape_str(lead)}, got t of shape {shape_str(t.shape)} "
            f"(input shape {shape_str(x.shape)})"
        )
    return t.reshape(tuple(t.shape) + (1,) * (len(lead) - t.dim()))


def _affine_t(
    y: Tensor,
    tv: Tensor,
    shape: tuple[int, ...],
    weight: tuple[Tensor, Tensor, Tensor, Tensor],
    bias: tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None],
    layer: str,
) -> Tensor:
    """``y * gamma(t) + beta(t)`` in the (float32 or wider) computation dtype of ``y``."""
    tv = upcast(tv)
    for name, p in zip(("weight0", "weight1", "weight_slope", "weight_offset"), weight, strict=True):
        if not isinstance(p, Tensor) or tuple(p.shape) != shape:
            got = shape_str(p.shape) if isinstance(p, Tensor) else type(p).__name__
            raise ValueError(f"{layer} expects {name} of shape {shape_str(shape)} (normalized_shape), got {got}")
    gamma = time_dependent_parameter(*(upcast(p) for p in weight), tv)
    out = y * gamma
    present = [p is not None for p in bias]
    if any(present):
        if not all(present):
            raise ValueError(f"{layer} expects all four of bias0, bias1, bias_slope, bias_offset, or none of them")
        for name, p in zip(("bias0", "bias1", "bias_slope", "bias_offset"), bias, strict=True):
            assert p is not None
            if tuple(p.shape) != shape:
                raise ValueError(
                    f"{layer} expects {name} of shape {shape_str(shape)} (normalized_shape), got {shape_str(p.shape)}"
                )
        out = out + time_dependent_parameter(*(upcast(p) for p in bias if p is not None), tv)
    return out


def td_layer_norm(
    x: Tensor,
    t: Tensor | float,
    normalized_shape: int | Sequence[int],
    weight0: Tensor,
    weight1: Tensor,
    weight_slope: Tensor,
    weight_offset: Tensor,
    bias0: Tensor | None = None,
    bias1: Tensor | None = None,
    bias_slope: Tensor | None = None,
    bias_offset: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    r"""Time-dependent LayerNorm (DiMR's TD-LN): :math:`y = \mathrm{LN}(x) \odot \gamma(t) + \beta(t)` with
    :math:`\gamma(t) = s_\gamma \gamma_0 + (1 - s_\gamma)\gamma_1`, :math:`s_\gamma = \sigma(w_\gamma t + b_\gamma)`
    (likewise :math:`\beta`, optional). LN without affine over the last ``len(normalized_shape)`` dims, biased
    variance, ``eps`` inside the root. ``t``: shape (N,) (one time per sample), or any shape broadcasting from the
    left against the input's leading dims, or a number. float16/bfloat16 inputs are computed in float32."""
    shape = check_last_dim_input("td_layer_norm", x, normalized_shape, eps)
    tv = _time_view(x, t, len(shape), "td_layer_norm")
    y = F.layer_norm(upcast(x), shape, eps=eps)
    out = _affine_t(
        y,
        tv,
        shape,
        (weight0, weight1, weight_slope, weight_offset),
        (bias0, bias1, bias_slope, bias_offset),
        "td_layer_norm",
    )
    return out.to(x.dtype)


def td_rms_norm(
    x: Tensor,
    t: Tensor | float,
    normalized_shape: int | Sequence[int],
    weight0: Tensor,
    weight1: Tensor,
    weight_slope: Tensor,
    weight_offset: Tensor,
    bias0: Tensor | None = None,
    bias1: Tensor | None = None,
    bias_slope: Tensor | None = None,
    bias_offset: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    r"""Time-dependent RMSNorm (DiMR's TDRMSNorm): :math:`y = x / (\mathrm{RMS}(x) + \epsilon) \odot \gamma(t)
    (+ \beta(t))`, :math:`\mathrm{RMS}(x) = \lVert x \rVert_2 / \sqrt{d}` over the last dims (``eps`` outside the
    root, as the official code), the time-dependent parameters as in :func:`td_layer_norm`."""
    shape = check_last_dim_input("td_rms_norm", x, normalized_shape, eps)
    tv = _time_view(x, t, len(shape), "td_rms_norm")
    xf = upcast(x)
    dims = last_dims(len(shape))
    rms = torch.linalg.vector_norm(xf, ord=2, dim=dims, keepdim=True) * (math.prod(shape) ** -0.5)
    out = _affine_t(
        xf / (rms + eps),
        tv,
        shape,
        (weight0, weight1, weight_slope, weight_offset),
        (bias0, bias1, bias_slope, bias_offset),
        "td_rms_norm",
    )
    return out.to(x.dtype)
