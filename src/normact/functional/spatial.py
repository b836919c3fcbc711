"""Stateless forms of the spatially conditioned normalizations: SPADE (Park et al., 2019) and Region
Normalization, RN-B and RN-L (Yu et al., 2020).

Parameters and buffers are arguments; running statistics passed in are updated in place in training, as
``torch.nn.functional.batch_norm`` does. Batch statistics go through a differentiable all-reduce when
``sync`` is set and a process group is active (see :mod:`normact.distributed`). float16/bfloat16 inputs are
computed in float32 (statistics, convolutions and the modulation) and returned in their own dtype.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_eps, check_float, shape_str, upcast
from normact.distributed import sync_active
from normact.functional import _batch

__all__ = ["region_norm", "region_norm_l", "spade"]

_PARAM_FREE = ("batch", "instance")


# ------------------------------------------------------------------------------------------------ helpers


def _check_vector(name: str, arg: str, t: Tensor | None, shape: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name}: {arg} must have shape {shape_str(shape)}, got shape {shape_str(t.shape)}")


def _resize_nearest(t: Tensor, size: tuple[int, int]) -> Tensor:
    """``F.interpolate(t, size, mode="nearest")`` (source index floor(i * in / out), as the official SPADE and
    RN code resize their maps); a no-op when the size already matches."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="nearest")


def _cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


