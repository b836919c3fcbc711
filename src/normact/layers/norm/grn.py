"""Global Response Normalization (Woo et al., ConvNeXt V2, 2023): each channel's spatial L2 norm, divided by
its mean over the channels, rescales the channel; a residual keeps the layer the identity at init."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_channel_input
from normact.layers.norm._channel import add_channel_affine, options_repr
from normact.layers.norm._features import FeatureNorm
from normact.registry import Paper, Param, register

__all__ = ["GlobalResponseNorm"]

CONVNEXT_V2 = Paper(
    "ConvNeXt V2: Co-designing and Scaling ConvNets with Masked Autoencoders",
    2023,
    "2301.00808",
    "Woo, Debnath, Hu, Chen, Liu, Kweon, Xie",
)


@register(
    "grn",
    kind="norm",
    verified_against=("timm.layers.grn.GlobalResponseNorm",),
    paper=CONVNEXT_V2,
    formula="Gx = ||x||_2 over (H, W) per sample and channel; Nx = Gx / (mean over channels of Gx + eps); "
    "y = weight * (x * Nx) + bias + x",
    functional=NF.global_response_norm,
    params=(Param("weight", "(C,)", "0"), Param("bias", "(C,)", "0")),
    aliases=("global_response_norm",),
)
class GlobalResponseNorm(FeatureNorm):
    r"""Global Response Normalization (Woo, Debnath, Hu, Chen, Liu, Kweon & Xie, 2023, arXiv:2301.00808).

    .. math::
        G_{nc} = \Big(\sum_{h,w} x_{nchw}^2\Big)^{1/2}, \qquad
        N_{nc} = \frac{G_{nc}}{\frac{1}{C}\sum_{c'} G_{nc'} + \epsilon}, \qquad
        y = \gamma \odot (x \odot N) + \beta + x

    per sample: each channel's L2 norm over the spatial positions, divided by the mean of those norms over
    the channels, rescales the channel (feature competition); the residual ``+ x`` and the zero
    initialization of :math:`\gamma` and :math:`\beta` make the layer the identity at initialization, as in
    the paper and timm. Parameter names and shapes are timm's ``GlobalResponseNorm`` (``weight``, ``bias``
    of shape ``(C,)``; the official ConvNeXt-V2 code names them ``gamma``, ``beta`` with shape
    ``(1, 1, 1, C)``); ``eps`` = 1e-6 is added outside the mean, as in both.

    Difference from timm: **channels-first by default** (``channels_last=False``, input ``(N, C, H, W)``),
    like every normact channel norm, so that ``create("grn", C)`` applies to a conv feature map; timm
    defaults to ``channels_last=True`` (``(N, H, W, C)``, as inside ConvNeXt-V2's MLP). Pass
    ``channels_last=True`` for that layout. float16/bfloat16 norms are taken in float32.

    Args:
        num_features: the channel count C (timm's ``dim``).
        eps: added to the mean of the channel norms. Default: 1e-6.
        channels_last: input ``(N, H, W, C)`` instead of ``(N, C, H, W)``. Default: False.

    Shape:
        Input ``(N, C, H, W)`` (or ``(N, H, W, C)`` with ``channels_last``); output the same shape.
    """

    __constants__ = ["num_features", "eps", "channels_last"]

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-6,
        channels_last: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.channels_last = bool(channels_last)
        add_channel_affine(self, self.num_features, True, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 0, bias = 0 (the identity map)."""
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(
            x,
            type(self).__name__,
            self.num_features,
            ranks=(4,),
            axis=-1 if self.channels_last else 1,
            layout="(N, H, W, {C})" if self.channels_last else "(N, {C}, H, W)",
        )
        return NF.global_response_norm(x, self.weight, self.bias, self.eps, self.channels_last)

    def extra_repr(self) -> str:
        return options_repr(self, "eps", "channels_last")
