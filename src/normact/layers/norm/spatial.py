"""Spatially conditioned normalizations: SPADE (Park et al., 2019), whose affine is predicted per pixel from a
segmentation map, and Region Normalization (Yu et al., 2020), which normalizes the regions of a binary mask
separately (RN-B, mask given) or of a mask it detects itself (RN-L).

The conditioning input is a keyword argument of ``forward``: ``SPADE()(x, segmap=m)``,
``RegionNormB()(x, mask=m)``. The batch-statistics variants take ``sync=`` / ``process_group=`` for data
parallelism."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["SPADE", "RegionNormB", "RegionNormL"]

SPADE_PAPER = Paper(
    "Semantic Image Synthesis with Spatially-Adaptive Normalization",
    2019,
    "1903.07291",
    "Park, Liu, Wang, Zhu",
)
REGION_NORM = Paper(
    "Region Normalization for Image Inpainting",
    2020,
    "1911.10375",
    "Yu, Guo, Jin, Wu, Chen, Li, Zhang, Liu",
)

_PARAM_FREE = ("batch", "instance")


def _check_kernel(kernel_size: object) -> int:
    k = check_int("kernel_size", kernel_size)
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd (same-size convolution with padding k // 2), got {k}")
    return k


def _param(shape: tuple[int, ...], factory_kwargs: dict[str, Any]) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, **factory_kwargs))


def _reset_conv(weight: Tensor, bias: Tensor | None) -> None:
    """torch.nn.Conv2d's default initialization: kaiming_uniform_(a=sqrt(5)) for the weight, U(-1/sqrt(fan_in),
    1/sqrt(fan_in)) for the bias."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight[0].numel()
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


# --------------------------------------------------------------------------------------------------- SPADE

_SPADE_CONVS = (
    Param("shared_weight", "(hidden, label_nc, k, k)", "torch Conv2d default (kaiming_uniform, a=sqrt(5))"),
    Param("shared_bias", "(hidden,)", "torch Conv2d default U(-1/sqrt(fan_in), 1/sqrt(fan_in))"),
    Param("gamma_weight", "(C, hidden, k, k)", "torch Conv2d default"),
    Param("gamma_bias", "(C,)", "torch Conv2d default"),
    Param("beta_weight", "(C, hidden, k, k)", "torch Conv2d default"),
    Param("beta_bias", "(C,)", "torch Conv2d default"),
)


