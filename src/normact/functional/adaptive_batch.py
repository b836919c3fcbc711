"""Stateless forms of two BatchNorm variants that adapt their statistics: alpha-BN, test-time calibration of
the statistics by mixing source and test-batch statistics (You, Li & Zhao, 2021, arXiv:2110.04065), and AdaB2N,
task-balanced statistics for continual learning (Lyu et al., 2023, arXiv:2310.08855).

Parameters and buffers are arguments; running statistics passed in are updated in place in training, as
``torch.nn.functional.batch_norm`` does. Batch moments are combined over a process group with ``sync=True``
(see :mod:`normact.distributed`). float16/bfloat16 inputs are normalized in float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_float, shape_str, upcast
from normact.distributed import sync_active
from normact.functional import _batch

__all__ = ["adab2n", "alpha_batch_norm"]


def alpha_batch_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    alpha: float = 0.9,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""alpha-BN (You, Li & Zhao, 2021, arXiv:2110.04065) over dim 1 of an ``(N, C, *)`` input.

    Training: BatchNorm (batch mean and biased variance over (N, *spatial); ``running_mean``/``running_var``
    lerped in place towards the batch mean and the unbiased variance with ``momentum``, a float or a 0-d
    tensor). Evaluation: the source (running) statistics calibrated with the test batch's,
    :math:`\hat\mu = \alpha\mu_s + (1 - \alpha)\mu_B`, :math:`\hat\sigma^2 = \alpha\sigma_s^2 +
    (1 - \alpha)\sigma_B^2` (biased batch variance, over the process group with ``sync``), and
    :math:`y = (x - \hat\mu)/\sqrt{\hat\sigma^2 + \epsilon}\,\gamma + \beta`; no buffer changes."""
    name = "alpha_batch_norm"
    _batch.check_running_input(name, x, eps, running_mean, running_var, [("weight", weight), ("bias", bias)])
    _batch.check_factor(momentum)
    check_float("alpha", alpha, low=0.0, high=1.0)
    xf = upcast(x)
    rm, rv = running_mean.to(xf.dtype), running_var.to(xf.dtype)
    if training:
        mean, var, count = _batch.batch_stats(name, xf, sync, process_group)
        _batch.update_running_stats(running_mean, running_var, mean, var, count, momentum, old=(rm, rv))
    elif alpha == 1.0:
        mean, var = rm, rv
    else:
        bmean, bvar, _ = _batch.channel_moments(xf, sync, process_group)
        mean = alpha * rm + (1.0 - alpha) * bmean
        var = alpha * rv + (1.0 - alpha) * bvar
    y = _batch.standardize(xf, mean, var, eps)
    return _batch.cast_affine(y, weight, bias, _batch.channel_view(xf)).to(x.dtype)


def _task_weighted_stats(
    xf: Tensor, task_weight: Tensor, task_ids: Tensor, cur_tasks: Tensor, synced: bool, process_group: Any
) -> tuple[Tensor, Tensor]:
    """AdaB2N's Bayesian task-balanced batch statistics (official ``training_forward``): per-task Dirichlet
    concentrations exp(task_weight) + batch counts over the tasks 0..cur_tasks, their normalized values p_t,
    each sample weighted p_t / n_t; mean and (biased) variance are the weighted sums over samples of the
    per-sample spatial means."""
    k = task_weight.numel()
    tasks = torch.arange(k, device=xf.device)
    onehot = (task_ids.reshape(-1, 1) == tasks.reshape(1, -1)).to(xf.dtype)  # ids outside [0, k): weight 0
    counts = onehot.sum(0)
    if synced:
        counts = _batch.group_sum(counts, process_group)
    included = tasks <= cur_tasks
    tw = task_weight.to(xf.dtype)
    concentration = torch.where(included, tw.exp() + counts, torch.zeros_like(tw))
    p = concentration / concentration.sum()
    sample_weight = onehot @ (p / counts.clamp_min(1))
    spatial = tuple(range(2, xf.dim()))
    per_sample_mean = xf.mean(spatial) if spatial else xf
    mean = (sample_weight.reshape(-1, 1) * per_sample_mean).sum(0)
    if synced:
        mean = _batch.group_sum(mean, process_group)
    sq = (xf - mean.view(_batch.channel_view(xf))).square()
    per_sample_sq = sq.mean(spatial) if spatial else sq
    var = (sample_weight.reshape(-1, 1) * per_sample_sq).sum(0)
    if synced:
        var = _batch.group_sum(var, process_group)
    return mean, var


