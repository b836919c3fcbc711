"""Stateless Online Normalization (Chiley, Sharapov, Kosson, Koster, Reece, Samaniego de la Fuente, Subbiah &
James, 2019, arXiv:1905.05894).

The streams (``running_mean``, ``running_var``) are updated in place by the forward pass in training, and
the two error accumulators of the paper's backward pass (``error_1``, ``error_y``) in place by the backward
pass, as the official module (``online_norm_pytorch``, buffers ``m``, ``var``, ``u``, ``v``) does. The
samples of a batch are processed as a sequence in batch order, exactly as the official C++/CUDA kernels
loop over them; the linear recurrences are evaluated with a parallel prefix scan (log2(N) vectorized steps)
rather than a Python loop over the samples. float16/bfloat16 inputs are normalized in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from normact._checks import check_channels, check_float, shape_str, upcast
from normact.distributed import sync_active
from normact.functional import _batch
from normact.functional._state import read_state

__all__ = ["online_norm"]


def linear_scan(a: Tensor | float, b: Tensor, init: Tensor) -> Tensor:
    """All states of the recurrence ``s_t = a_t * s_{t-1} + b_t`` (t = 0..T-1, ``s_{-1} = init``) along dim 0
    of ``b`` (shape ``(T, *)``; ``a`` a float or a tensor of ``b``'s shape), by a Hillis-Steele prefix scan of
    the affine maps: ceil(log2 T) vectorized steps, no host reads, the same values as the sequential loop."""
    a_t = torch.full_like(b, float(a)) if not isinstance(a, Tensor) else a
    s = torch.cat([a_t[:1] * init.unsqueeze(0) + b[:1], b[1:]])
    steps, d = b.shape[0], 1
    while d < steps:
        s = torch.cat([s[:d], a_t[d:] * s[:-d] + s[d:]])
        a_t = torch.cat([a_t[:d], a_t[d:] * a_t[:-d]])
        d *= 2
    return s


def _previous(states: Tensor, init: Tensor) -> Tensor:
    """``[init, s_0, ..., s_{T-2}]``: the state each step starts from."""
    return torch.cat([init.unsqueeze(0), states[:-1]])


def _gather_samples(t: Tensor, group: Any) -> tuple[Tensor, int]:
    """The rows (samples) of ``t`` of every process of ``group`` in rank order (uneven counts allowed), and
    the index of this process's first row. Not differentiable (used for statistics and in a backward)."""
    dist = torch.distributed
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    count = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count, group=group)
    sizes = [int(c.item()) for c in counts]
    padded = t.new_zeros((max(sizes), *t.shape[1:]))
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    full = torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])
    return full, sum(sizes[:rank])