@register(
    "spade_instance",
    kind="norm",
    drop_in=False,
    verified_against=("torch.nn.InstanceNorm2d", "torch.nn.Conv2d"),
    paper=SPADE_PAPER,
    formula=(
        "y = IN(x) * (1 + gamma(m)) + beta(m), IN without affine (per sample and channel over (H, W)); "
        "m = segmap resized to (H, W) by nearest interpolation, a = ReLU(conv_kxk(m)), gamma = conv_kxk(a), "
        "beta = conv_kxk(a) (hidden=128 channels, k=3, zero padding)"
    ),
    functional=NF.spade,
    params=_SPADE_CONVS,
    defaults={"label_nc": 1, "param_free": "instance"},
)
@register(
    "spade",
    kind="norm",
    drop_in=False,
    verified_against=("torch.nn.BatchNorm2d", "torch.nn.Conv2d"),
    paper=SPADE_PAPER,
    formula=(
        "y = BN(x) * (1 + gamma(m)) + beta(m), BN without affine (batch statistics over (N, H, W) in training, "
        "running statistics in eval); m = segmap resized to (H, W) by nearest interpolation, "
        "a = ReLU(conv_kxk(m)), gamma = conv_kxk(a), beta = conv_kxk(a) (hidden=128 channels, k=3, zero padding)"
    ),
    functional=NF.spade,
    params=(
        *_SPADE_CONVS,
        Param("running_mean", "(C,)", "0 (param_free='batch', track_running_stats=True only)", buffer=True),
        Param("running_var", "(C,)", "1 (param_free='batch', track_running_stats=True only)", buffer=True),
        Param("num_batches_tracked", "()", "0 (param_free='batch', track_running_stats=True only)", buffer=True),
    ),
    defaults={"label_nc": 1},
    batch_dependent=True,
    stateful=True,
)
class SPADE(RunningStatsNorm):
    r"""SPADE, spatially-adaptive normalization (Park, Liu, Wang & Zhu, 2019, arXiv:1903.07291) of (N, C, H, W)
    inputs conditioned on a segmentation map.

    .. math::
        y = \hat x \odot \big(1 + \gamma(m)\big) + \beta(m), \qquad
        a = \mathrm{ReLU}(\mathrm{conv}_s(m)), \quad \gamma = \mathrm{conv}_\gamma(a), \quad
        \beta = \mathrm{conv}_\beta(a)

    :math:`\hat x` is a parameter-free normalization of x: ``param_free="batch"`` (registry name ``spade``):
    BatchNorm without affine (per-channel batch mean and biased variance over (N, H, W) in training, running
    statistics updated with ``momentum`` and the unbiased variance and used in evaluation; over the process
    group with ``sync``); ``param_free="instance"`` (``spade_instance``): InstanceNorm without affine (per
    sample and channel over (H, W), no running statistics). ``m`` is the ``segmap`` (N, label_nc, h, w)
    resized to (H, W) by nearest interpolation (``F.interpolate(mode="nearest")``); the three convolutions
    (``label_nc -> hidden``, then ``hidden -> C`` twice) are k x k, stride 1, zero padding k // 2, with biases.
    The modulation is per pixel and channel: a spatially constant map gives BatchNorm/InstanceNorm with the
    per-channel affine :math:`(1 + \gamma_c, \beta_c)`.

    From the paper (Eq. 1): the formula, written there as :math:`\gamma(m)\,\hat x + \beta(m)`; the
    :math:`1 + \gamma` form is the official code's. From the official ``models/networks/normalization.py``
    (``SPADE``): hidden = 128 (hard-coded there), k = 3 (the
    ``spadesyncbatch3x3`` / ``spadeinstance3x3`` configurations), ``nn.BatchNorm2d(affine=False)`` /
    ``nn.InstanceNorm2d(affine=False)`` (eps 1e-5, momentum 0.1, running statistics for the batch variant),
    nearest resizing, the ReLU after the shared convolution only. The convolutions take torch's default
    ``Conv2d`` initialization, which is what the official module does on its own; the official generator
    then re-initializes every convolution of the network (``BaseNetwork.init_weights``, xavier_normal with
    gain 0.02, biases 0): do that at model level if wanted. The official ``"syncbatch"`` is ``"batch"`` with
    ``sync=True`` here. float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C of x.
        label_nc: the channel count of the segmentation map (one-hot labels or any floating map).
            ``normact.create("spade", C)`` uses 1. Required when the class is used directly.
        hidden: the channel count of the shared embedding. Default: 128.
        kernel_size: the (odd) kernel size of the three convolutions. Default: 3.
        param_free: ``"batch"`` or ``"instance"``. Default: ``"batch"``.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average (batch only). Default: 0.1.
        track_running_stats: keep running statistics (batch only); if False, batch statistics are used in
            evaluation too. Default: True.
        sync: in training, combine the batch moments over ``process_group`` when torch.distributed is
            initialized (batch only). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, H, W) and ``segmap`` (N, label_nc, h, w) floating, any h, w; output (N, C, H, W).
    """

    def __init__(
        self,
        num_features: int,
        label_nc: int,
        hidden: int = 128,
        kernel_size: int = 3,
        param_free: str = "batch",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.label_nc = check_int("label_nc", label_nc)
        self.hidden = check_int("hidden", hidden)
        self.kernel_size = _check_kernel(kernel_size)
        if param_free not in _PARAM_FREE:
            raise ValueError(f"param_free must be one of {_PARAM_FREE}, got {param_free!r}")
        self.param_free = param_free
        _channel.set_batch_options(self, eps, momentum, sync, process_group, track_running_stats=track_running_stats)
        c, h, k = self.num_features, self.hidden, self.kernel_size
        self.shared_weight = _param((h, self.label_nc, k, k), fk)
        self.shared_bias = _param((h,), fk)
        self.gamma_weight = _param((c, h, k, k), fk)
        self.gamma_bias = _param((c,), fk)
        self.beta_weight = _param((c, h, k, k), fk)
        self.beta_bias = _param((c,), fk)
        _channel.add_running_stats(self, c, param_free == "batch" and self.track_running_stats, fk, count=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics reset; the convolutions get torch's default Conv2d initialization."""
        self.reset_running_stats()
        _reset_conv(self.shared_weight, self.shared_bias)
        _reset_conv(self.gamma_weight, self.gamma_bias)
        _reset_conv(self.beta_weight, self.beta_bias)

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        factor = self._update_factor()
        return NF.spade(
            x,
            segmap,
            self.shared_weight,
            self.shared_bias,
            self.gamma_weight,
            self.gamma_bias,
            self.beta_weight,
            self.beta_bias,
            self.running_mean,
            self.running_var,
            self.training,
            factor,
            self.eps,
            self.param_free,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = ("label_nc", "hidden", "kernel_size", "param_free", "eps")
        if self.param_free != "batch":  # the instance normalization has no running statistics and no sync
            return _channel.options_repr(self, *options)
        return _channel.options_repr(self, *options, "momentum", "track_running_stats") + _channel.sync_repr(self)


# ------------------------------------------------------------------------------------- Region Normalization

_REGION_STATS = (
    Param("running_mean", "(2, C)", "0, row k for region k (track_running_stats=True only)", buffer=True),
    Param("running_var", "(2, C)", "1 (track_running_stats=True only)", buffer=True),
    Param("num_batches_tracked", "(2,)", "0, batches each region was present in (track_running_stats=True only)",
          buffer=True),
)  # fmt: skip


@register(
    "region_norm_b",
    kind="norm",
    drop_in=False,
    verified_against=("torch.nn.BatchNorm2d", "torch.nn.functional.batch_norm"),
    paper=REGION_NORM,
    formula=(
        "y = (x - mu_k) / sqrt(var_k + eps) * weight[k] + bias[k] at the pixels where mask = k (k in {0, 1}); "
        "mu_k, var_k per channel over region k's pixels of the whole batch in training (running statistics per "
        "region updated with momentum, unbiased variance), the region's running statistics in eval; mask resized "
        "to (H, W) by nearest interpolation"
    ),
    functional=NF.region_norm,
    params=(
        Param("weight", "(2, C)", "1 (affine=True only); row k for region mask = k"),
        Param("bias", "(2, C)", "0 (affine=True only)"),
        *_REGION_STATS,
    ),
    batch_dependent=True,
    stateful=True,
)
class RegionNormB(RunningStatsNorm):
    r"""Basic Region Normalization, RN-B (Yu, Guo, Jin, Wu, Chen, Li, Zhang & Liu, 2020, arXiv:1911.10375) of
    (N, C, H, W) inputs with a binary mask.

    .. math::
        y = \frac{x - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}}\,\gamma_k + \beta_k
        \quad \text{at the pixels of region } k = M \in \{0, 1\}

    The mask splits the pixels into two regions (in the paper's inpainting network: M = 1 the corrupted
    pixels, the holes, M = 0 the valid ones; the layer treats both alike). Each region is normalized with
    its own per-channel mean :math:`\mu_k` and biased variance :math:`\sigma_k^2`, then gets its own affine
    ``weight[k]``, ``bias[k]`` (shape (2, C), row k for region k; init 1 and 0). With M = 1 everywhere the
    layer is BatchNorm. Changing the pixels of one region leaves the output of the other unchanged.

    Statistics: as in the official ``rn.py`` (``RN_binarylabel``), over the region's pixels of the **whole
    batch** (sums over dims 0, 2, 3), not per sample as the paper writes them; this makes the layer
    batch-dependent (``sync`` combines them over a process group). The official layer keeps no running
    statistics (``track_running_stats=False``: batch statistics in evaluation too); by this library's
    contract the default here keeps per-region running statistics of shape (2, C) (updated with ``momentum``
    and the unbiased variance for each region present in the batch; a cumulative average over the batches a
    region was present in for ``momentum=None``; ``num_batches_tracked`` (2,) counts them) and uses them in
    evaluation. An empty region (an all-zero or all-one mask) contributes nothing and is not updated.

    Deliberate differences from the official code, besides the running statistics: the official layer
    computes the region statistics by filling the other region with the region mean and calling BatchNorm,
    which amounts to :math:`\epsilon\,NHW/|R_k|` in place of :math:`\epsilon` (the paper's formula is used
    here); its affine adds both regions' biases at every pixel (``rn_x * mask * (1 + gamma_fg) + beta_fg +
    rn_x * (1 - mask) * (1 + gamma_bg) + beta_bg``), here each region gets its own bias as the paper
    describes; ``weight`` is the official ``1 + gamma`` (same initial value). Masks: (N, 1, h, w) or
    (N, h, w), bool, integer (nonzero = 1) or floating (> 0.5 = 1), resized to (H, W) by nearest
    interpolation as in the official ``RN_B``. float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C.
        eps: added to the variances inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn the per-region ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep per-region running statistics; if False (the official layer), batch
            statistics are used in evaluation too. Default: True.
        sync: in training, combine the region moments over ``process_group`` when torch.distributed is
            initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, H, W), ``mask`` (N, 1, h, w) or (N, h, w); output (N, C, H, W).
    """

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
        fk = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        _channel.set_batch_options(
            self, eps, momentum, sync, process_group, affine=affine, track_running_stats=track_running_stats
        )
        regions = (2, self.num_features)
        _channel.add_channel_affine(self, regions, self.affine, fk)
        _channel.add_running_stats(self, regions, self.track_running_stats, fk, count=True, count_shape=(2,))
        self.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        return NF.region_norm(
            x,
            mask,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.training,
            self.momentum,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.batch_norm_repr(self)


@register(
    "region_norm_l",
    kind="norm",
    verified_against=("torch.nn.functional.batch_norm",),
    paper=REGION_NORM,
    formula=(
        "S = sigmoid(conv_kxk([mean_c(x), max_c(x)])), M = 1[sg(S) >= threshold]; x_hat = x normalized per "
        "region of M (per-channel statistics over the region's pixels of the whole batch in training, the "
        "region's running statistics in eval); y = x_hat * (1 + conv_kxk(S)) + conv_kxk(S) (k=7, threshold=0.8)"
    ),
    functional=NF.region_norm_l,
    params=(
        Param("sa_weight", "(1, 2, k, k)", "torch Conv2d default (kaiming_uniform, a=sqrt(5)); no bias"),
        Param("gamma_weight", "(1, 1, k, k)", "torch Conv2d default"),
        Param("gamma_bias", "(1,)", "torch Conv2d default U(-1/k, 1/k)"),
        Param("beta_weight", "(1, 1, k, k)", "torch Conv2d default"),
        Param("beta_bias", "(1,)", "torch Conv2d default U(-1/k, 1/k)"),
        *_REGION_STATS,
    ),
    batch_dependent=True,
    stateful=True,
    smooth=False,
)
class RegionNormL(RunningStatsNorm):
    r"""Learnable Region Normalization, RN-L (Yu, Guo, Jin, Wu, Chen, Li, Zhang & Liu, 2020, arXiv:1911.10375)
    of (N, C, H, W) inputs: region normalization with a mask detected from the features.

    .. math::
        S = \sigma\big(\mathrm{conv}_{sa}([\mathrm{mean}_c(x), \max_c(x)])\big), \quad
        M = \mathbb{1}[\mathrm{sg}(S) \ge t], \quad
        y = \mathrm{RN}_M(x) \odot \big(1 + \mathrm{conv}_\gamma(S)\big) + \mathrm{conv}_\beta(S)

    The spatial response S (N, 1, H, W) comes from the channel mean and channel max of x (concatenated in that
    order), a k x k convolution without bias and a sigmoid; thresholding it (no gradient) gives the region
    mask M; :math:`\mathrm{RN}_M` normalizes each region with its own per-channel statistics (as
    :class:`RegionNormB`, without the per-region affine); then a "global" spatial affine predicted from S by
    two k x k convolutions (1 -> 1 channel, with bias) is applied to all channels.

    From the official ``rn.py`` (``RN_L``, ``SelfAware_Affine``, ``RN_binarylabel``): k = 7 (3 also used),
    zero padding k // 2, the mean/max order, the threshold t = 0.8 (also ``main.py``'s default) with
    ``S >= t``, the ``(1 + gamma)`` form, statistics over the region's pixels of the whole batch (the paper
    writes them per sample) and torch's default Conv2d initialization of the three convolutions (the
    official training script re-initializes every convolution of the network at model level). Running
    statistics, the eps placement and empty regions as in :class:`RegionNormB` (the official layer has no
    running statistics: ``track_running_stats=False`` reproduces that). The mask makes the layer
    piecewise: gradients flow through x's normalization and through S into the affine, not through M.
    float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C.
        kernel_size: the (odd) kernel size of the three convolutions. Default: 7.
        threshold: the mask threshold t on S. Default: 0.8.
        eps: added to the variances inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        track_running_stats: keep per-region running statistics; if False (the official layer), batch
            statistics are used in evaluation too. Default: True.
        sync: in training, combine the region moments over ``process_group`` when torch.distributed is
            initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, H, W); output the same shape.
    """

    def __init__(
        self,
        num_features: int,
        kernel_size: int = 7,
        threshold: float = 0.8,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.kernel_size = _check_kernel(kernel_size)
        self.threshold = check_float("threshold", threshold)
        _channel.set_batch_options(self, eps, momentum, sync, process_group, track_running_stats=track_running_stats)
        k = self.kernel_size
        self.sa_weight = _param((1, 2, k, k), fk)
        self.gamma_weight = _param((1, 1, k, k), fk)
        self.gamma_bias = _param((1,), fk)
        self.beta_weight = _param((1, 1, k, k), fk)
        self.beta_bias = _param((1,), fk)
        _channel.add_running_stats(
            self, (2, self.num_features), self.track_running_stats, fk, count=True, count_shape=(2,)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics reset; the convolutions get torch's default Conv2d initialization."""
        self.reset_running_stats()
        _reset_conv(self.sa_weight, None)
        _reset_conv(self.gamma_weight, self.gamma_bias)
        _reset_conv(self.beta_weight, self.beta_bias)

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        return NF.region_norm_l(
            x,
            self.sa_weight,
            self.gamma_weight,
            self.gamma_bias,
            self.beta_weight,
            self.beta_bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.training,
            self.momentum,
            self.eps,
            self.threshold,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = ("kernel_size", "threshold", "eps", "momentum", "track_running_stats")
        return _channel.options_repr(self, *options) + _channel.sync_repr(self)
