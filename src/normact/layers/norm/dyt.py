"""Dynamic Tanh (DyT): an elementwise, statistics-free replacement for LayerNorm (Zhu et al., 2025)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import (
    check_channel_input,
    check_float,
    check_tensor,
    check_trailing,
    normalize_shape,
)
from normact.layers import papers
from normact.layers.norm._channel import reset_channel_affine
from normact.layers.norm._features import add_elementwise_affine
from normact.registry import Param, register

__all__ = ["DyT"]


@register(
    "dyt",
    kind="norm",
    paper=papers.DYT,
    formula="y = weight * tanh(alpha * x) + bias (elementwise; alpha a learnable scalar)",
    functional=NF.dyt,
    params=(
        Param("alpha", "(1,)", "alpha_init = 0.5"),
        Param("weight", "(C,)", "1"),
        Param("bias", "(C,)", "0"),
    ),
    aliases=("dynamic_tanh",),
)
class DyT(nn.Module):
    r"""Dynamic Tanh (Zhu, Chen, He, LeCun & Liu, "Transformers without Normalization", 2025, arXiv:2503.10622).

    .. math::
        y = \gamma \odot \tanh(\alpha x) + \beta

    ``alpha`` is one learnable scalar (init ``alpha_init`` = 0.5; the paper uses larger values for LLMs,
    e.g. 0.8 / 0.2 for LLaMA-7B attention / FFN), :math:`\gamma` = 1 and :math:`\beta` = 0 per channel.
    No statistics are computed: it is a drop-in replacement for LayerNorm with the same state-dict keys
    ``weight`` and ``bias`` (and ``alpha``, as the official ``DynamicTanh``).

    Args:
        normalized_shape: the channel count C (an int, or a 1-tuple as LayerNorm's ``normalized_shape``).
        alpha_init: initial value of ``alpha``. Default: 0.5.
        elementwise_affine: learn ``weight`` and ``bias``. Default: True.
        bias: learn ``bias`` (with ``elementwise_affine``). Default: True.
        channels_last: channels on the last dim ``(*, C)``; ``False`` for ``(N, C, *)``. Default: True.

    Shape:
        Input ``(*, C)`` (``channels_last``) or ``(N, C, *)``; output the same shape.
    """

    __constants__ = ["normalized_shape", "channels_last", "elementwise_affine"]

    def __init__(
        self,
        normalized_shape: int | tuple[int],
        alpha_init: float = 0.5,
        elementwise_affine: bool = True,
        bias: bool = True,
        channels_last: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        shape = normalize_shape(normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"DyT scales one channel dim: normalized_shape must be an int or a 1-tuple, got {shape}")
        self.normalized_shape = shape[0]
        self.alpha_init = check_float("alpha_init", alpha_init)
        self.elementwise_affine = bool(elementwise_affine)
        self.channels_last = bool(channels_last)
        self.alpha = nn.Parameter(torch.empty(1, **factory_kwargs))
        add_elementwise_affine(self, self.normalized_shape, self.elementwise_affine, bias, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """alpha = alpha_init, weight = 1, bias = 0."""
        nn.init.constant_(self.alpha, self.alpha_init)
        reset_channel_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        if self.channels_last:
            check_tensor(x, "DyT")
            check_trailing(x, (self.normalized_shape,), "DyT")
        else:
            check_channel_input(x, "DyT", self.normalized_shape)
        return NF.dyt(x, self.alpha, self.weight, self.bias, self.channels_last)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, alpha_init={self.alpha_init}, "
            f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}, "
            f"channels_last={self.channels_last}"
        )
