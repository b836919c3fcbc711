"""L1 normalization: the mean absolute deviation in place of the standard deviation, in layer form
(per sample over the last dims) and batch form (per channel over the batch, running statistics, sync)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_float, check_momentum
from normact.layers.norm import _channel
from normact.layers.norm._features import FeatureNorm
from normact.layers.norm.layer import _AFFINE_PARAMS, _LastDimNorm
from normact.registry import Paper, Param, register

__all__ = ["L1BatchNorm", "L1LayerNorm"]

SUB8BIT_TRAINING = Paper(
    "Towards Accurate and Efficient Sub-8-Bit Integer Training",
    2024,
    "2411.10948",
    "Guo, Liu, Xie, Li, Meng, Ning, Zeng, Lei, Fang, Wang",
)

_PROVENANCE = r"""
    Provenance. Guo et al. (2024, arXiv:2411.10948) make normalization layers fully quantized by replacing
    the L2 statistic with the L1 one; their exact constant and eps placement could not be read here (their
    text was not available offline), so this layer follows the established definition of L1 batch
    normalization by Wu et al. (2018, arXiv:1802.09769) and Hoffer et al. (2018, arXiv:1803.01814):
    :math:`s = \sqrt{\pi/2}` turns the mean absolute deviation into an estimate of the standard deviation
    (for Gaussian data :math:`\mathrm{E}|x-\mu| = \sigma\sqrt{2/\pi}`), so the layer approximates its L2
    counterpart; ``scale=1`` gives the plain mean-absolute-deviation form. ``eps`` is added to the deviation
    (outside any root, there is none). Integer arithmetic is out of scope: this is the floating-point layer.
"""


@register(
    "l1_layernorm",
    kind="norm",
    paper=SUB8BIT_TRAINING,
    formula=(
        "y = (x - mean(x)) / (scale * mean|x - mean(x)| + eps) * weight + bias, over the last dims; "
        "scale = sqrt(pi/2) (L2-equivalent for Gaussian data)"
    ),
    functional=NF.l1_layer_norm,
    params=_AFFINE_PARAMS,
)
class L1LayerNorm(_LastDimNorm):
    __doc__ = (
        r"""L1 layer normalization (Guo et al., 2024, arXiv:2411.10948; the L1 statistic of Wu et al., 2018).

    .. math::
        y = \frac{x - \mu}{s \cdot \frac{1}{d}\sum_i |x_i - \mu| + \epsilon} \odot \gamma + \beta,
        \qquad s = \sqrt{\pi/2}

    :math:`\mu` and the mean absolute deviation over the last ``len(normalized_shape)`` dims, per sample.
    Invariant to shifts and positive scalings of each sample (up to eps); for Gaussian rows it approaches
    LayerNorm. float16/bfloat16 inputs are normalized in float32.
    """
        + _PROVENANCE
        + r"""
    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the scaled deviation. Default: 1e-5.
        elementwise_affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        bias: learn the ``bias`` too (with ``elementwise_affine``). Default: True.
        scale: the constant s > 0. Default: sqrt(pi/2).

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """
    )

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        scale: float = NF.L2_EQUIVALENT_SCALE,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.scale = check_float("scale", scale, positive=True)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return NF.l1_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, self.scale)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scale={self.scale:.6g}"


@register(
    "l1_batchnorm",
    kind="norm",
    paper=SUB8BIT_TRAINING,
    formula=(
        "training: y = (x - mu_B) / (scale * mean_B|x - mu_B| + eps) * weight + bias per channel over (N, *spatial), "
        "running_mean and running_dev (= scale * mean|x - mu|) lerped with momentum; eval: "
        "(x - running_mean) / (running_dev + eps) * weight + bias; scale = sqrt(pi/2)"
    ),
    functional=NF.l1_batch_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("running_mean", "(C,)", "0", buffer=True),
        Param("running_dev", "(C,)", "1", buffer=True),
        Param("num_batches_tracked", "()", "0", buffer=True),
    ),
    batch_dependent=True,
    stateful=True,
    aliases=("l1bn",),
)
class L1BatchNorm(FeatureNorm):
    __doc__ = (
        r"""L1 batch normalization (Guo et al., 2024, arXiv:2411.10948; Wu et al., 2018, arXiv:1802.09769) of
    (N, C), (N, C, L) or (N, C, H, W) inputs.

    .. math::
        y = \frac{x - \mu_B}{d_B + \epsilon} \odot \gamma + \beta, \qquad
        d_B = s \cdot \mathrm{mean}_B |x - \mu_B|, \quad s = \sqrt{\pi/2}

    In training, :math:`\mu_B` and the mean absolute deviation per channel over N and the spatial dims
    (over the whole process group with ``sync``); ``running_mean`` and ``running_dev`` are then updated as
    ``r = (1 - momentum) r + momentum * stat`` (``momentum=None``: cumulative average). In evaluation
    :math:`y = (x - \text{running\_mean}) / (\text{running\_dev} + \epsilon)\,\gamma + \beta`. No unbiased
    correction is applied to the deviation (there is no exact one for the mean absolute deviation);
    ``running_dev`` starts at 1 so that an untrained layer in eval is the identity, as BatchNorm's.
    The backward needs only signs and sums: :math:`\partial d_B/\partial x_i = s\,(\mathrm{sign}(x_i - \mu_B)
    - \mathrm{mean}_B\,\mathrm{sign}(x - \mu_B))/m`, the reason hardware papers prefer it.
    """
        + _PROVENANCE
        + r"""
    Args:
        num_features: the channel count C.
        eps: added to the deviation. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep running statistics; if False, batch statistics are used in eval too.
        scale: the constant s > 0. Default: sqrt(pi/2).
        sync: in training, combine the batch statistics over ``process_group`` when torch.distributed is
            initialized (see ``normact.distributed``). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C), (N, C, L) or (N, C, H, W); output the same shape. Training needs N * spatial > 1.
    """
    )

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        scale: float = NF.L2_EQUIVALENT_SCALE,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.momentum = check_momentum(momentum)
        self.track_running_stats = bool(track_running_stats)
        self.scale = check_float("scale", scale, positive=True)
        _channel.set_sync(self, sync, process_group)
        self._add_affine(affine, factory_kwargs)
        track = self.track_running_stats
        _channel.add_running_stats(self, self.num_features, track, factory_kwargs, count=True, var_name="running_dev")
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_dev = 1, num_batches_tracked = 0."""
        _channel.reset_running_stats(self, var_name="running_dev")

    def reset_parameters(self) -> None:
        """Running statistics reset; weight = 1, bias = 0."""
        self.reset_running_stats()
        _channel.reset_channel_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4), _channel.LAYOUT_1D_2D)
        momentum = _channel.momentum_factor(self) if self.training and self.track_running_stats else 0.0
        return NF.l1_batch_norm(
            x,
            self.running_mean,
            self.running_dev,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            momentum,
            self.eps,
            self.scale,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = _channel.options_repr(self, "eps", "momentum", "affine", "track_running_stats")
        return f"{options}, scale={self.scale:.6g}" + _channel.sync_repr(self)
