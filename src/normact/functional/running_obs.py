r"""Running-statistics observation normalization, RSNorm (SimBa, Lee et al., 2024, arXiv:2410.09754): each feature
standardized by the mean and population variance of every sample seen so far.

:func:`rs_norm` follows ``torch.nn.functional.batch_norm``'s convention: the running statistics are passed as
tensors and, with ``training=True``, updated in place before they normalize the input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact._checks import check_channel_input, check_eps, upcast
from normact.distributed import batch_moments, sync_active

__all__ = ["rs_norm"]

_LAYOUT = "(N, {C}) or (N, L, {C})"


def rs_norm(
    x: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_samples_tracked: Tensor,
    training: bool = False,
    eps: float = 1e-8,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""RSNorm: :math:`\hat o = (o - \mu_t)/\sqrt{\sigma_t^2 + \epsilon}` per feature (the last dim).

    With ``training=True`` the statistics first absorb the n samples of ``x`` (every position of (N, C) or
    (N, L, C) input counts as a sample), by the exact merge of two sets of moments (Chan, Golub & LeVeque),
    which for n = 1 is Welford's recursion of the paper:

    .. math::
        \mu_t = \frac{c\,\mu_{t-1} + n\,\bar o}{c + n}, \qquad
        \sigma_t^2 = \frac{c\,\sigma_{t-1}^2 + n\,s^2}{c + n} + \frac{c\,n}{(c + n)^2}\,(\bar o - \mu_{t-1})^2

    with c = ``num_samples_tracked``, :math:`\bar o, s^2` the batch mean and population variance; the updated
    statistics normalize the batch (as the official code: update, then normalize). ``running_mean``,
    ``running_var`` (written in their dtype) and ``num_samples_tracked`` (+= n) are updated in place. Autograd
    treats the statistics as constants (a stop-gradient, in training too): the input gradient is
    :math:`g / \sqrt{\sigma_t^2 + \epsilon}`. With ``sync=True`` under torch.distributed the batch moments and
    count are those of the samples of every process of ``process_group`` (P processes holding parts of a batch
    equal one holding it all). float16/bfloat16 inputs are normalized in float32.
    """
    channels = running_mean.numel()
    check_channel_input(x, "rs_norm", channels, ranks=(2, 3), axis=-1, layout=_LAYOUT)
    eps = check_eps(eps)
    if running_var.numel() != channels:
        raise ValueError(f"rs_norm: running_var must have {channels} entries, got shape {tuple(running_var.shape)}")
    xf = upcast(x)
    # copies of the buffers, which are overwritten below
    mean_old, var_old = running_mean.to(xf.dtype, copy=True), running_var.to(xf.dtype, copy=True)
    if not training:
        return ((xf - mean_old) * torch.rsqrt(var_old + eps)).to(x.dtype)
    flat = xf.reshape(-1, channels)
    n: int | Tensor = flat.shape[0]
    if sync and sync_active(process_group):
        batch_mean, batch_var, n = batch_moments(flat, (0,), sync=True, process_group=process_group)
    elif n == 0:
        raise ValueError(f"rs_norm: training needs at least one sample, got shape {tuple(x.shape)}")
    else:
        batch_mean = flat.mean(0)
        batch_var = (flat - batch_mean).square().mean(0)
    count = num_samples_tracked.to(xf.dtype)
    total = count + n
    old_share, new_share = count / total, n / total  # c / (c + n), n / (c + n)
    delta = batch_mean - mean_old
    mean = mean_old * old_share + batch_mean * new_share
    var = var_old * old_share + batch_var * new_share + delta.square() * (old_share * new_share)
    # the stop-gradient (see the docstring). It also keeps torch.compile exact: AOTAutograd may recompute, in the
    # backward, values that depend only on the buffers from the buffers themselves, after this update overwrote
    # them (wrong input gradients through the batch's share n / (c + n) of the statistics, torch 2.14)
    mean, var = mean.detach(), var.detach()
    with torch.no_grad():
        running_mean.copy_(mean.reshape(running_mean.shape))
        running_var.copy_(var.reshape(running_var.shape))
        num_samples_tracked.add_(n.to(num_samples_tracked.dtype) if isinstance(n, Tensor) else n)
    return ((xf - mean) * torch.rsqrt(var + eps)).to(x.dtype)
