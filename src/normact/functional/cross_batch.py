"""Stateless Cross mini-Batch Normalization, CmBN (Bochkovskiy, Wang & Liao, 2020, arXiv:2004.10934).

The moments pooled over the earlier mini-batches of the current optimizer batch are passed in as tensors
(``accum_mean``, ``accum_var``, ``accum_count``, ``accum_step``) and updated in place in training, like the
running statistics of ``torch.nn.functional.batch_norm``. Batch moments go through
:func:`normact.distributed.batch_moments`, so ``sync=True`` pools them over a process group. float16/bfloat16
inputs are normalized in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_int, upcast
from normact.functional import _batch
from normact.functional._state import read_state

__all__ = ["cross_minibatch_norm"]


def cross_minibatch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    accum_mean: Tensor,
    accum_var: Tensor,
    accum_count: Tensor,
    accum_step: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    accum_steps: int = 4,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""CmBN (Bochkovskiy, Wang & Liao, 2020, arXiv:2004.10934) over dim 1 of an ``(N, C, *)`` input.

    Training, at mini-batch ``t = accum_step + 1`` of ``accum_steps``: the per-channel mean and biased variance
    of this mini-batch (over N and the spatial dims, over the process group with ``sync``) are pooled with
    those of mini-batches 1..t-1 (``accum_mean``, ``accum_var`` over ``accum_count`` values; ignored when
    ``accum_step == 0``): the pooled :math:`E[x]` and :math:`E[x^2] - E[x]^2`. The input is normalized with
    them, :math:`(x - \mu)/\sqrt{\sigma^2 + \epsilon} \cdot w + b`; the earlier mini-batches' moments are
    constants for the gradient. The accumulators then hold the pooled moments, ``accum_step`` advances modulo
    ``accum_steps`` (so the pooling restarts every ``accum_steps`` calls), and the running statistics are lerped
    towards the pooled mean and unbiased variance with ``momentum`` (a float or a 0-d tensor). Evaluation:
    BatchNorm with the running statistics."""
    name = "cross_minibatch_norm"
    tensors = [("accum_mean", accum_mean), ("accum_var", accum_var), ("weight", weight), ("bias", bias)]
    _batch.check_running_input(name, x, eps, running_mean, running_var, tensors)
    accum_steps = check_int("accum_steps", accum_steps)
    _batch.check_factor(momentum)
    xf = upcast(x)
    if training:
        if accum_steps == 1:  # BatchNorm: a single value per channel has no variance
            need = "in training with accum_steps=1 needs more than 1 value per channel (N * spatial > 1)"
            mean_b, var_b, n_b = _batch.batch_stats(name, xf, sync, process_group, need)
        else:
            mean_b, var_b, n_b = _batch.channel_moments(xf, sync, process_group)
        # Earlier mini-batches of this optimizer batch (constants); none at the first one. torch.where, not a
        # product, so stale or non-finite accumulators of a finished batch never leak in.
        # (read_state: these buffers are updated below; see normact.functional._state)
        first = read_state(accum_step) == 0
        n_a = torch.where(first, 0, read_state(accum_count)).to(xf.dtype)
        mean_a = torch.where(first, 0.0, read_state(accum_mean).to(xf.dtype))
        var_a = torch.where(first, 0.0, read_state(accum_var).to(xf.dtype))
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / n)
        var = (n_a * var_a + n_b * var_b) / n + delta.square() * (n_a * n_b / n.square())
        y = _batch.standardize(xf, mean, var, eps)
        with torch.no_grad():
            accum_mean.copy_(mean.detach())
            accum_var.copy_(var.detach())
            accum_count.copy_(n.detach().round().to(accum_count.dtype))
            accum_step.copy_((accum_step + 1) % accum_steps)
            _batch.update_running_stats(running_mean, running_var, mean, var, n, momentum)
    else:
        y = _batch.standardize(xf, running_mean.to(xf.dtype), running_var.to(xf.dtype), eps)
    return _batch.cast_affine(y, weight, bias, _batch.channel_view(xf)).to(x.dtype)
