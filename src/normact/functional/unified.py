"""Stateless form of Unified Normalization (Yang, Zhang, Lan, et al., 2022, arXiv:2208.01313).

Parameters and buffers are arguments; the buffers passed in are updated in place in training, as
``torch.nn.functional.batch_norm`` updates its running statistics: the forward pass updates ``running_var``,
``x2_window``, ``num_batches_tracked`` and ``num_skipped``; the backward pass of the gradient compensation
updates ``gz_window`` and ``ema_gz``. float16/bfloat16 inputs are normalized in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_channels, check_eps, check_float, check_int, check_tensor, shape_str, upcast
from normact.distributed import sync_active
from normact.functional import _batch

__all__ = ["unified_norm"]

RATIO_WARMUP_ITERS = 1000
"""The gradient-compensation ratio r is 1 during the first ``max(RATIO_WARMUP_ITERS, warmup_iters)``
iterations (a constant of the official code)."""

RATIO_BOUND = 5.0
"""r is clamped to ``[1 / RATIO_BOUND, RATIO_BOUND]`` (a constant of the official code)."""


def _leading(x: Tensor) -> tuple[int, ...]:
    return tuple(range(x.dim() - 1))


class _CompensatedNorm(torch.autograd.Function):
    """y = x * inv_std * weight + bias with the paper's gradient compensation as the backward pass.

    ``packed`` rows: inv_std, r, skip (as 0/1), use_batch_gz (as 0/1), all per channel. The backward pass
    reads and updates ``ema_gz`` and ``gz_window`` in place (kept on ``ctx`` rather than saved, so that two
    forward passes before one backward pass, as in gradient accumulation, trip no version-counter check).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        packed: Tensor,
        valid: Tensor | None,
        count: Tensor,
        ema_gz: Tensor,
        gz_window: Tensor,
        momentum: float,
        synced: bool,
        process_group: Any,
    ) -> Tensor:
        z = x * packed[0]
        y = z if weight is None else z * weight
        if bias is not None:
            y = y + bias
        ctx.save_for_backward(z, weight, packed, valid, count)
        ctx.ema_gz, ctx.gz_window = ema_gz, gz_window
        ctx.momentum, ctx.synced, ctx.process_group = momentum, synced, process_group
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        z, weight, packed, valid, count = ctx.saved_tensors
        inv_std, r = packed[0], packed[1]
        skip, use_batch_gz = packed[2, 0] > 0.5, packed[3, 0] > 0.5
        dims = _leading(z)
        g = (grad_y if weight is None else grad_y * weight) * r
        gz = (g * z).sum(dims)
        if ctx.synced:
            torch.distributed.all_reduce(gz, group=ctx.process_group)
        gz = gz / count
        with torch.no_grad():
            ema_old = ctx.ema_gz.to(gz.dtype)
            window = torch.cat([ctx.gz_window.to(gz.dtype)[1:], torch.where(skip, ema_old, gz).unsqueeze(0)])
            mean_gz = torch.where(use_batch_gz, gz, window.mean(0))
            ema_new = torch.lerp(ema_old, mean_gz, ctx.momentum)
            ctx.gz_window.copy_(window)
            ctx.ema_gz.copy_(ema_new)
        correction = torch.where(skip, mean_gz, ema_new) * z
        if valid is not None:
            correction = correction * valid
        grad_x = (g - correction) * inv_std
        grad_weight = (grad_y * r * z).sum(dims) if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = grad_y.sum(dims) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None, None, None, None, None, None, None, None


def _check_mask(pad_mask: object, x: Tensor, name: str) -> None:
    expected = shape_str(x.shape[:-1])
    if not isinstance(pad_mask, Tensor) or pad_mask.dtype != torch.bool:
        what = f"dtype {pad_mask.dtype}" if isinstance(pad_mask, Tensor) else type(pad_mask).__name__
        raise TypeError(f"{name}: pad_mask must be a bool tensor of shape {expected} (True = padding), got {what}")
    if tuple(pad_mask.shape) != tuple(x.shape[:-1]):
        raise ValueError(
            f"{name}: pad_mask must have shape {expected} (the input's shape {shape_str(x.shape)} without its "
            f"feature dim), got shape {shape_str(pad_mask.shape)}"
        )


