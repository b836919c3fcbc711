"""The base of the norms that keep running statistics next to a per-channel affine, by default torch's BatchNorm
ones (``running_mean``, ``running_var``, ``num_batches_tracked``): their construction, their resets and the
running-average factor of a training step."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from normact._checks import check_int
from normact.layers.norm import _channel

__all__: list[str] = []


class RunningStatsNorm(nn.Module):
    """``reset_parameters`` = ``reset_running_stats`` and ``weight`` = 1, ``bias`` = 0. The default
    ``reset_running_stats`` and ``_update_factor`` are those of BatchNorm's running statistics (registered by
    ``_init_batch_norm`` or :func:`normact.layers.norm._channel.add_running_stats`); layers with other or more
    state override or extend ``reset_running_stats``."""

    def _init_batch_norm(
        self,
        num_features: int,
        eps: float,
        momentum: float | None,
        affine: bool,
        track_running_stats: bool,
        sync: bool,
        process_group: Any,
        factory_kwargs: dict[str, Any],
    ) -> None:
        """BatchNorm's construction: its options, ``weight``/``bias`` of shape (C,) with ``affine`` and the
        running statistics with ``track_running_stats`` (initialized by ``reset_parameters``)."""
        self.num_features = check_int("num_features", num_features)
        _channel.set_batch_options(
            self, eps, momentum, sync, process_group, affine=affine, track_running_stats=track_running_stats
        )
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        _channel.add_running_stats(self, self.num_features, self.track_running_stats, factory_kwargs, count=True)

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0 (when tracked)."""
        _channel.reset_running_stats(self)

    def reset_parameters(self) -> None:
        """Running statistics reset; weight = 1, bias = 0."""
        self.reset_running_stats()
        _channel.reset_channel_affine(self)

    def _update_factor(self) -> float | Tensor:
        """The running-average factor of this forward: in training with running statistics, the batch is
        counted and the factor is ``momentum`` (1/num_batches_tracked for ``momentum=None``, see
        :func:`normact.layers.norm._channel.momentum_factor`); otherwise 0.0 (no update)."""
        if self.training and self.running_mean is not None:
            return _channel.momentum_factor(self)
        return 0.0
