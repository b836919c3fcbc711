"""Pieces shared by the functional norms of this package: the check of per-channel tensors against the input,
the fixed running-average factor, the float32 computation of half-precision inputs (running statistics written
back) and the rescaling of vectors to a given length."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from normact._checks import check_channels, check_momentum

__all__: list[str] = []  # private helpers: nothing for normact.functional to re-export

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_per_channel(x: Tensor, name: str, layout: str, tensors: Mapping[str, Tensor | None]) -> None:
    """Each tensor of ``tensors`` (by argument name; ``None`` skipped) has as many elements as ``x`` has channels
    at dim 1; ``layout`` spells the expected input shape, ``{arg}`` and ``{numel}`` standing for the tensor's
    argument name and size."""
    for arg, t in tensors.items():
        if t is not None:
            check_channels(x, 1, t.numel(), name, layout.format(arg=arg, numel=t.numel()))


def require_momentum(owner: str, momentum: object) -> float:
    """``momentum`` checked as a number in [0, 1]; ``None`` (a cumulative average, which needs a batch counter)
    is a ``ValueError`` naming ``owner``."""
    momentum = check_momentum(momentum)
    if momentum is None:
        raise ValueError(f"{owner} needs a momentum in [0, 1], got None")
    return momentum


def float32_inputs(x: Tensor, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """``x`` and ``tensors`` as a torch kernel should see them: float32 copies when ``x`` is float16/bfloat16
    (statistics of large half-precision inputs overflow otherwise), else unchanged; ``None`` stays ``None``."""
    if x.dtype not in _LOW_PRECISION:
        return (x, *tensors)
    return (x.float(), *(None if t is None else t.float() for t in tensors))


def with_running_stats_in_float32(
    kernel: Callable[..., Tensor],
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    update: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    """``kernel(x, running_mean, running_var, weight, bias, update, momentum, eps)`` (``F.batch_norm`` or
    ``F.instance_norm``) on :func:`float32_inputs`; with ``update``, running statistics updated in float32
    copies are written back to the low-precision buffers. The result has ``x``'s dtype."""
    xc, mean_c, var_c, weight_c, bias_c = float32_inputs(x, running_mean, running_var, weight, bias)
    y = kernel(xc, mean_c, var_c, weight_c, bias_c, update, momentum, eps)
    for buffer, updated in ((running_mean, mean_c), (running_var, var_c)):
        if update and buffer is not None and updated is not None and updated is not buffer:
            with torch.no_grad():
                buffer.copy_(updated)
    return y.to(x.dtype)


def rescale_to_length(xf: Tensor, dims: tuple[int, ...], length: Tensor | float, eps: float) -> Tensor:
    """``xf / max(||xf||_2, eps) * length``, the L2 norm over ``dims``."""
    norm = torch.linalg.vector_norm(xf, ord=2, dim=dims, keepdim=True)
    return xf / norm.clamp_min(eps) * length
