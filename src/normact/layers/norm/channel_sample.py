"""Per-sample norms of channels-first maps: LayerNorm over the channels at each position (timm's LayerNorm2d)
and GroupNorm with a single group (timm's GroupNorm1), both on ``(N, C, ...)`` without permuting outside."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import (
    check_channel_input,
    check_eps,
    check_int,
)
from normact.layers import papers
from normact.layers.norm._channel import add_channel_affine, reset_channel_affine
from normact.registry import Param, register

__all__ = ["GroupNorm1", "LayerNorm2d"]

_AFFINE = (Param("weight", "(C,)", "1 (affine=True only)"), Param("bias", "(C,)", "0 (affine=True only)"))


class _ChannelSampleNorm(nn.Module):
    """Shared construction of the per-sample norms that take the channel count first (LayerNorm2d, GroupNorm1,
    and GroupNorm in group.py): ``num_channels``, ``eps``, ``affine`` (per-channel weight and bias)."""

    __constants__ = ["num_channels", "eps", "affine"]

    def __init__(
        self,
        num_channels: int,
        eps: float,
        affine: bool,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_channels = check_int("num_channels", num_channels)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        add_channel_affine(self, self.num_channels, self.affine, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0."""
        reset_channel_affine(self)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}, affine={self.affine}"


@register(
    "layernorm2d",
    kind="norm",
    verified_against=("timm.layers.norm.LayerNorm2d",),
    paper=papers.LAYER_NORM,
    formula="y = (x - E_c[x]) / sqrt(Var_c[x] + eps) * weight + bias; E_c, Var_c over the C channels at each "
    "sample and spatial position of (N, C, H, W)",
    functional=NF.layer_norm2d,
    params=_AFFINE,
)
class LayerNorm2d(_ChannelSampleNorm):
    r"""Layer normalization (Ba, Kiros & Hinton, 2016, arXiv:1607.06450) over the channels of ``(N, C, H, W)`` maps.

    .. math::
        y_{nchw} = \frac{x_{nchw} - \mathrm{E}_c[x_{n\cdot hw}]}{\sqrt{\mathrm{Var}_c[x_{n\cdot hw}] + \epsilon}}
        \gamma_c + \beta_c

    mean and biased variance over the C channels at each sample and position, i.e. ``torch.nn.LayerNorm(C)``
    applied to the channels-last view of a channels-first map (the norm of ConvNeXt's downsampling layers,
    Liu et al., 2022, arXiv:2201.03545). Same arguments, defaults (``eps`` = 1e-6) and state-dict keys as
    timm's ``LayerNorm2d``; float16/bfloat16 inputs are normalized in float32.

    Args:
        num_channels: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-6 (timm's; torch's LayerNorm uses 1e-5).
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: True.

    Shape:
        Input ``(N, C, H, W)``; output the same shape.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-6,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_channels, eps, affine, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, "LayerNorm2d", self.num_channels, ranks=(4,), layout="(N, {C}, H, W)")
        return NF.layer_norm2d(x, self.weight, self.bias, self.eps)


@register(
    "groupnorm1",
    kind="norm",
    verified_against=("timm.layers.norm.GroupNorm1",),
    paper=papers.GROUP_NORM,
    formula="y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias; E, Var per sample over all of (C, *spatial)",
    functional=NF.group_norm1,
    params=_AFFINE,
)
class GroupNorm1(_ChannelSampleNorm):
    r"""Group normalization (Wu & He, 2018, arXiv:1803.08494) with a single group, on ``(N, C, *)`` input.

    .. math::
        y_{nc\ldots} = \frac{x_{nc\ldots} - \mathrm{E}_{c\ldots}[x_n]}{\sqrt{\mathrm{Var}_{c\ldots}[x_n] + \epsilon}}
        \gamma_c + \beta_c

    mean and biased variance per sample over all channels and positions (LayerNorm over ``(C, *)``) but with
    a **per-channel** affine, as ``torch.nn.GroupNorm(1, C)``; the norm of PoolFormer/MetaFormer (Yu et
    al., 2021, arXiv:2111.11418). Same arguments, defaults and state-dict keys as timm's ``GroupNorm1``;
    float16/bfloat16 inputs are normalized in float32.

    Args:
        num_channels: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-5.
        affine: learn per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: True.

    Shape:
        Input ``(N, C, *)`` with more than one value per sample; output the same shape.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_channels, eps, affine, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, "GroupNorm1", self.num_channels)
        return NF.group_norm1(x, self.weight, self.bias, self.eps)
