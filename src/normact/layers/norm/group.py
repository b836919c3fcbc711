"""Group and instance normalization: per-sample statistics over channel groups and spatial dims."""

from __future__ import annotations

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_channel_input, check_int
from normact.functional._norm_stats import require_momentum
from normact.layers import papers
from normact.layers.norm._channel import (
    add_running_stats,
    options_repr,
    reset_channel_affine,
    reset_running_stats,
)
from normact.layers.norm._features import FeatureNorm
from normact.layers.norm.channel_sample import _ChannelSampleNorm
from normact.registry import Param, register

__all__ = ["GroupNorm", "InstanceNorm2d"]


@register(
    "groupnorm",
    kind="norm",
    verified_against=("torch.nn.GroupNorm",),
    paper=papers.GROUP_NORM,
    formula="y = (x - E_g[x]) / sqrt(Var_g[x] + eps) * weight + bias; E_g, Var_g per sample over the "
    "C/G channels of a group and the spatial dims",
    functional=NF.group_norm,
    params=(Param("weight", "(C,)", "1"), Param("bias", "(C,)", "0")),
    aliases=("gn",),
)
class GroupNorm(_ChannelSampleNorm):
    r"""Group normalization (Wu & He, 2018, arXiv:1803.08494).

    .. math::
        y = \frac{x - \mathrm{E}_g[x]}{\sqrt{\mathrm{Var}_g[x] + \epsilon}} \odot \gamma + \beta

    The C channels are split into ``num_groups`` groups of C/G consecutive channels; mean and biased
    variance are taken per sample over a group's channels and all spatial positions. Unlike
    ``torch.nn.GroupNorm(num_groups, num_channels)`` the **channel count comes first** (timm's convention,
    so that every norm is built as ``create(name, C)``); parameters and state-dict keys are torch's.

    Args:
        num_channels: the channel count C.
        num_groups: number of groups G, dividing C. Default: 32.
        eps: added to the variance inside the square root. Default: 1e-5.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: True.

    Shape:
        Input ``(N, C, *)``; output the same shape.
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine"]

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        channels = check_int("num_channels", num_channels)  # the groups are checked against it before eps
        groups = check_int("num_groups", num_groups)
        if channels % groups:
            raise ValueError(f"num_channels={channels} must be divisible by num_groups={groups}")
        super().__init__(channels, eps, affine, device, dtype)
        self.num_groups = groups

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, "GroupNorm", self.num_channels)
        return NF.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, num_groups={self.num_groups}, eps={self.eps}, affine={self.affine}"


@register(
    "instancenorm2d",
    kind="norm",
    verified_against=("torch.nn.InstanceNorm2d",),
    paper=papers.INSTANCE_NORM,
    formula="y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias; E, Var per sample and channel over (H, W)",
    functional=NF.instance_norm,
    params=(
        Param("weight", "(C,)", "1 (affine=True only)"),
        Param("bias", "(C,)", "0 (affine=True only)"),
        Param("running_mean", "(C,)", "0 (track_running_stats=True only)", buffer=True),
        Param("running_var", "(C,)", "1 (track_running_stats=True only)", buffer=True),
    ),
    aliases=("in2d",),
)
class InstanceNorm2d(FeatureNorm):
    r"""Instance normalization (Ulyanov, Vedaldi & Lempitsky, 2016, arXiv:1607.08022) of ``(N, C, H, W)`` input.

    .. math::
        y = \frac{x - \mathrm{E}_{hw}[x]}{\sqrt{\mathrm{Var}_{hw}[x] + \epsilon}} \odot \gamma + \beta

    mean and biased variance per sample and channel over H and W. Same semantics, defaults and
    state-dict keys as ``torch.nn.InstanceNorm2d`` (no affine and no running statistics by default).

    Also registered as ``ibn_b`` (with ``affine=True``): the instance normalization that IBN-b (Pan, Luo,
    Shi & Tang, 2018, arXiv:1807.09441) adds after the residual addition of a block; the channel split of
    IBN-a is ``ibn`` (:class:`normact.IBN`).

    Args:
        num_features: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor when ``track_running_stats``. Default: 0.1.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: False.
        track_running_stats: keep running statistics and use them in eval. Default: False.

    Shape:
        Input ``(N, C, H, W)``; output the same shape.
    """

    __constants__ = ["num_features", "eps", "momentum", "affine", "track_running_stats"]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = False,
        track_running_stats: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.momentum = require_momentum("InstanceNorm2d", momentum)
        self.track_running_stats = bool(track_running_stats)
        self._add_affine(affine, factory_kwargs)
        add_running_stats(self, self.num_features, self.track_running_stats, factory_kwargs, count=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0; running_mean = 0, running_var = 1."""
        reset_running_stats(self)
        reset_channel_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, "InstanceNorm2d", self.num_features, ranks=(4,), layout="(N, {C}, H, W)")
        return NF.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        return options_repr(self, "eps", "momentum", "affine", "track_running_stats")
