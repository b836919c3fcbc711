"""Stateless form of MPBN, the LIF spiking neuron with a batch normalization of its membrane potential (Guo et
al., 2023, arXiv:2308.08359), and the folding of that normalization into a per-channel firing threshold.

Parameters and buffers are arguments; running statistics passed in are updated in place in training, as
``torch.nn.functional.batch_norm`` does. Batch moments go through :func:`normact.distributed.batch_moments`, so
``sync=True`` combines them over a process group. float16/bfloat16 inputs are computed in float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from normact._checks import check_channels, check_eps, check_float, check_tensor, shape_str, upcast
from normact.distributed import sync_active
from normact.functional import _batch

__all__ = ["fold_mpbn_threshold", "mpbn_lif", "mpbn_surrogate_grad"]


def mpbn_surrogate_grad(u_hat: Tensor, v_th: float = 0.5, temp: float = 3.0) -> Tensor:
    r"""The surrogate derivative of a spike with respect to the normalized potential :math:`\hat u` (official
    ``spike_activation`` of yfguo91/MPBN, ``models/spike_layer.py``, generalized from its ``V_th = 1``):
    with :math:`x = \hat u / (2 V_{th})` and :math:`k` = ``temp``,

    .. math::
        \frac{\partial S}{\partial \hat u} = \mathbb{1}[0 < x < 1]\,
        \frac{k\,(1 - \tanh^2(k(x - \tfrac12)))}{2\tanh(k/2)} \cdot \frac{1}{2 V_{th}},

    the derivative of the tanh ramp :math:`(\tanh(k(\mathrm{clamp}(x, 0, 1) - \frac12)) + \tanh(k/2)) /
    (2\tanh(k/2))` that rises from 0 at :math:`\hat u = 0` to 1 at :math:`\hat u = 2V_{th}`."""
    x = u_hat / (2.0 * v_th)
    inside = (x > 0) & (x < 1)  # torch.clamp passes no gradient at its bounds
    t = torch.tanh(temp * (x - 0.5))
    d = (temp / (2.0 * math.tanh(temp / 2.0)) / (2.0 * v_th)) * (1 - t * t)
    return torch.where(inside, d, torch.zeros_like(d))


class _SurrogateSpike(torch.autograd.Function):
    """Forward: the given 0/1 spikes, exactly. Backward: the surrogate derivative at the normalized potential."""

    @staticmethod
    def forward(u_hat: Tensor, fired: Tensor, v_th: float, temp: float) -> Tensor:
        return fired.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        u_hat, _, v_th, temp = inputs
        ctx.save_for_backward(u_hat)
        ctx.v_th = v_th
        ctx.temp = temp

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        (u_hat,) = ctx.saved_tensors
        return grad * mpbn_surrogate_grad(u_hat, ctx.v_th, ctx.temp), None, None, None


def _check_hparams(tau: float, v_th: float, temp: float) -> None:
    check_float("tau", tau, low=0.0, high=1.0)
    check_float("v_th", v_th, positive=True)
    check_float("temp", temp, positive=True)


def fold_mpbn_threshold(
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    v_th: float = 0.5,
) -> tuple[Tensor, Tensor]:
    r"""MPBN folded into the firing threshold for inference (the paper's re-parameterization):

    .. math::
        S = \Theta(\hat u - V_{th}) = \begin{cases} \Theta(u - V'_{th}) & \gamma > 0 \\
        \Theta(V'_{th} - u) & \gamma < 0 \end{cases}, \qquad
        V'_{th} = \frac{(V_{th} - \beta)\sqrt{\sigma^2 + \epsilon}}{\gamma} + \mu

    with the running statistics :math:`\mu, \sigma^2` and the affine :math:`\gamma, \beta` (1 and 0 when None).
    Returns ``(threshold, above)``, both of shape (C,) (the threshold in the statistics' dtype, float32 for
    float16/bfloat16 statistics, so that it is not rounded to half precision): a neuron of channel c fires
    when ``u > threshold[c]`` where ``above[c]`` (γ >= 0) and when ``u < threshold[c]`` elsewhere (strict
    inequalities, as the spike ``Û > V_th``). A channel with γ = 0 fires always (threshold -inf) if
    β > V_th and never (+inf) otherwise."""
    check_tensor(running_mean, "fold_mpbn_threshold")
    check_eps(eps)
    check_float("v_th", v_th, positive=True)
    c = running_mean.numel()
    _batch.check_numel("fold_mpbn_threshold", (("running_var", running_var), ("weight", weight), ("bias", bias)), c)
    mu = upcast(running_mean)
    s = torch.sqrt(upcast(running_var).to(mu.dtype) + eps)
    g = torch.ones_like(mu) if weight is None else upcast(weight.detach()).to(mu.dtype)
    b = torch.zeros_like(mu) if bias is None else upcast(bias.detach()).to(mu.dtype)
    zero = g == 0
    folded = (v_th - b) * s / torch.where(zero, torch.ones_like(g), g) + mu
    inf = torch.full_like(mu, math.inf)
    constant = torch.where(b > v_th, -inf, inf)
    return torch.where(zero, constant, folded), g >= 0


def mpbn_lif(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    tau: float = 0.25,
    v_th: float = 0.5,
    temp: float = 3.0,
    batch_first: bool = False,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""MPBN LIF neuron (Guo et al., 2023, arXiv:2308.08359) over T time steps of a ``(T, N, C, *)`` input
    (``(N, T, C, *)`` with ``batch_first``); returns the 0/1 spikes in the input's shape and dtype.

    For t = 1..T: :math:`u_t = \tau\,u_{t-1}(1 - s_{t-1}) + x_t` (:math:`u_0 = 0`),
    :math:`\hat u_t = \mathrm{BN}(u_t)` per channel, :math:`s_t = \Theta(\hat u_t - V_{th})` (strict ``>``),
    backpropagated with :func:`mpbn_surrogate_grad` (the reset term included). In training BN uses each step's
    batch statistics over N and the spatial dims (biased variance; across the process group with ``sync``)
    and updates the running statistics in place once per step (``momentum``, unbiased variance; ``None``:
    cumulative average over ``num_batches_tracked``, incremented in place per step). In evaluation the spikes
    come from the folded threshold (:func:`fold_mpbn_threshold`) and the surrogate is evaluated at the
    normalized potential with the running statistics."""
    name = "mpbn_lif"
    check_tensor(x, name)
    if x.dim() < 3:
        layout = "(N, T, C, *)" if batch_first else "(T, N, C, *)"
        raise ValueError(f"{name} expects an input of shape {layout}, got shape {shape_str(x.shape)}")
    check_eps(eps)
    _check_hparams(tau, v_th, temp)
    if running_mean is None or running_var is None:
        raise ValueError(f"{name} needs running_mean and running_var")
    c = running_mean.numel()
    check_channels(x, 2, c, name, f"({'N, T' if batch_first else 'T, N'}, {c}, *)")
    _batch.check_numel(name, (("running_var", running_var), ("weight", weight), ("bias", bias)), c)
    if momentum is None and training and num_batches_tracked is None:
        raise ValueError(f"{name}: momentum=None (cumulative average) needs num_batches_tracked")
    if momentum is not None:
        check_float("momentum", momentum, low=0.0, high=1.0)
    xf = upcast(x)
    xs = xf.transpose(0, 1) if batch_first else xf
    steps = xs.shape[0]
    view = (1, c) + (1,) * (xs.dim() - 3)
    # cast and shaped once: the T steps share one graph node each (one gradient sum in the computation dtype)
    w = None if weight is None else weight.to(xf.dtype).view(view)
    b = None if bias is None else bias.to(xf.dtype).view(view)
    synced = training and sync and sync_active(process_group)
    if training and not synced and xs[0].numel() // max(c, 1) <= 1:
        raise ValueError(
            f"{name} in training needs more than 1 value per channel and time step (N * spatial > 1), "
            f"got input shape {shape_str(x.shape)}"
        )
    if not training:
        thr, above = fold_mpbn_threshold(running_mean, running_var, weight, bias, eps, v_th)
        thr, above = thr.to(xf.dtype).view(view), above.view(view)
        rm, inv = running_mean.to(xf.dtype).view(view), torch.rsqrt(running_var.to(xf.dtype).view(view) + eps)
    u = torch.zeros_like(xs[0])
    spikes = []
    for t in range(steps):
        u = tau * u + xs[t]
        if training:
            mean, var, count = _batch.channel_moments(u, synced, process_group)
            u_hat = _batch.standardize(u, mean, var, eps)
            with torch.no_grad():
                if num_batches_tracked is not None:
                    num_batches_tracked.add_(1)
                if momentum is None:
                    factor: float | Tensor = 1.0 / num_batches_tracked.to(xf.dtype)
                else:
                    factor = momentum
            _batch.update_running_stats(running_mean, running_var, mean, var, count, factor)
        else:
            u_hat = (u - rm) * inv
        u_hat = _batch.cast_affine(u_hat, w, b)
        with torch.no_grad():
            fired = u_hat > v_th if training else torch.where(above, u > thr, u < thr)
        s = _SurrogateSpike.apply(u_hat, fired.to(u.dtype), v_th, temp)
        spikes.append(s)
        u = u * (1 - s)
    y = torch.stack(spikes)
    if batch_first:
        y = y.transpose(0, 1)
    return y.to(x.dtype)