def _conv(t: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A stride-1 'same' convolution (odd kernel, zero padding k // 2) in ``t``'s dtype."""
    return F.conv2d(t, weight.to(t.dtype), _cast(bias, t.dtype), padding=weight.shape[-1] // 2)


# --------------------------------------------------------------------------------------------------- SPADE


def spade(
    x: Tensor,
    segmap: Tensor,
    shared_weight: Tensor,
    shared_bias: Tensor | None,
    gamma_weight: Tensor,
    gamma_bias: Tensor | None,
    beta_weight: Tensor,
    beta_bias: Tensor | None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    training: bool = False,
    momentum: float | Tensor = 0.1,
    eps: float = 1e-5,
    param_free: str = "batch",
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""SPADE (Park, Liu, Wang & Zhu, 2019, arXiv:1903.07291) of an ``(N, C, H, W)`` input conditioned on a map
    ``segmap`` of shape ``(N, L, h, w)``:

    :math:`y = \hat x \odot (1 + \gamma(m)) + \beta(m)`, :math:`a = \mathrm{ReLU}(\mathrm{conv}_{s}(m))`,
    :math:`\gamma = \mathrm{conv}_{\gamma}(a)`, :math:`\beta = \mathrm{conv}_{\beta}(a)`, where ``m`` is
    ``segmap`` resized to (H, W) by nearest interpolation and the convolutions are stride-1 with zero padding
    ``k // 2`` (odd kernels). :math:`\hat x` is the parameter-free normalization: ``param_free="batch"``:
    per-channel statistics over (N, H, W) in training, or when ``running_mean`` is None (running statistics,
    if given, lerped in place with ``momentum`` and the unbiased variance; over the process group with
    ``sync``), the running statistics in evaluation; ``"instance"``: per sample and channel over (H, W).
    Biased variances, ``eps`` inside the square root."""
    name = "spade"
    _batch.check_4d_input(name, x)
    check_eps(eps)
    if param_free not in _PARAM_FREE:
        raise ValueError(f"{name}: param_free must be one of {_PARAM_FREE}, got {param_free!r}")
    _batch.check_factor(momentum)
    n, c = x.shape[:2]
    if shared_weight.dim() != 4 or gamma_weight.dim() != 4 or beta_weight.dim() != 4:
        raise ValueError(f"{name}: the convolution weights must be 4-D (out, in, k, k)")
    hidden, label_nc, k = shared_weight.shape[0], shared_weight.shape[1], shared_weight.shape[-1]
    if k % 2 == 0 or shared_weight.shape[-2] != k:
        raise ValueError(f"{name}: kernels must be square with an odd size, got {shape_str(shared_weight.shape)}")
    for arg, w in (("gamma_weight", gamma_weight), ("beta_weight", beta_weight)):
        _check_vector(name, arg, w, (c, hidden, k, k))
    _check_vector(name, "shared_bias", shared_bias, (hidden,))
    _check_vector(name, "gamma_bias", gamma_bias, (c,))
    _check_vector(name, "beta_bias", beta_bias, (c,))
    for arg, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_vector(name, arg, t, (c,))
    if not isinstance(segmap, Tensor):
        raise TypeError(f"{name} expects segmap as a torch.Tensor of shape (N, {label_nc}, h, w), got {segmap!r}")
    if not segmap.is_floating_point():
        raise TypeError(f"{name} expects a floating-point segmap (one-hot labels), got dtype {segmap.dtype}")
    if segmap.dim() != 4 or segmap.shape[0] != n or segmap.shape[1] != label_nc:
        raise ValueError(
            f"{name} expects a segmap of shape ({n}, {label_nc}, h, w) for input shape {shape_str(x.shape)}, "
            f"got shape {shape_str(segmap.shape)}"
        )
    xf = upcast(x)
    if param_free == "instance":
        mean = xf.mean((2, 3), keepdim=True)
        var = (xf - mean).square().mean((2, 3), keepdim=True)
        xhat = (xf - mean) * torch.rsqrt(var + eps)
    else:
        mean, var = _batch.batch_or_running_stats(
            name, xf, running_mean, running_var, training, momentum, sync, process_group, _batch.NEED_NHW
        )
        xhat = _batch.standardize(xf, mean, var, eps)
    m = _resize_nearest(segmap.to(xf.dtype), (x.shape[2], x.shape[3]))
    actv = torch.relu(_conv(m, shared_weight, shared_bias))
    gamma = _conv(actv, gamma_weight, gamma_bias)
    beta = _conv(actv, beta_weight, beta_bias)
    return (xhat * (1 + gamma) + beta).to(x.dtype)


# ------------------------------------------------------------------------------------- Region Normalization


def _region_mask(name: str, x: Tensor, mask: object) -> Tensor:
    """The mask as a bool tensor of shape (N, 1, H, W): floating masks are thresholded at 0.5, bool and integer
    masks test != 0; a mask of another spatial size is resized by nearest interpolation first."""
    n, _, h, w = x.shape
    expected = f"({n}, 1, h, w) or ({n}, h, w)"
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} expects mask as a torch.Tensor of shape {expected}, got {type(mask).__name__}")
    if mask.dim() == 3:
        mask = mask.unsqueeze(1)
    if mask.dim() != 4 or mask.shape[0] != n or mask.shape[1] != 1:
        raise ValueError(
            f"{name} expects a mask of shape {expected} for input shape {shape_str(x.shape)}, "
            f"got shape {shape_str(mask.shape)}"
        )
    binary = mask > 0.5 if mask.is_floating_point() else mask != 0
    if tuple(binary.shape[-2:]) != (h, w):
        binary = _resize_nearest(binary.to(torch.float32), (h, w)) > 0.5
    return binary


def _region_moments(xf: Tensor, m: Tensor, sync: bool, process_group: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Per region (row 0: mask 0, row 1: mask 1) and channel, the mean and biased variance of ``xf`` over the
    region's pixels of the whole batch (and of the process group with ``sync``), and the regions' pixel
    counts (2,). An empty region gets mean 0, variance 0."""
    c = xf.shape[1]
    w1 = m.to(xf.dtype)
    weights = torch.stack([1 - w1, w1])  # (2, N, 1, H, W)
    xs = xf.unsqueeze(0)
    sums = (weights * xs).sum((1, 3, 4))  # (2, C)
    counts = weights.sum((1, 2, 3, 4))  # (2,)
    synced = sync and sync_active(process_group)
    if synced:
        totals = _batch.group_sum(torch.cat([sums.reshape(-1), counts]), process_group)
        sums, counts = totals[: 2 * c].reshape(2, c), totals[2 * c :]
    denom = counts.clamp_min(1).unsqueeze(1)
    mean = sums / denom
    sq = (weights * (xs - mean.view(2, 1, c, 1, 1)).square()).sum((1, 3, 4))
    if synced:
        sq = _batch.group_sum(sq, process_group)
    return mean, sq / denom, counts


def _region_update(
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor | None,
    mean: Tensor,
    var: Tensor,
    counts: Tensor,
    momentum: float | None,
) -> None:
    """Per region present in the batch (count > 0): lerp towards its mean and unbiased variance with
    ``momentum`` (or 1 / the number of batches the region was present in, for ``momentum=None``)."""
    with torch.no_grad():
        present = (counts > 0).to(mean.dtype)
        if num_batches_tracked is not None:
            num_batches_tracked.add_((counts > 0).to(num_batches_tracked.dtype))
        if momentum is None:
            if num_batches_tracked is None:
                raise ValueError("region_norm: momentum=None (cumulative average) needs num_batches_tracked")
            factor = present / num_batches_tracked.to(mean.dtype).clamp_min(1)
        else:
            factor = present * momentum
        unbiased = var.detach() * (counts / (counts - 1).clamp_min(1)).unsqueeze(1)
    _batch.lerp_running_stats(running_mean, running_var, mean, unbiased, factor.unsqueeze(1))


def _region_normalize(
    name: str,
    xf: Tensor,
    m: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    sync: bool,
    process_group: Any,
) -> Tensor:
    """Each region of ``m`` normalized with its own per-channel statistics (batch statistics in training or
    without running statistics; the running statistics of the region otherwise)."""
    c = xf.shape[1]
    if training or running_mean is None or running_var is None:
        mean, var, counts = _region_moments(xf, m, sync, process_group)
        if training and running_mean is not None and running_var is not None:
            _region_update(running_mean, running_var, num_batches_tracked, mean, var, counts, momentum)
    else:
        mean, var = running_mean.to(xf.dtype), running_var.to(xf.dtype)
    inv_std = torch.rsqrt(var + eps)
    mean_map = torch.where(m, mean[1].view(1, c, 1, 1), mean[0].view(1, c, 1, 1))
    inv_std_map = torch.where(m, inv_std[1].view(1, c, 1, 1), inv_std[0].view(1, c, 1, 1))
    return (xf - mean_map) * inv_std_map


def _check_region_args(
    name: str,
    x: Tensor,
    eps: float,
    momentum: float | Tensor | None,
    tensors: dict[str, Tensor | None],
) -> None:
    check_eps(eps)
    if momentum is not None:
        _batch.check_factor(momentum)
    c = x.shape[1]
    for arg, t in tensors.items():
        _check_vector(name, arg, t, (2, c))


def region_norm(
    x: Tensor,
    mask: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    num_batches_tracked: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Basic Region Normalization, RN-B (Yu et al., 2020, arXiv:1911.10375) of an ``(N, C, H, W)`` input with a
    binary ``mask`` of shape ``(N, 1, h, w)`` or ``(N, h, w)`` (resized to (H, W) by nearest interpolation):

    :math:`y = \frac{x - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}}\,\gamma_k + \beta_k` at the pixels of region
    :math:`k = M \in \{0, 1\}`, with :math:`\mu_k, \sigma_k^2` the per-channel mean and biased variance of x
    over region k's pixels of the whole batch (of the process group with ``sync``). ``weight`` and ``bias``
    have shape (2, C), row k for region k. Running statistics (2, C), if given, are lerped in place in
    training per region present in the batch (unbiased variance; ``momentum=None``: cumulative average over
    the batches the region was present in, counted in ``num_batches_tracked`` of shape (2,)) and used in
    evaluation. An empty region contributes nothing."""
    name = "region_norm"
    _batch.check_4d_input(name, x)
    _check_region_args(
        name,
        x,
        eps,
        momentum,
        {"weight": weight, "bias": bias, "running_mean": running_mean, "running_var": running_var},
    )
    m = _region_mask(name, x, mask)
    xf = upcast(x)
    y = _region_normalize(
        name, xf, m, running_mean, running_var, num_batches_tracked, training, momentum, eps, sync, process_group
    )
    c = x.shape[1]
    if weight is not None:
        w = weight.to(xf.dtype)
        y = y * torch.where(m, w[1].view(1, c, 1, 1), w[0].view(1, c, 1, 1))
    if bias is not None:
        b = bias.to(xf.dtype)
        y = y + torch.where(m, b[1].view(1, c, 1, 1), b[0].view(1, c, 1, 1))
    return y.to(x.dtype)


def region_norm_l(
    x: Tensor,
    sa_weight: Tensor,
    gamma_weight: Tensor,
    gamma_bias: Tensor | None,
    beta_weight: Tensor,
    beta_bias: Tensor | None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    num_batches_tracked: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    threshold: float = 0.8,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""Learnable Region Normalization, RN-L (Yu et al., 2020, arXiv:1911.10375) of an ``(N, C, H, W)`` input:

    :math:`S = \sigma(\mathrm{conv}_{sa}([\mathrm{mean}_c(x), \max_c(x)]))` (a (1, 2, k, k) kernel without
    bias), :math:`M = \mathbb{1}[\mathrm{sg}(S) \ge t]`, :math:`\hat x` = x region-normalized with M as in
    :func:`region_norm` (without its affine), and
    :math:`y = \hat x \odot (1 + \mathrm{conv}_\gamma(S)) + \mathrm{conv}_\beta(S)` with (1, 1, k, k)
    kernels and biases, shared by all channels. Convolutions are stride 1 with zero padding k // 2."""
    name = "region_norm_l"
    _batch.check_4d_input(name, x)
    _check_region_args(name, x, eps, momentum, {"running_mean": running_mean, "running_var": running_var})
    check_float("threshold", threshold)
    k = sa_weight.shape[-1]
    if k % 2 == 0:
        raise ValueError(f"{name}: kernels must have an odd size, got {shape_str(sa_weight.shape)}")
    _check_vector(name, "sa_weight", sa_weight, (1, 2, k, k))
    _check_vector(name, "gamma_weight", gamma_weight, (1, 1, k, k))
    _check_vector(name, "beta_weight", beta_weight, (1, 1, k, k))
    _check_vector(name, "gamma_bias", gamma_bias, (1,))
    _check_vector(name, "beta_bias", beta_bias, (1,))
    xf = upcast(x)
    pooled = torch.cat([xf.mean(1, keepdim=True), xf.amax(1, keepdim=True)], dim=1)
    s = torch.sigmoid(_conv(pooled, sa_weight, None))
    m = s.detach() >= threshold
    y = _region_normalize(
        name, xf, m, running_mean, running_var, num_batches_tracked, training, momentum, eps, sync, process_group
    )
    gamma = _conv(s, gamma_weight, gamma_bias)
    beta = _conv(s, beta_weight, beta_bias)
    return (y * (1 + gamma) + beta).to(x.dtype)
