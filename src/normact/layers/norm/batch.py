"""Batch normalization over the batch and spatial dims, with running statistics (Ioffe & Szegedy, 2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import (
    check_channel_input,
    check_eps,
    check_int,
    check_momentum,
)
from normact.distributed import batch_moments, sync_active
from normact.layers import papers
from normact.layers.norm._channel import (
    add_channel_affine,
    add_running_stats,
    reset_channel_affine,
    reset_running_stats,
    sync_repr,
)
from normact.registry import Param, register

__all__ = ["BatchNorm1d", "BatchNorm2d"]

_BN_PARAMS = (
    Param("weight", "(C,)", "1"),
    Param("bias", "(C,)", "0"),
    Param("running_mean", "(C,)", "0", buffer=True),
    Param("running_var", "(C,)", "1", buffer=True),
    Param("num_batches_tracked", "()", "0", buffer=True),
)
_BN_FORMULA = (
    "y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias; E, Var over (N, *spatial) per channel in training "
    "(running averages updated with momentum, unbiased variance), running statistics in eval"
)


class _BatchNorm(nn.Module):
    """Shared body of BatchNorm1d/2d: torch.nn.BatchNorm semantics and state-dict keys."""

    __constants__ = ["num_features", "eps", "momentum", "affine", "track_running_stats"]
    _ranks: tuple[int, ...] = ()
    _layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.sync = bool(sync)
        self.process_group = process_group
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        add_running_stats(self, self.num_features, self.track_running_stats, factory_kwargs, count=True)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        reset_running_stats(self)

    def reset_parameters(self) -> None:
        """Running statistics reset; weight = 1, bias = 0."""
        reset_running_stats(self)
        reset_channel_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, type(self).__name__, self.num_features, ranks=self._ranks, layout=self._layout)
        update = self.training and self.track_running_stats
        if self.training and self.sync and sync_active(self.process_group):
            return self._synced_forward(x, update)
        if update:
            self.num_batches_tracked.add_(1)
        if update and self.momentum is None:
            # Cumulative average with a tensor factor 1/n: no host read of num_batches_tracked, so that
            # torch.compile(fullgraph=True) captures it (torch.nn.BatchNorm graph-breaks here).
            self._update_cumulative(x.detach())
        pass_stats = not self.training or (self.track_running_stats and self.momentum is not None)
        return NF.batch_norm(
            x,
            self.running_mean if pass_stats else None,
            self.running_var if pass_stats else None,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            0.0 if self.momentum is None else self.momentum,
            self.eps,
        )

    def _synced_forward(self, x: Tensor, update: bool) -> Tensor:
        """Training with batch moments over the whole process group (see normact.distributed)."""
        dims = (0, *range(2, x.dim()))
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean, var, count = batch_moments(xf, dims, sync=True, process_group=self.process_group)
        if update:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.to(mean)
                unbiased = var * count / (count - 1).clamp_min(1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean), factor)
                self.running_var.lerp_(unbiased.detach().to(self.running_var), factor)
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = (xf - mean.view(view)) * torch.rsqrt(var.view(view) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(view) + self.bias.view(view)
        return y.to(x.dtype)

    def _update_cumulative(self, x: Tensor) -> None:
        dims = (0, *range(2, x.dim()))
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mean = xf.mean(dims)
        var = xf.var(dims, correction=1)
        factor = 1.0 / self.num_batches_tracked.to(mean.dtype)
        with torch.no_grad():
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor.to(self.running_mean.dtype))
            self.running_var.lerp_(var.to(self.running_var.dtype), factor.to(self.running_var.dtype))

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}" + sync_repr(self)
        )


_BN_DOC = r"""Batch normalization (Ioffe & Szegedy, 2015, arXiv:1502.03167) of {layout} inputs.

    .. math::
        y = \frac{{x - \mathrm{{E}}[x]}}{{\sqrt{{\mathrm{{Var}}[x] + \epsilon}}}} \odot \gamma + \beta

    In training, mean and biased variance per channel over the batch{spatial}; the running averages
    are updated as ``r = (1 - momentum) r + momentum s`` with the unbiased variance (``momentum=None``:
    cumulative average). In evaluation the running statistics are used. Same semantics and state-dict keys
    as ``torch.nn.{torch_name}``; float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep running statistics; if False, batch statistics are used in eval too.
        sync: in training, combine the batch moments over ``process_group`` when torch.distributed is
            initialized (SyncBatchNorm semantics; see ``normact.distributed``). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input {layout}; output the same shape.
    """


@register(
    "batchnorm1d",
    kind="norm",
    verified_against=("torch.nn.BatchNorm1d",),
    paper=papers.BATCH_NORM,
    formula=_BN_FORMULA,
    functional=NF.batch_norm,
    params=_BN_PARAMS,
    batch_dependent=True,
    stateful=True,
    aliases=("bn1d",),
)
class BatchNorm1d(_BatchNorm):
    __doc__ = _BN_DOC.format(layout="(N, C) or (N, C, L)", spatial=" (and L)", torch_name="BatchNorm1d")
    _ranks = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


@register(
    "batchnorm2d",
    kind="norm",
    verified_against=("torch.nn.BatchNorm2d",),
    paper=papers.BATCH_NORM,
    formula=_BN_FORMULA,
    functional=NF.batch_norm,
    params=_BN_PARAMS,
    batch_dependent=True,
    stateful=True,
    aliases=("bn2d", "batchnorm"),
)
class BatchNorm2d(_BatchNorm):
    __doc__ = _BN_DOC.format(layout="(N, C, H, W)", spatial=" and H, W", torch_name="BatchNorm2d")
    _ranks = (4,)
    _layout = "(N, {C}, H, W)"