class _OnlineNormalize(torch.autograd.Function):
    """``y = (x - center) / scale`` per sample and channel, then ``y * weight + bias``; the backward is the
    paper's control process (not the derivative of the forward through the streams)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        center: Tensor,
        scale: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        error_1: Tensor,
        error_y: Tensor,
        alpha_bkw: float,
        synced: bool,
        group: Any,
    ) -> Tensor:
        view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        y = (x - center.view(view)) / scale.view(view)
        out = _batch.cast_affine(y, weight, bias, _batch.channel_view(x))
        ctx.save_for_backward(y, scale, weight)
        # The accumulators are state, updated in the backward: held by reference, not saved (a saved tensor's
        # version check would reject a second graph's backward once the first one has updated them).
        ctx.error_1 = error_1
        ctx.error_y = error_y
        ctx.alpha_bkw = alpha_bkw
        ctx.synced = synced
        ctx.group = group
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        y, scale, weight = ctx.saved_tensors
        error_1, error_y = ctx.error_1, ctx.error_y
        k = 1.0 - ctx.alpha_bkw
        n, c = y.shape[0], y.shape[1]
        g = grad_out if weight is None else grad_out * weight.to(y.dtype).view(_batch.channel_view(y))
        y3 = y.reshape(n, c, -1)
        g3 = g.reshape(n, c, -1)
        # e^(y) (official v): v_t = v_{t-1} + <x'_t, y_t> with x'_t = g_t - (1 - a_b) v_{t-1} y_t, i.e.
        # v_t = (1 - (1 - a_b) <y_t, y_t>) v_{t-1} + <g_t, y_t>; <.,.> the mean over the spatial positions.
        coef = 1.0 - k * y3.square().mean(-1)
        proj = (g3 * y3).mean(-1)
        g_mean = g3.mean(-1)
        y_mean = y3.mean(-1)
        offset = 0
        if ctx.synced:
            full, offset = _gather_samples(torch.stack([coef, proj, g_mean, y_mean, scale], 1), ctx.group)
            coef, proj, g_mean, y_mean, scale_all = full.unbind(1)
        else:
            scale_all = scale
        v0 = error_y.to(y.dtype)
        v_states = linear_scan(coef, proj, v0)
        v_prev = _previous(v_states, v0)
        # e^(1) (official u): u_t = u_{t-1} + mu(x''_t) with x''_t = x'_t / sigma_{t-1} - (1 - a_b) u_{t-1},
        # i.e. u_t = a_b u_{t-1} + mu(x'_t) / sigma_{t-1}.
        u0 = error_1.to(y.dtype)
        u_states = linear_scan(ctx.alpha_bkw, (g_mean - k * v_prev * y_mean) / scale_all, u0)
        u_prev = _previous(u_states, u0)
        v_loc = v_prev[offset : offset + n].unsqueeze(-1)
        u_loc = u_prev[offset : offset + n].unsqueeze(-1)
        grad_x = (g3 - k * v_loc * y3) / scale.unsqueeze(-1) - k * u_loc
        with torch.no_grad():
            error_y.copy_(v_states[-1])
            error_1.copy_(u_states[-1])
        dims = (0, *range(2, y.dim()))
        grad_w = (grad_out * y).sum(dims).to(weight.dtype) if weight is not None and ctx.needs_input_grad[3] else None
        grad_b = (
            grad_out.sum(dims).to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[4] else None
        )
        return grad_x.reshape(y.shape), None, None, grad_w, grad_b, None, None, None, None, None


def online_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    error_1: Tensor,
    error_y: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    alpha_fwd: float = 0.999,
    alpha_bkw: float = 0.99,
    eps: float = 1e-5,
    layer_scaling: bool = False,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Online Normalization (Chiley et al., 2019, arXiv:1905.05894) over dim 1 of an ``(N, C, *)`` input.

    Training: the samples ``t = 0..N-1`` are a stream; with :math:`m_t, v_t` the mean and biased variance of
    sample t over its spatial positions,
    :math:`y_t = (x_t - \mu_{t-1}) / \sqrt{\sigma^2_{t-1} + \epsilon}`,
    :math:`\mu_t = \alpha_f \mu_{t-1} + (1 - \alpha_f) m_t` and
    :math:`\sigma^2_t = \alpha_f \sigma^2_{t-1} + (1 - \alpha_f) v_t + \alpha_f (1 - \alpha_f)(m_t - \mu_{t-1})^2`,
    starting from ``running_mean``/``running_var``, which receive the final stream values. The backward is
    the paper's control process with the accumulators ``error_1``/``error_y`` (updated in place). Evaluation:
    the frozen streams, :math:`(x - \mu)/\sqrt{\sigma^2 + \epsilon}`. Then ``weight``/``bias`` per channel and,
    with ``layer_scaling``, division of each sample by :math:`\sqrt{\mathrm{mean}(z^2) + \epsilon}` over all
    its channels and positions. With ``sync`` (and an initialized process group) the stream runs through the
    samples of all processes in rank order."""
    name = "online_norm"
    _batch.check_nc_input(name, x, eps)
    alpha_fwd = check_float("alpha_fwd", alpha_fwd, low=0.0, high=1.0)
    alpha_bkw = check_float("alpha_bkw", alpha_bkw, low=0.0, high=1.0)
    channels = running_mean.numel()
    check_channels(x, 1, channels, name, f"(N, {channels}, *)")
    tensors = {"running_var": running_var, "error_1": error_1, "error_y": error_y, "weight": weight, "bias": bias}
    _batch.check_numel(name, tensors.items(), channels)
    xf = upcast(x)
    view = _batch.channel_view(xf)
    if training:
        if xf.shape[0] == 0:
            raise ValueError(f"{name} in training needs at least one sample, got shape {shape_str(x.shape)}")
        n = xf.shape[0]
        synced = sync and sync_active(process_group)
        with torch.no_grad():
            x3 = xf.detach().reshape(n, channels, -1)
            m = x3.mean(-1)
            v = (x3 - m.unsqueeze(-1)).square().mean(-1)
            offset = 0
            if synced:
                full, offset = _gather_samples(torch.stack([m, v], 1), process_group)
                m, v = full[:, 0], full[:, 1]
            mu0 = read_state(running_mean).to(xf.dtype)
            var0 = read_state(running_var).to(xf.dtype)
            mu_states = linear_scan(alpha_fwd, (1.0 - alpha_fwd) * m, mu0)
            mu_prev = _previous(mu_states, mu0)
            q = v + alpha_fwd * (m - mu_prev).square()
            var_states = linear_scan(alpha_fwd, (1.0 - alpha_fwd) * q, var0)
            var_prev = _previous(var_states, var0)
            center = mu_prev[offset : offset + n]
            scale = torch.sqrt(var_prev[offset : offset + n] + eps)
            running_mean.copy_(mu_states[-1])
            running_var.copy_(var_states[-1])
        y = _OnlineNormalize.apply(xf, center, scale, weight, bias, error_1, error_y, alpha_bkw, synced, process_group)
    else:
        y = _batch.standardize(xf, running_mean.to(xf.dtype), running_var.to(xf.dtype), eps)
        y = _batch.cast_affine(y, weight, bias, view)
    if layer_scaling:
        dims = tuple(range(1, y.dim()))
        y = y * torch.rsqrt(y.square().mean(dims, keepdim=True) + eps)
    return y.to(x.dtype)
