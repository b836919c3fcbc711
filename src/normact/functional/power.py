"""Stateless form of Power Normalization (Shen, Yao, Gholami, Mahoney & Keutzer, 2020, arXiv:2003.07845), the
official ``MaskPowerNorm``: features last, an optional padding mask, running quadratic mean, and the paper's
approximate backward pass with its running gradient statistic.

Parameters and buffers are arguments; in training the buffers passed in are updated in place, as
``torch.nn.functional.batch_norm`` does: ``running_phi`` in the forward pass and ``ema_gz`` in the backward pass.
With ``sync=True`` the batch quadratic mean (and the backward statistic) are summed over a process group,
counts included, so that every process sees the statistics of the whole data-parallel batch. float16/bfloat16
inputs are normalized in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_eps, check_float, check_int, check_tensor, shape_str, upcast
from normact.distributed import sync_active
from normact.functional import _batch
from normact.functional._state import read_state

__all__ = ["power_norm"]

_NAME = "power_norm"


def _group_scale(x: Tensor, group_num: int, eps: float) -> Tensor:
    """The official ``GroupScaling1D``: each token's C features split into ``group_num`` groups of C/G; each
    group divided by the square root of its mean square plus eps (per token, no batch statistics)."""
    shape = x.shape
    xg = x.reshape(*shape[:-1], group_num, shape[-1] // group_num)
    moment2 = xg.square().mean(-1, keepdim=True)
    return (xg * torch.rsqrt(moment2 + eps)).reshape(shape)


def _quadratic_mean(u: Tensor, valid: Tensor | None, sync: bool, process_group: Any) -> tuple[Tensor, Tensor]:
    """Per-channel mean of u^2 over every non-padded position (over the process group with ``sync``), and the
    count of those positions. Differentiable (a differentiable all-reduce combines the sums and counts)."""
    dims = tuple(range(u.dim() - 1))
    sq = u.square()
    if valid is not None:
        sq = torch.where(valid, sq, 0.0)
        count = valid.sum().to(u.dtype)
    else:
        count = torch.tensor(float(u.numel() // u.shape[-1]), dtype=u.dtype, device=u.device)
    total = sq.sum(dims)
    if sync:
        totals = _batch.group_sum(torch.cat([total, count.reshape(1)]), process_group)
        total, count = totals[:-1], totals[-1]
    return total / count.clamp_min(1.0), count


class _PowerNormApprox(torch.autograd.Function):
    """y = (u * inv) * weight + bias with the paper's approximate backward (Algorithm 1):

    g = weight * dL/dy;  g' = g - nu * z (non-padded positions);  dL/du = g' * inv;
    ema_gz += mean over non-padded positions (over the group with sync) of g' * z,  nu = (1 - alpha_bkw) ema_gz.

    ``inv`` (the normalizer) is a constant for backpropagation; its dependence on the batch is what the
    nu * z term approximates. ``ema_gz`` is updated in place in the backward pass.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        u: Tensor,
        inv: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        ema_gz: Tensor,
        valid: Tensor | None,
        count: Tensor,
        alpha_bkw: float,
        sync: bool,
        process_group: Any,
    ) -> Tensor:
        z = u * inv
        y = _batch.cast_affine(z, weight, bias)
        ctx.save_for_backward(z, inv, weight, valid, count)
        # Not saved with save_for_backward: it is updated in place by this very backward pass (and by other
        # backward passes through the same layer), which the saved-tensor version check would reject.
        ctx.ema_gz = ema_gz
        ctx.alpha_bkw = alpha_bkw
        ctx.sync = sync
        ctx.process_group = process_group
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        z, inv, weight, valid, count = ctx.saved_tensors
        ema_gz = ctx.ema_gz
        dims = tuple(range(z.dim() - 1))
        grad = grad.to(z.dtype)
        g = grad * weight.to(z.dtype) if weight is not None else grad
        correction = ((1.0 - ctx.alpha_bkw) * ema_gz.to(z.dtype)) * z  # nu * z
        if valid is not None:
            correction = torch.where(valid, correction, 0.0)  # padding is outside the statistics
        g_prime = g - correction
        prod = g_prime * z
        if valid is not None:
            prod = torch.where(valid, prod, 0.0)
        lam = prod.sum(dims)
        if ctx.sync:
            torch.distributed.all_reduce(lam, group=ctx.process_group)
        with torch.no_grad():
            ema_gz.add_((lam / count.clamp_min(1.0)).to(ema_gz.dtype))
        grad_u = g_prime * inv if ctx.needs_input_grad[0] else None
        grad_w = None
        if weight is not None and ctx.needs_input_grad[2]:
            grad_w = (grad * z).sum(dims).to(weight.dtype)
        grad_b = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
            grad_b = grad.sum(dims).to(ctx.bias_dtype)
        return grad_u, None, grad_w, grad_b, None, None, None, None, None, None


