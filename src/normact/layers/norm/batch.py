"""Batch normalization over the batch and spatial dims, with running statistics (Ioffe & Szegedy, 2015)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import upcast
from normact.distributed import sync_active
from normact.functional import _batch
from normact.layers import papers
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
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


class _BatchNorm(RunningStatsNorm):
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
        factory_kwargs = {"device": device, "dtype": dtype}
        self._init_batch_norm(
            num_features, eps, momentum, affine, track_running_stats, sync, process_group, factory_kwargs
        )
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, self._ranks, self._layout)
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
        xf = upcast(x)
        mean, var, count = _batch.channel_moments(xf, True, self.process_group)
        if update:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.to(mean)
                self._lerp_running_stats(mean, var * count / (count - 1).clamp_min(1), factor)
        y = _batch.standardize(xf, mean, var, self.eps)
        return _batch.cast_affine(y, self.weight, self.bias, _batch.channel_view(xf)).to(x.dtype)

    def _update_cumulative(self, x: Tensor) -> None:
        xf = upcast(x)
        dims = _batch.reduce_dims(xf)
        mean = xf.mean(dims)
        factor = 1.0 / self.num_batches_tracked.to(mean.dtype)
        self._lerp_running_stats(mean, xf.var(dims, correction=1), factor.to(self.running_mean.dtype))

    def _lerp_running_stats(self, mean: Tensor, unbiased: Tensor, factor: float | Tensor) -> None:
        """running_mean and running_var lerped in place, in their dtype and without gradient, towards the batch
        mean and unbiased variance."""
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)

    def extra_repr(self) -> str:
        return _channel.batch_norm_repr(self)


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


# The registry entry BatchNorm1d and BatchNorm2d share (each adds its torch twin and its aliases).
_BN_ENTRY: dict[str, Any] = {
    "kind": "norm",
    "paper": papers.BATCH_NORM,
    "formula": _BN_FORMULA,
    "functional": NF.batch_norm,
    "params": _BN_PARAMS,
    "batch_dependent": True,
    "stateful": True,
}


@register("batchnorm1d", verified_against=("torch.nn.BatchNorm1d",), aliases=("bn1d",), **_BN_ENTRY)
class BatchNorm1d(_BatchNorm):
    __doc__ = _BN_DOC.format(layout="(N, C) or (N, C, L)", spatial=" (and L)", torch_name="BatchNorm1d")
    _ranks = (2, 3)
    _layout = "(N, {C}) or (N, {C}, L)"


@register("batchnorm2d", verified_against=("torch.nn.BatchNorm2d",), aliases=("bn2d", "batchnorm"), **_BN_ENTRY)
class BatchNorm2d(_BatchNorm):
    __doc__ = _BN_DOC.format(layout="(N, C, H, W)", spatial=" and H, W", torch_name="BatchNorm2d")
    _ranks = (4,)
    _layout = "(N, {C}, H, W)"
