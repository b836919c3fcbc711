"""Batch-dependent variants of batch normalization: Batch Renormalization (Ioffe, 2017), IBN (Pan et al., 2018)
and Batch-Channel Normalization (Qiao et al., 2019). Each takes ``sync=`` / ``process_group=`` for data
parallelism (batch moments through :func:`normact.distributed.batch_moments`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.layers.norm.group import InstanceNorm2d
from normact.registry import Paper, Param, register

__all__ = ["IBN", "BatchChannelNorm", "BatchRenorm"]  # (ibn_b registers InstanceNorm2d, below)

BATCH_RENORM = Paper(
    "Batch Renormalization: Towards Reducing Minibatch Dependence in Batch-Normalized Models",
    2017,
    "1702.03275",
    "Ioffe",
)
IBN_NET = Paper(
    "Two at Once: Enhancing Learning and Generalization Capacities via IBN-Net",
    2018,
    "1807.09441",
    "Pan, Luo, Shi, Tang",
)
BATCH_CHANNEL_NORM = Paper(
    "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
    2019,
    "1903.10520",
    "Qiao, Wang, Liu, Shen, Yuille",
)

# ------------------------------------------------------------------------------------ Batch Renormalization


@register(
    "batchrenorm",
    kind="norm",
    verified_against=("torch.nn.BatchNorm2d",),
    paper=BATCH_RENORM,
    formula=(
        "training: y = ((x - mu_B) / sigma_B * r + d) * weight + bias, sigma_B = sqrt(Var_B[x] + eps), "
        "sigma = sqrt(running_var + eps), r = clip(sg(sigma_B / sigma), 1/r_max, r_max), "
        "d = clip(sg((mu_B - running_mean) / sigma), -d_max, d_max), running statistics then updated with "
        "momentum (unbiased variance); eval: (x - running_mean) / sigma * weight + bias"
    ),
    functional=NF.batch_renorm,
    params=(
        *_channel.AFFINE_PARAMS,
        *_channel.BN_BUFFERS,
    ),
    batch_dependent=True,
    stateful=True,
)
class BatchRenorm(RunningStatsNorm):
    r"""Batch Renormalization (Ioffe, 2017, arXiv:1702.03275) of (N, C), (N, C, L) or (N, C, H, W) inputs.

    .. math::
        y = \left(\frac{x - \mu_B}{\sigma_B}\, r + d\right) \odot \gamma + \beta, \quad
        r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\!\left(\mathrm{sg}\frac{\sigma_B}{\sigma}\right), \quad
        d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\!\left(\mathrm{sg}\frac{\mu_B - \mu}{\sigma}\right)

    In training, :math:`\mu_B` and :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` are the per-channel
    batch mean and (biased) standard deviation over N and the spatial dims (over the whole process group with
    ``sync``); ``sg`` stops the gradient, so r and d are constants in backpropagation (Algorithm 1 of the
    paper). ``r`` and ``d`` use the running statistics before this batch's update; then
    ``running_mean <- lerp(running_mean, mu_B, momentum)`` and
    ``running_var <- lerp(running_var, n/(n-1) Var_B[x], momentum)``. In evaluation the layer is BatchNorm with
    the running statistics: :math:`y = (x - \mu)/\sigma \odot \gamma + \beta`.

    With ``r_max=1, d_max=0`` the layer is BatchNorm in training. The paper starts training with exactly
    that and relaxes the bounds gradually (r_max to 3 and d_max to 5 over the first part of training); this
    layer takes the final values as defaults and keeps them as plain attributes, ``layer.r_max`` and
    ``layer.d_max``, for the user to schedule.

    Deliberate differences from the paper: the paper keeps a moving average of the standard deviation
    :math:`\sigma`; this layer keeps torch's buffers (``running_mean``, ``running_var`` with the unbiased
    batch variance, ``num_batches_tracked``) so that a BatchNorm state dict loads into it, and uses
    :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}` (the paper's :math:`\sigma_B` holds
    :math:`\epsilon` inside the root likewise). Initial values: running_mean 0, running_var 1 (the paper's
    :math:`\mu = 0, \sigma = 1`). There is no ``track_running_stats`` switch: r and d need the running
    statistics. float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        eps: added to the variances inside the square roots. Default: 1e-5.
        momentum: running-average factor in [0, 1] (the paper's alpha), or None for a cumulative average.
            Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        r_max: bound of r, >= 1. Default: 3.0.
        d_max: bound of d, >= 0. Default: 5.0.
        sync: in training, combine the batch moments over ``process_group`` when torch.distributed is
            initialized (see ``normact.distributed``). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C), (N, C, L) or (N, C, H, W); output the same shape. Training needs N * spatial > 1.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        r_max: float = 3.0,
        d_max: float = 5.0,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        _channel.set_batch_options(self, eps, momentum, sync, process_group, affine=affine)
        self.r_max = check_float("r_max", r_max, low=1.0)
        self.d_max = check_float("d_max", d_max, nonnegative=True)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        _channel.add_running_stats(self, self.num_features, True, factory_kwargs, count=True)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4), _channel.LAYOUT_1D_2D)
        momentum = self._update_factor()
        return NF.batch_renorm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            self.r_max,
            self.d_max,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "eps", "momentum", "affine", "r_max", "d_max") + _channel.sync_repr(self)