def _check(
    x: Tensor,
    running_phi: Tensor,
    tensors: dict[str, Tensor | None],
    pad_mask: Tensor | None,
    group_num: int | None,
    eps: float,
    alpha_fwd: float,
    alpha_bkw: float,
    warmup_iters: int,
) -> None:
    check_tensor(x, _NAME)
    if running_phi is None:
        raise ValueError(f"{_NAME} needs running_phi (a tensor of C elements)")
    channels = running_phi.numel()
    if x.dim() not in (2, 3) or x.shape[-1] != channels:
        raise ValueError(
            f"{_NAME} expects an input of shape (N, {channels}) or (N, L, {channels}) (running_phi has "
            f"{channels} elements), got shape {shape_str(x.shape)}"
        )
    _batch.check_numel(_NAME, tensors.items(), channels)
    if pad_mask is not None:
        if not isinstance(pad_mask, Tensor) or pad_mask.dtype != torch.bool:
            what = pad_mask.dtype if isinstance(pad_mask, Tensor) else type(pad_mask).__name__
            raise TypeError(f"{_NAME}: pad_mask must be a bool tensor (True = padding), got {what}")
        if tuple(pad_mask.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"{_NAME}: pad_mask must have the input's shape without the channel dim, "
                f"{shape_str(x.shape[:-1])}, got shape {shape_str(pad_mask.shape)}"
            )
    if group_num is not None and channels % check_int("group_num", group_num):
        raise ValueError(f"{_NAME}: group_num must divide C = {channels}, got {group_num}")
    check_eps(eps)
    check_float("alpha_fwd", alpha_fwd, low=0.0, high=1.0)
    check_float("alpha_bkw", alpha_bkw, low=0.0, high=1.0)
    check_int("warmup_iters", warmup_iters, minimum=0)


def power_norm(
    x: Tensor,
    running_phi: Tensor,
    ema_gz: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    step: Tensor | int | None = None,
    warmup_iters: int = 10000,
    alpha_fwd: float = 0.9,
    alpha_bkw: float = 0.9,
    eps: float = 1e-5,
    group_num: int | None = None,
    pad_mask: Tensor | None = None,
    approx_backward: bool = True,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Power Normalization (Shen et al., 2020, arXiv:2003.07845) of an ``(N, C)`` or ``(N, L, C)`` input.

    ``u = x`` (or the official GroupScaling1D of x when ``group_num`` is given). Training, at step
    ``t = step`` (1-based, the module's ``iters`` after counting this batch):
    :math:`\psi_B^2 = \mathrm{mean}(u^2)` per channel over the non-padded positions (``pad_mask`` True =
    padding; over the process group with ``sync``); :math:`s^2 = \psi_B^2` while ``t <= warmup_iters``, else
    ``running_phi`` (the statistics of the previous steps); :math:`y = \gamma\, u / \sqrt{s^2 + \epsilon} + \beta`
    at every position, padded ones included; then ``running_phi <- alpha_fwd * phi' + (1 - alpha_fwd) * psi_B^2``
    with ``phi' = running_phi * (t - 1)/t + psi_B^2 / t`` while ``t < warmup_iters`` and ``phi' = running_phi``
    after. ``step=None`` means after warmup. With ``approx_backward`` the backward pass is the paper's
    approximation (see :class:`normact.PowerNorm`) and updates ``ema_gz`` in place; otherwise it is the
    autograd gradient of this forward. Evaluation: :math:`y = \gamma\, u / \sqrt{\text{running\_phi} + \epsilon}
    + \beta`."""
    _check(
        x,
        running_phi,
        {"ema_gz": ema_gz, "weight": weight, "bias": bias},
        pad_mask,
        group_num,
        eps,
        alpha_fwd,
        alpha_bkw,
        warmup_iters,
    )
    xf = upcast(x)
    u = _group_scale(xf, group_num, eps) if group_num is not None else xf
    # a copy (the buffer is updated below), read through read_state under torch.compile (pytorch#197039)
    phi = read_state(running_phi).to(u.dtype, copy=True) if training else running_phi.to(u.dtype)
    if not training:
        return _batch.cast_affine(u * torch.rsqrt(phi + eps), weight, bias).to(x.dtype)
    if approx_backward and ema_gz is None:
        raise ValueError(f"{_NAME} in training with approx_backward=True needs ema_gz")
    valid = None if pad_mask is None else (~pad_mask).unsqueeze(-1)
    synced = sync and sync_active(process_group)
    if approx_backward:
        with torch.no_grad():
            psi2, count = _quadratic_mean(u.detach(), valid, synced, process_group)
    else:
        psi2, count = _quadratic_mean(u, valid, synced, process_group)
    if step is None:
        s2 = phi
        with torch.no_grad():
            running_phi.copy_(alpha_fwd * phi + (1.0 - alpha_fwd) * psi2.detach())
    else:
        t = torch.as_tensor(step, device=u.device)
        s2 = torch.where(t <= warmup_iters, psi2, phi)
        with torch.no_grad():
            tf = t.to(u.dtype).clamp_min(1.0)
            batch = psi2.detach()
            blended = torch.where(t < warmup_iters, phi * ((tf - 1.0) / tf) + batch / tf, phi)
            running_phi.copy_(alpha_fwd * blended + (1.0 - alpha_fwd) * batch)
    inv = torch.rsqrt(s2 + eps)
    if approx_backward:
        y = _PowerNormApprox.apply(u, inv, weight, bias, ema_gz, valid, count, alpha_bkw, synced, process_group)
    else:
        y = _batch.cast_affine(u * inv, weight, bias)
    return y.to(x.dtype)
