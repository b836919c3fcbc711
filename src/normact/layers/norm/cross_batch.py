"""Cross mini-Batch Normalization, CmBN (YOLOv4, Bochkovskiy, Wang & Liao, 2020): batch statistics pooled over
the mini-batches of one optimizer batch under gradient accumulation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["CrossMiniBatchNorm"]

YOLOV4 = Paper(
    "YOLOv4: Optimal Speed and Accuracy of Object Detection",
    2020,
    "2004.10934",
    "Bochkovskiy, Wang, Liao",
)


@register(
    "cmbn",
    kind="norm",
    paper=YOLOV4,
    formula=(
        "training, at mini-batch t of accum_steps: mu, var = pooled E[x], E[x^2] - E[x]^2 per channel over "
        "(N, *) of mini-batches 1..t of the current optimizer batch (earlier ones as constants), "
        "y = (x - mu) / sqrt(var + eps) * weight + bias, running statistics updated with momentum (unbiased "
        "pooled variance); the pooling restarts every accum_steps calls; eval: BatchNorm with the running "
        "statistics"
    ),
    functional=NF.cross_minibatch_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        *_channel.BN_BUFFERS,
        Param("accum_mean", "(C,)", "0 (pooled mean of this batch's mini-batches so far)", buffer=True),
        Param("accum_var", "(C,)", "1 (pooled biased variance of this batch's mini-batches so far)", buffer=True),
        Param("accum_count", "()", "0 (values pooled so far, int64)", buffer=True),
        Param("accum_step", "()", "0 (mini-batch index within the optimizer batch, int64)", buffer=True),
    ),
    verified_against=("torch.nn.BatchNorm2d",),  # accum_steps=1 (tests/test_cross_batch.py)
    batch_dependent=True,
    stateful=True,
)
class CrossMiniBatchNorm(RunningStatsNorm):
    r"""Cross mini-Batch Normalization, CmBN (YOLOv4, Bochkovskiy, Wang & Liao, 2020, arXiv:2004.10934) of
    (N, C), (N, C, L) or (N, C, H, W) inputs.

    .. math::
        \mu^{(t)} = \frac{\sum_{s \le t} \sum_{i \in B_s} x_i}{\sum_{s \le t} |B_s|}, \qquad
        \sigma^{2\,(t)} = \frac{\sum_{s \le t} \sum_{i \in B_s} x_i^2}{\sum_{s \le t} |B_s|} - \big(\mu^{(t)}\big)^2,
        \qquad y = \frac{x - \mu^{(t)}}{\sqrt{\sigma^{2\,(t)} + \epsilon}}\,\gamma + \beta

    One optimizer batch is split into ``accum_steps`` mini-batches :math:`B_1, \dots, B_S` (gradient
    accumulation), one forward call each. At mini-batch t the per-channel statistics are pooled over
    :math:`B_1..B_t` (over N and the spatial dims); the pooling restarts after every ``accum_steps`` training
    calls, so the statistics never reach into the previous optimizer batch (the paper's Figure 4: CmBN is
    CBN restricted to the mini-batches of one batch). At the last mini-batch of equal-size mini-batches the
    statistics are BatchNorm's over the whole batch. With ``accum_steps=1`` the layer is ``BatchNorm2d``.

    Gradients: the earlier mini-batches' moments are constants (their graphs are gone by then); the
    gradient flows through the current mini-batch's contribution to the pooled mean and variance.

    State: the pooled moments so far are buffers (``accum_mean``, ``accum_var`` biased, ``accum_count`` values,
    ``accum_step`` = t - 1), kept in the numerically stable form (count, mean, centered second moment; Chan et
    al.'s pairwise update) instead of raw :math:`\sum x, \sum x^2`: the same pooled :math:`E[x]` and
    :math:`E[x^2] - E[x]^2`, without the cancellation of :math:`E[x^2] - E[x]^2` for inputs far from zero.
    Call :meth:`reset_accumulation` to realign the mini-batch counter with the optimizer (e.g. after an
    interrupted batch). Running statistics are updated at every mini-batch from the pooled statistics with
    ``momentum`` (unbiased pooled variance), as BatchNorm updates them at every call; evaluation is BatchNorm
    with them.

    Sources: the paper (Section 3.3 and Figure 4) describes CmBN only in words and a figure. The official
    darknet code (``src/batchnorm_layer.c``, ``fast_v_cbn_kernel`` in ``src/blas_kernels.cu``, switched on by
    ``cbn=1``) pools the mini-batch means and second moments with weight 1/t (equal to pooling the values for
    equal mini-batch sizes), updates the rolling statistics at every mini-batch, and backpropagates with the
    ordinary BatchNorm formula given the pooled statistics. Deliberate differences from darknet: the values are
    pooled by count (exact for unequal mini-batch sizes too); the variance is the biased pooled variance as in
    BatchNorm (darknet divides the mini-batch's sum of squares by ``n - 1`` and clamps it at the squared mean),
    so that ``accum_steps=1`` is exactly ``torch.nn.BatchNorm2d``; the running statistics follow torch's
    momentum convention (darknet: 0.01) and unbiased variance; the gradient is the autograd gradient of the
    forward with the earlier mini-batches held constant. float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        accum_steps: the number S of mini-batches (forward calls in training) per optimizer batch. Default: 4.
        eps: added to the variance inside the root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average over mini-batches.
            Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        sync: in training, pool the mini-batch moments over ``process_group`` when torch.distributed is
            initialized (see ``normact.distributed``). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C), (N, C, L) or (N, C, H, W); output the same shape. With ``accum_steps=1`` training needs
        N * spatial > 1.
    """

    def __init__(
        self,
        num_features: int,
        accum_steps: int = 4,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.accum_steps = check_int("accum_steps", accum_steps)
        _channel.set_batch_options(self, eps, momentum, sync, process_group, affine=affine)
        c = self.num_features
        _channel.add_channel_affine(self, c, self.affine, factory_kwargs)
        _channel.add_running_stats(self, c, True, factory_kwargs, count=True)
        self.register_buffer("accum_mean", torch.empty(c, **factory_kwargs))
        self.register_buffer("accum_var", torch.empty(c, **factory_kwargs))
        self.register_buffer("accum_count", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("accum_step", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_accumulation(self) -> None:
        """Start a new optimizer batch: the next training call is mini-batch 1 (pooled moments cleared)."""
        self.accum_mean.zero_()
        self.accum_var.fill_(1.0)
        self.accum_count.zero_()
        self.accum_step.zero_()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0, and the accumulation cleared."""
        super().reset_running_stats()
        self.reset_accumulation()

    def reset_parameters(self) -> None:
        """Running statistics and accumulation reset; weight = 1, bias = 0."""
        super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4), _channel.LAYOUT_1D_2D)
        momentum = self._update_factor()
        return NF.cross_minibatch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.accum_mean,
            self.accum_var,
            self.accum_count,
            self.accum_step,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            self.accum_steps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "accum_steps", "eps", "momentum", "affine") + _channel.sync_repr(self)
