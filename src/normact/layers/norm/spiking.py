"""Normalization inside spiking neurons: MPBN, the LIF neuron whose membrane potential is batch-normalized
before firing (Guo et al., 2023), with the folding of that normalization into the firing threshold."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, register

__all__ = ["MPBNLIF"]

MPBN = Paper(
    "Membrane Potential Batch Normalization for Spiking Neural Networks",
    2023,
    "2308.08359",
    "Guo, Zhang, Chen, Peng, Liu, Zhang, Huang, Ma",
)


@register(
    "mpbn",
    kind="norm",
    drop_in=False,
    input_layout="other",
    paper=MPBN,
    formula=(
        "for t = 1..T: u_t = tau * u_{t-1} * (1 - s_{t-1}) + x_t (u_0 = 0); u_hat_t = (u_t - mean(u_t)) / "
        "sqrt(var(u_t) + eps) * weight + bias per channel (batch statistics of each time step over N and the "
        "spatial dims in training, running statistics updated once per step; running statistics in eval); "
        "s_t = 1 if u_hat_t > v_th else 0, backpropagated with the surrogate dS/du_hat = (0 < z < 1) * temp * "
        "(1 - tanh^2(temp (z - 1/2))) / (2 tanh(temp / 2)) / (2 v_th), z = u_hat / (2 v_th); eval spikes come "
        "from the folded threshold v'_th = (v_th - bias) * sqrt(running_var + eps) / weight + running_mean"
    ),
    functional=NF.mpbn_lif,
    params=(
        *_channel.AFFINE_PARAMS,
        *_channel.BN_BUFFERS,
    ),
    batch_dependent=True,
    smooth=False,
    custom_backward=True,
    stateful=True,
)
class MPBNLIF(RunningStatsNorm):
    r"""MPBN, Membrane Potential Batch Normalization (Guo, Zhang, Chen, Peng, Liu, Zhang, Huang & Ma, 2023,
    arXiv:2308.08359): a LIF spiking neuron over T time steps whose membrane potential is batch-normalized
    (BN\ :sub:`2`) before the firing function.

    .. math::
        u_t = \tau\, u_{t-1} (1 - s_{t-1}) + x_t, \qquad
        \hat u_t = \frac{u_t - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta, \qquad
        s_t = \Theta(\hat u_t - V_{th})

    with :math:`u_0 = 0` and :math:`x_t` the already batch-normalized input current (the preceding conv + BN).
    The spike is the strict step ``s = 1`` iff :math:`\hat u > V_{th}`; the reset is hard (to 0) and takes the
    surrogate gradient of the spike. The backward replaces :math:`\Theta'` by the derivative of the official
    tanh ramp (``spike_activation`` with ``temp``): with :math:`z = \hat u / (2V_{th})`,
    :math:`\partial s/\partial\hat u = \mathbb 1[0 < z < 1]\, k(1 - \tanh^2(k(z - \frac12))) /
    (2\tanh(k/2)) / (2V_{th})`, k = ``temp``. It is deliberately not the (zero) gradient of the step.

    **Inference folding** (the paper's re-parameterization): with the running statistics,
    :math:`\hat u > V_{th} \iff u > V'_{th}` for :math:`\gamma > 0` (:math:`u < V'_{th}` for
    :math:`\gamma < 0`), :math:`V'_{th} = (V_{th} - \beta)\sqrt{\sigma^2 + \epsilon}/\gamma + \mu`;
    :meth:`fold_threshold` returns it per channel, and the evaluation forward fires from it (the surrogate
    backward stays that of :math:`\hat u`, so train and eval gradients have one form).

    From the official code (yfguo91/MPBN, ``models/spike_layer.py``, ``LIFAct``/``mem_update``): the
    recurrence ``mem = mem * decay + x``, ``spike = spike_activation(bn(mem) / V_th)``, ``mem = mem * (1 -
    spike)`` with ``decay = 0.25`` (``tau``), ``temp = 3.0``, ``V_th = 1.0`` and firing at ``bn(mem) / V_th >
    0.5``: here ``v_th`` is the effective threshold ``0.5 * V_th = 0.5`` (the surrogate window
    :math:`[0, 2V_{th}]` is the official :math:`[0, V_{th}]` of ``bn(mem) / V_th``; at the defaults the two
    are the same function). BN\ :sub:`2` is an ``nn.BatchNorm2d(C)`` applied to each time step separately, so
    the training statistics are per time step over N and the spatial dims (not pooled over T), and the
    running statistics are updated once per time step (``num_batches_tracked`` grows by T per forward;
    unbiased variance, ``momentum`` 0.1, eps 1e-5, weight 1, bias 0: torch's defaults). From the paper: the
    LIF formula, BN of the membrane potential before firing, and the threshold folding. The input layout is the
    official ``(T, N, C, *)`` (time first); ``batch_first=True`` takes ``(N, T, C, *)``, which data-parallel
    code needs (it splits dim 0).

    Deliberate differences: the official straight-through spike ``(out_s - out_bp).detach() + out_bp`` is
    written as an autograd function whose forward is exactly 0/1 (the official sum can round to 1 ± ulp); the
    paper's element-wise MPBN variant (statistics per neuron) is not offered (channel-wise only, as in the
    official code). The evaluation forward compares with the folded threshold, which equals the comparison
    :math:`\hat u > V_{th}` except where the two round differently (:math:`|\hat u - V_{th}|` of the order
    of the float epsilon). float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C.
        tau: the membrane decay in [0, 1] (official ``decay``). Default: 0.25.
        v_th: the firing threshold of the normalized potential, > 0. Default: 0.5.
        temp: the surrogate's sharpness k, > 0 (official ``temp``). Default: 3.0.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0) of BN\ :sub:`2`. Default: True.
        batch_first: input (N, T, C, *) instead of (T, N, C, *). Default: False.
        sync: in training, combine each step's batch moments over ``process_group`` when torch.distributed is
            initialized (see ``normact.distributed``; use ``batch_first=True`` so that the batch is split).
            Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (T, N, C), (T, N, C, L) or (T, N, C, H, W) (time first; (N, T, C, ...) with ``batch_first``);
        output the same shape, spikes 0/1 in the input dtype. Training needs N * spatial > 1.
    """

    def __init__(
        self,
        num_features: int,
        tau: float = 0.25,
        v_th: float = 0.5,
        temp: float = 3.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        batch_first: bool = False,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.tau = check_float("tau", tau, low=0.0, high=1.0)
        self.v_th = check_float("v_th", v_th, positive=True)
        self.temp = check_float("temp", temp, positive=True)
        _channel.set_batch_options(self, eps, momentum, sync, process_group, affine=affine)
        self.batch_first = bool(batch_first)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        _channel.add_running_stats(self, self.num_features, True, factory_kwargs, count=True)
        self.reset_parameters()

    def fold_threshold(self) -> tuple[Tensor, Tensor]:
        """The inference threshold per channel, ``(threshold, above)`` of shape (C,): with the running
        statistics, a neuron of channel c fires when ``u > threshold[c]`` if ``above[c]`` (weight >= 0) and
        when ``u < threshold[c]`` otherwise (see :func:`normact.functional.fold_mpbn_threshold`)."""
        with torch.no_grad():
            return NF.fold_mpbn_threshold(
                self.running_mean, self.running_var, self.weight, self.bias, self.eps, self.v_th
            )

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (3, 4, 5), "(N, T, {C}, *)" if self.batch_first else "(T, N, {C}, *)", axis=2)
        return NF.mpbn_lif(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self.training,
            self.momentum,
            self.eps,
            self.tau,
            self.v_th,
            self.temp,
            self.batch_first,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = ("tau", "v_th", "temp", "eps", "momentum", "affine", "batch_first")
        return _channel.options_repr(self, *options) + _channel.sync_repr(self)