def adab2n(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    task_weight: Tensor | None = None,
    task_ids: Tensor | None = None,
    cur_tasks: Tensor | int = 0,
    training: bool = False,
    eta: float | Tensor = 0.1,
    eps: float = 1e-5,
    sync: bool = False,
    process_group: Any = None,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, Tensor, Tensor]:
    r"""AdaB2N (Lyu et al., 2023, arXiv:2310.08855) over dim 1 of an ``(N, C, *)`` input.

    Training: :math:`y = (x - \mu)/\sqrt{\sigma^2 + \epsilon}\,\gamma + \beta` with the batch statistics, then
    ``running_mean <- lerp(running_mean, mu, eta)``, ``running_var <- lerp(running_var, sigma^2, eta)`` in
    place (``eta`` the modified momentum, a float or a 0-d tensor; the biased variance, as the official code).
    With ``task_weight`` (T,) and per-sample ``task_ids`` (N,) and ``cur_tasks > 0``, the statistics are
    task-balanced: :math:`c_t = e^{w_t} + n_t` for the tasks :math:`t \le` ``cur_tasks`` (0 for later ones),
    :math:`p = c / \sum c`, sample weights :math:`p_{t_i}/n_{t_i}`,
    :math:`\mu = \sum_i (p_{t_i}/n_{t_i})\,\bar x_i` and
    :math:`\sigma^2 = \sum_i (p_{t_i}/n_{t_i})\,\overline{(x_i - \mu)^2}` (bars: means over the spatial dims;
    counts and sums over the process group with ``sync``). Otherwise (no ids, or ``cur_tasks == 0``) the plain
    batch statistics over (N, *spatial). Evaluation: the running statistics (``task_ids`` ignored).
    ``return_stats=True`` also returns the statistics used (float32 for half inputs)."""
    name = "adab2n"
    _batch.check_running_input(name, x, eps, running_mean, running_var, [("weight", weight), ("bias", bias)])
    _batch.check_factor(eta, "eta")
    xf = upcast(x)
    view = _batch.channel_view(xf)
    if not training:
        mean, var = running_mean.to(xf.dtype), running_var.to(xf.dtype)
    else:
        mean, var, _ = _batch.batch_stats(name, xf, sync, process_group)
        if task_weight is not None and task_ids is not None:
            if task_ids.dim() != 1 or task_ids.shape[0] != x.shape[0] or task_ids.is_floating_point():
                raise ValueError(
                    f"{name}: task_ids must be an integer tensor of shape ({x.shape[0]},) for input shape "
                    f"{shape_str(x.shape)}, got {task_ids.dtype} of shape {shape_str(task_ids.shape)}"
                )
            cur = torch.as_tensor(cur_tasks, device=xf.device)
            synced = sync and sync_active(process_group)
            wmean, wvar = _task_weighted_stats(xf, task_weight, task_ids, cur, synced, process_group)
            active = cur > 0
            mean = torch.where(active, wmean, mean)
            var = torch.where(active, wvar, var)
        _batch.lerp_running_stats(running_mean, running_var, mean, var, eta)
    y = _batch.cast_affine(_batch.standardize(xf, mean, var, eps), weight, bias, view).to(x.dtype)
    return (y, mean, var) if return_stats else y