# ------------------------------------------------------------------------------------------------------ IBN


@register(
    "ibn",
    kind="norm",
    verified_against=("torch.nn.InstanceNorm2d", "torch.nn.BatchNorm2d"),
    paper=IBN_NET,
    formula=(
        "y = cat(InstanceNorm(x[:, :h]) * in_weight + in_bias, BatchNorm(x[:, h:]) * bn_weight + bn_bias) "
        "along C, h = floor(ratio * C); IN per sample and channel over (H, W), BN over (N, H, W) in "
        "training (running statistics updated with momentum, unbiased variance) and running statistics in eval"
    ),
    functional=NF.ibn,
    params=(
        Param("in_weight", "(h,)", "1 (affine=True, h > 0 only)"),
        Param("in_bias", "(h,)", "0 (affine=True, h > 0 only)"),
        Param("bn_weight", "(C - h,)", "1 (affine=True, h < C only)"),
        Param("bn_bias", "(C - h,)", "0 (affine=True, h < C only)"),
        Param("running_mean", "(C - h,)", "0 (track_running_stats=True, h < C only)", buffer=True),
        Param("running_var", "(C - h,)", "1 (track_running_stats=True, h < C only)", buffer=True),
        Param("num_batches_tracked", "()", "0 (track_running_stats=True, h < C only)", buffer=True),
    ),
    batch_dependent=True,
    stateful=True,
)
class IBN(RunningStatsNorm):
    r"""IBN, Instance-Batch Normalization (Pan, Luo, Shi & Tang, 2018, arXiv:1807.09441) of (N, C, H, W) inputs.

    .. math::
        y = \mathrm{concat}_C\big(\mathrm{IN}(x_{[:h]}) \odot \gamma_I + \beta_I,\;
            \mathrm{BN}(x_{[h:]}) \odot \gamma_B + \beta_B\big), \qquad h = \lfloor \text{ratio} \cdot C \rfloor

    The first ``h = int(ratio * C)`` channels (as ``self.half = int(planes * ratio)`` in the official
    ``ibnnet/modules.py``) go through instance normalization with a learned affine (``InstanceNorm2d(h,
    affine=True)``: per sample and channel over (H, W), biased variance, no running statistics), the other
    ``C - h`` through ``BatchNorm2d(C - h)`` (batch statistics over (N, H, W) in training, running statistics
    updated with ``momentum`` and the unbiased variance, used in evaluation); the halves are concatenated.
    ``ratio=0`` is BatchNorm2d and ``ratio=1`` InstanceNorm2d(affine=True); an empty half owns no tensors.

    Deliberate differences from the official module: the parameters are flat (``in_weight``, ``in_bias``,
    ``bn_weight``, ``bn_bias`` and the BN half's running statistics) rather than ``IN.*`` / ``BN.*``
    submodules; an input with H * W = 1 is accepted (the IN half then outputs ``in_bias``, where
    torch.nn.InstanceNorm2d raises in training), so that the layer also runs on (N, C, 1, 1) feature vectors.
    float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        ratio: the fraction of channels instance-normalized, in [0, 1]. Default: 0.5.
        eps: added to both variances inside the square root. Default: 1e-5.
        momentum: running-average factor of the BN half in [0, 1], or None for a cumulative average.
            Default: 0.1.
        affine: learn the weights (init 1) and biases (init 0) of both halves. Default: True.
        track_running_stats: keep running statistics for the BN half; if False, batch statistics are used
            in eval too. Default: True.
        sync: in training, combine the BN half's batch moments over ``process_group`` when torch.distributed
            is initialized (the IN half is per sample). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, H, W); output the same shape. 4-D only: other ranks raise a ValueError.
    """

    def __init__(
        self,
        num_features: int,
        ratio: float = 0.5,
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
        self.num_features = check_int("num_features", num_features)
        self.ratio = check_float("ratio", ratio, low=0.0, high=1.0)
        self.half = int(self.num_features * self.ratio)
        _channel.set_batch_options(
            self, eps, momentum, sync, process_group, affine=affine, track_running_stats=track_running_stats
        )
        has_in, has_bn = self.half > 0, self.half < self.num_features
        rest = self.num_features - self.half
        _channel.add_channel_affine(self, self.half, self.affine and has_in, factory_kwargs, ("in_weight", "in_bias"))
        _channel.add_channel_affine(self, rest, self.affine and has_bn, factory_kwargs, ("bn_weight", "bn_bias"))
        _channel.add_running_stats(self, rest, self.track_running_stats and has_bn, factory_kwargs, count=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics (of the BN half) reset; weights = 1, biases = 0."""
        self.reset_running_stats()
        _channel.reset_channel_affine(self, ("in_weight", "bn_weight"), ("in_bias", "bn_bias"))

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        momentum = self._update_factor()
        return NF.ibn(
            x,
            self.half,
            self.in_weight,
            self.in_bias,
            self.running_mean,
            self.running_var,
            self.bn_weight,
            self.bn_bias,
            self.training,
            momentum,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = _channel.options_repr(self, "ratio", "eps", "momentum", "affine", "track_running_stats")
        return options + _channel.sync_repr(self)


# ------------------------------------------------------------------------------ Batch-Channel Normalization


@register(
    "bcn",
    kind="norm",
    paper=BATCH_CHANNEL_NORM,
    formula=(
        "training first: running_mean <- lerp(running_mean, E_B[x], momentum), running_var <- "
        "lerp(running_var, E_B[(x - old running_mean)^2], momentum) (no gradient); then always "
        "z = (x - running_mean) / sqrt(running_var + eps) * weight + bias and "
        "y = (z - E_g[z]) / sqrt(Var_g[z] + eps) * group_weight + group_bias per sample and group of C/G channels"
    ),
    functional=NF.batch_channel_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("group_weight", "(G,)", "1 (affine=True only)"),
        Param("group_bias", "(G,)", "0 (affine=True only)"),
        *_channel.BN_BUFFERS,
    ),
    batch_dependent=True,
    stateful=True,
)
class BatchChannelNorm(RunningStatsNorm):
    r"""Batch-Channel Normalization (Qiao, Wang, Liu, Shen & Yuille, 2019, arXiv:1903.10520) of (N, C), (N, C, L)
    or (N, C, H, W) inputs: batch normalization with estimated statistics, then a channel (group) normalization.

    .. math::
        z = \frac{x - \hat\mu}{\sqrt{\hat\sigma^2 + \epsilon}} \odot \gamma_b + \beta_b, \qquad
        y = \frac{z - \mathrm{E}_g[z]}{\sqrt{\mathrm{Var}_g[z] + \epsilon}} \odot \gamma_c + \beta_c

    The estimates :math:`\hat\mu` (``running_mean``) and :math:`\hat\sigma^2` (``running_var``) are used in
    training as well as in evaluation. In training they are first updated, without gradient, from the batch
    (over N and the spatial dims; over the whole process group with ``sync``):
    :math:`\hat\mu \leftarrow (1 - m)\hat\mu + m\,\mathrm{E}_B[x]` and
    :math:`\hat\sigma^2 \leftarrow (1 - m)\hat\sigma^2 + m\,\mathrm{E}_B[(x - \hat\mu_{old})^2]`, and the updated
    values normalize the batch. :math:`\mathrm{E}_g, \mathrm{Var}_g` are per sample over each of the
    ``num_groups`` groups of C/G consecutive channels and the spatial dims (biased variance), and
    :math:`\gamma_c, \beta_c` (``group_weight``, ``group_bias``) are per group, of shape (G,).

    This follows the official ``BCNorm(estimate=True)`` / ``EstBN`` of joe-siyuan-qiao/Batch-Channel-
    Normalization: the variance estimate is taken around the previous running mean with no Bessel
    correction, the update comes before the normalization, and the group affine is per group.
    Deliberate differences: the official moving speed is a buffer (``estbn_moving_speed``, initialized to 0
    and set by the training script); here it is the ``momentum`` hyperparameter (default 0.1). The official
    code fixes the batch-part eps to 1e-5 and takes the group-part eps as an argument; one ``eps`` serves both
    here (equal at the default). ``num_batches_tracked`` counts training batches (the official buffer is
    never incremented). The non-estimated form (``estimate=False``: a plain BatchNorm2d) is not offered; use
    ``batchnorm2d`` followed by ``groupnorm`` for it. ``num_groups=None`` takes ``gcd(C, 32)``. 2-D and 3-D
    inputs are accepted (the official module is written for 4-D). float16/bfloat16 inputs are normalized in
    float32.

    Args:
        num_features: the channel count C.
        num_groups: the group count G of the channel normalization, dividing C; None: gcd(C, 32).
        eps: added to both variances inside the square root. Default: 1e-5.
        momentum: the estimates' update rate in [0, 1] (the paper's r). Default: 0.1.
        affine: learn ``weight``, ``group_weight`` (init 1) and ``bias``, ``group_bias`` (init 0). Default: True.
        sync: in training, estimate from the batch moments of the whole ``process_group`` when
            torch.distributed is initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C), (N, C, L) or (N, C, H, W); output the same shape. Any N, including 1.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        groups = math.gcd(self.num_features, 32) if num_groups is None else check_int("num_groups", num_groups)
        if self.num_features % groups:
            raise ValueError(f"num_groups must divide num_features = {self.num_features}, got {groups}")
        self.num_groups = groups
        self.eps = check_eps(eps)
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0)  # a rate: no cumulative average
        self.affine = bool(affine)
        _channel.set_sync(self, sync, process_group)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        _channel.add_channel_affine(self, self.num_groups, self.affine, factory_kwargs, ("group_weight", "group_bias"))
        _channel.add_running_stats(self, self.num_features, True, factory_kwargs, count=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics reset; weights = 1, biases = 0."""
        self.reset_running_stats()
        _channel.reset_channel_affine(self, ("weight", "group_weight"), ("bias", "group_bias"))

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4), _channel.LAYOUT_1D_2D)
        if self.training:
            self.num_batches_tracked.add_(1)
        return NF.batch_channel_norm(
            x,
            self.num_groups,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.group_weight,
            self.group_bias,
            self.training,
            self.momentum,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "num_groups", "eps", "momentum", "affine") + _channel.sync_repr(self)


# IBN-b (Pan et al., 2018): an affine InstanceNorm2d after the residual addition of selected blocks (and after
# the stem's first conv); as a layer it is InstanceNorm2d(affine=True), registered under the paper's name.
register(
    "ibn_b",
    kind="norm",
    paper=IBN_NET,
    formula=(
        "IBN-b: y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias per sample and channel over (H, W), "
        "placed after the residual addition (InstanceNorm2d with affine=True)"
    ),
    functional=NF.instance_norm,
    params=(Param("weight", "(C,)", "1"), Param("bias", "(C,)", "0")),
    defaults={"affine": True},
    verified_against=("torch.nn.InstanceNorm2d",),
)(InstanceNorm2d)