def _check_args(
    name: str,
    x: Tensor,
    running_var: Tensor,
    x2_window: Tensor,
    gz_window: Tensor,
    ema_gz: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    pad_mask: Tensor | None,
    momentum: float,
    eps: float,
    warmup_iters: int,
) -> int:
    check_tensor(x, name)
    channels = running_var.numel()
    layout = f"(N, {channels}) or (N, L, {channels})"
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} expects a 2-D or 3-D input of shape {layout}, got shape {shape_str(x.shape)}")
    check_channels(x, -1, channels, name, layout)
    check_eps(eps)
    check_float("momentum", momentum, low=0.0, high=1.0)
    check_int("warmup_iters", warmup_iters, minimum=0)
    _batch.check_numel(name, (("ema_gz", ema_gz), ("weight", weight), ("bias", bias)), channels)
    for arg, t in (("x2_window", x2_window), ("gz_window", gz_window)):
        if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] != channels:
            raise ValueError(f"{name}: {arg} must have shape (window, {channels}), got shape {shape_str(t.shape)}")
    if pad_mask is not None:
        _check_mask(pad_mask, x, name)
    return channels


def unified_norm(
    x: Tensor,
    running_var: Tensor,
    x2_window: Tensor,
    gz_window: Tensor,
    ema_gz: Tensor,
    num_batches_tracked: Tensor,
    num_skipped: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    pad_mask: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    warmup_iters: int = 4000,
    outlier_filtration: bool = False,
    gradient_compensation: bool = True,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Unified Normalization (Yang, Zhang, Lan, et al., 2022, arXiv:2208.01313) of an ``(N, C)`` or ``(N, L, C)``
    input, features last.

    Evaluation: :math:`y = x / \sqrt{\text{running\_var} + \epsilon} \cdot \gamma + \beta`.

    Training, iteration ``t = num_batches_tracked + 1`` (the counter is incremented in place):
    ``x2 = mean(x^2)`` per channel over the tokens not marked by ``pad_mask`` (True = padding), over the
    whole process group with ``sync``; ``x2_window`` (shape ``(W_f, C)``, newest row last) shifts it in.
    With ``outlier_filtration``, once ``t >= warmup_iters`` and ``t > W_f``, the batch is an outlier when, in
    any channel, the arithmetic minus the geometric mean of the shifted window exceeds
    ``W_f * Var(sqrt(old window))`` (one unbiased variance over all entries); then ``running_var`` is
    shifted in instead of ``x2`` and ``num_skipped`` counts it. The normalizing statistic is ``x2`` while
    ``t <= W_f``, ``t < warmup_iters``, the batch is skipped or ``W_f = 1``, else the geometric mean of the
    window. ``running_var <- lerp(running_var, var, momentum)``. The backward pass (``gradient_compensation``)
    follows the official ``UN2dFunction``; with ``gradient_compensation=False`` the gradient is autograd's
    through the forward as computed (the current batch's ``x2`` differentiated, the past window constant).
    """
    name = "unified_norm"
    channels = _check_args(
        name, x, running_var, x2_window, gz_window, ema_gz, weight, bias, pad_mask, momentum, eps, warmup_iters
    )
    xf = upcast(x)
    dt = xf.dtype
    w = weight.to(dt) if weight is not None else None
    b = bias.to(dt) if bias is not None else None
    if not training:
        return _batch.cast_affine(xf * torch.rsqrt(running_var.to(dt) + eps), w, b).to(x.dtype)

    dims = _leading(xf)
    valid = None if pad_mask is None else (~pad_mask).unsqueeze(-1).to(dt)
    synced = sync and sync_active(process_group)
    exact = not gradient_compensation
    xs = xf if exact else xf.detach()
    sq = xs.square() if valid is None else xs.square() * valid
    local_count = valid.sum() if valid is not None else torch.tensor(float(xs.numel() // channels), device=x.device)
    totals = torch.cat([sq.sum(dims), local_count.to(dt).reshape(1)])
    if synced:
        if exact:
            totals = _batch.group_sum(totals, process_group)
        else:
            totals = totals.clone()
            torch.distributed.all_reduce(totals, group=process_group)
    count = totals[-1].detach().clamp_min(1.0)
    x2 = totals[:-1] / count

    with torch.no_grad():
        num_batches_tracked.add_(1)
        t = num_batches_tracked
        x2d = x2.detach()
        rv_old = running_var.to(dt)
        old = x2_window.to(dt)
        w_f, w_b = old.shape[0], gz_window.shape[0]
        skip = torch.full((), w_f <= 1, dtype=torch.bool, device=x.device)
        newest = x2d
        if outlier_filtration and w_f > 1:
            recorded = torch.sqrt(old).var()  # one unbiased variance over every entry of the old window
            candidate = torch.cat([old[1:], x2d.unsqueeze(0)])
            gap = candidate.mean(0) - torch.exp(torch.log(candidate).mean(0))
            outlier = (gap > recorded * w_f).any() & (t >= warmup_iters) & (t > w_f)
            newest = torch.where(outlier, rv_old, x2d)
            skip = skip | outlier
            num_skipped.add_(outlier.to(num_skipped.dtype))
        use_batch = (t <= w_f) | (t < warmup_iters) | skip
        ratio_off = (t <= max(RATIO_WARMUP_ITERS, warmup_iters)) | skip
        use_batch_gz = (t <= w_b) | (t < warmup_iters) | skip
        old_log_sum = torch.log(old[1:]).sum(0)
        # Everything the backward pass needs from the buffers goes through one torch.stack: the min-cut
        # partitioner of torch.compile may otherwise recompute such values in the backward graph from the
        # buffers, which by then hold this forward's updates (pytorch/pytorch PR #197039, open); stack is
        # not on its recompute allowlist, so the stacked values are saved.
        flags = torch.stack([use_batch, skip, use_batch_gz]).to(dt).unsqueeze(-1).expand(3, channels)
        packed = torch.stack([old_log_sum, *flags.unbind(0)])
        old_log_sum, use_batch_f, skip_f, use_batch_gz_f = packed.unbind(0)

    # the geometric mean of the shifted window, x2 entering differentiably (and safely at x2 = 0)
    positive = x2 > 0
    log_x2 = torch.log(torch.where(positive, x2, torch.ones_like(x2)))
    geometric = torch.where(positive, torch.exp((old_log_sum + log_x2) / w_f), torch.zeros_like(x2))
    var = torch.where(use_batch_f > 0.5, x2, geometric)

    with torch.no_grad():
        var_d = var.detach()
        ratio = torch.sqrt(var_d + eps) / torch.sqrt(rv_old + eps)
        r = torch.where(ratio_off, torch.ones_like(ratio), ratio.clamp(1.0 / RATIO_BOUND, RATIO_BOUND))
        running_var.copy_(torch.lerp(rv_old, var_d, momentum))
        x2_window.copy_(torch.cat([old[1:], newest.unsqueeze(0)]))

    if exact:
        return _batch.cast_affine(xf * torch.rsqrt(var + eps), w, b).to(x.dtype)
    with torch.no_grad():
        saved = torch.stack([torch.rsqrt(var_d + eps), r, skip_f, use_batch_gz_f])
    y = _CompensatedNorm.apply(xf, w, b, saved, valid, count, ema_gz, gz_window, momentum, synced, process_group)
    return y.to(x.dtype)
