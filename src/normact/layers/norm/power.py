"""Power Normalization (Shen, Yao, Gholami, Mahoney & Keutzer, 2020): BatchNorm for transformers, without mean
subtraction, with a running quadratic mean, a padding mask and the paper's approximate backward pass. Takes
``sync=`` / ``process_group=`` for data parallelism."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_channel_input, check_eps, check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["PowerNorm"]

POWER_NORM = Paper(
    "PowerNorm: Rethinking Batch Normalization in Transformers",
    2020,
    "2003.07845",
    "Shen, Yao, Gholami, Mahoney, Keutzer",
)


@register(
    "powernorm",
    kind="norm",
    input_layout="tokens",
    paper=POWER_NORM,
    formula=(
        "u = x (or GroupScaling1D(x) with group_num); training step t: psi_B^2 = mean(u^2) per channel over the "
        "non-padded positions; y = u / sqrt(s^2 + eps) * weight + bias with s^2 = psi_B^2 while t <= warmup_iters, "
        "else running_phi; running_phi <- alpha_fwd * running_phi' + (1 - alpha_fwd) * psi_B^2 (running_phi' the "
        "cumulative average while t < warmup_iters); approximate backward: g' = weight * dL/dy - nu * z, "
        "dL/du = g' / sqrt(s^2 + eps), nu = (1 - alpha_bkw) * ema_gz, ema_gz += mean(g' * z); "
        "eval: u / sqrt(running_phi + eps) * weight + bias"
    ),
    functional=NF.power_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("running_phi", "(C,)", "1", buffer=True),
        Param("ema_gz", "(C,)", "0", buffer=True),
        Param("iters", "()", "0", buffer=True),
    ),
    batch_dependent=True,
    stateful=True,
    custom_backward=True,
)
class PowerNorm(RunningStatsNorm):
    r"""Power Normalization (Shen, Yao, Gholami, Mahoney & Keutzer, 2020, arXiv:2003.07845) of (N, C) or
    (N, L, C) inputs, features last, with an optional padding mask: the official ``MaskPowerNorm``.

    .. math::
        \psi_B^2 = \frac{1}{|B|}\sum_{i \in B} u_i^2, \qquad
        y = \gamma \odot \frac{u}{\sqrt{s^2 + \epsilon}} + \beta, \qquad
        \phi \leftarrow \alpha_{fwd}\,\phi + (1 - \alpha_{fwd})\,\psi_B^2

    per channel, where B is the set of non-padded positions of the batch (all N·L tokens without a mask; over
    the whole process group with ``sync``), there is no mean subtraction, and ``s^2`` is the batch quadratic
    mean :math:`\psi_B^2` during the first ``warmup_iters`` training steps and the running statistic
    :math:`\phi` (``running_phi``, the value before this batch's update, the paper's :math:`\psi_{t-1}^2`)
    after them. ``u = x``, or with ``group_num`` the official ``GroupScaling1D``: each token's features split
    into ``group_num`` groups, each divided by :math:`\sqrt{\mathrm{mean}(x_g^2) + \epsilon}` (per token).
    Evaluation uses the running statistic: :math:`y = \gamma \odot u/\sqrt{\phi + \epsilon} + \beta`, an
    affine map that folds into the next or previous ``nn.Linear`` when ``group_num`` is None.

    **Backward** (``approx_backward=True``, Algorithm 1 of the paper): with :math:`z = u/\sqrt{s^2+\epsilon}`,
    :math:`g = \gamma \odot \partial L/\partial y`,

    .. math::
        g' = g - \nu \odot z, \qquad \frac{\partial L}{\partial u} = \frac{g'}{\sqrt{s^2 + \epsilon}}, \qquad
        \nu \leftarrow \nu\,(1 - (1-\alpha_{bkw})\,\Gamma) + (1-\alpha_{bkw})\,\Lambda

    with :math:`\Gamma = \mathrm{mean}_B(z^2)`, :math:`\Lambda = \mathrm{mean}_B(z\, g)`: the running
    gradient statistic :math:`\nu` stands for the dependence of the normalizer on past and present batches,
    which this backward otherwise treats as a constant. As in the official code the buffer is
    ``ema_gz`` = :math:`\nu/(1-\alpha_{bkw})`, updated in the backward pass as
    ``ema_gz += mean_B(g' * z)`` (algebraically the same recursion). The GroupScaling step is
    differentiated exactly. ``approx_backward=False`` gives the autograd gradient of the forward instead
    (through :math:`\psi_B^2` during warmup; the running statistic is a constant), and leaves ``ema_gz`` alone.

    **Padding**: ``pad_mask`` (bool, the input's shape without the channel dim, True = padding) removes the
    padded positions from every batch statistic (:math:`\psi_B^2`, :math:`\Lambda`, :math:`\Gamma` and their
    counts), so padded values never change the other positions' outputs, gradients or the buffers. Padded
    positions still get the output the formula gives (the official behaviour), and their input gradient is
    :math:`g/\sqrt{s^2+\epsilon}` (they are outside the statistics, so no :math:`\nu` correction).

    Facts and their sources. From the paper (Sec. 4, Algorithm 1): no mean subtraction, the quadratic mean,
    normalization by the previous running statistic, its exponential average, the approximate backward and
    the :math:`\nu` recursion, the affine :math:`\gamma, \beta`. From the official
    ``fairseq/modules/norms/mask_powernorm.py`` (sIncerass/powernorm): the defaults ``alpha_fwd = alpha_bkw =
    0.9``, ``eps = 1e-5`` inside the square root, ``warmup_iters = 10000``, the buffers (``running_phi`` = 1,
    ``ema_gz`` = 0, ``iters`` = 0), the warmup (batch statistics for steps ``t <= warmup_iters``, counting from
    1, and during ``t < warmup_iters`` the running statistic first moved to the cumulative average
    ``phi (t-1)/t + psi_B^2/t`` before the exponential update), the padding mask and GroupScaling1D. The
    official training scripts pass the attention head count as ``group_num`` and the learning-rate warmup as
    ``warmup_iters``.

    Deliberate differences from the official module: features-last batch-first input (N, L, C) with a
    (N, L) mask, where fairseq's is (T, B, C) with a (B, T) mask (transpose first); GroupScaling is off by
    default (``group_num=None``; the official class defaults to one group), so that the default layer is the
    paper's and folds into a Linear in evaluation, and it uses the layer's ``eps`` (the official one has its
    own 1e-5: the same at the default); after warmup the backward divides by the normalizer used in the
    forward, :math:`\sqrt{\phi + \epsilon}` as in the paper's Algorithm 1, where the official code divides by
    the batch's :math:`\sqrt{\psi_B^2 + \epsilon}`; the backward statistic is a mean over the non-padded
    positions (the official one averages over padded positions too); buffers have shape (C,) rather than
    (1, C, 1, 1); ``affine=False`` removes the weight and bias (ignored by the official class). float16/bfloat16
    inputs are normalized in float32. Any batch size works (a quadratic mean needs no second sample).

    Args:
        num_features: the channel count C (the last input dim).
        eps: added to the quadratic means inside the square roots. Default: 1e-5.
        alpha_fwd: the running statistic's decay :math:`\alpha_{fwd}` in [0, 1]. Default: 0.9.
        alpha_bkw: the backward statistic's decay :math:`\alpha_{bkw}` in [0, 1]. Default: 0.9.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        warmup_iters: training steps that normalize with the batch statistic, >= 0. Default: 10000.
        group_num: None, or the number of GroupScaling1D groups (dividing C). Default: None.
        approx_backward: the paper's approximate backward (True) or the exact gradient (False). Default: True.
        sync: in training, combine the batch statistics over ``process_group`` when torch.distributed is
            initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C) or (N, L, C); ``pad_mask`` (N,) or (N, L); output the input's shape.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        alpha_fwd: float = 0.9,
        alpha_bkw: float = 0.9,
        affine: bool = True,
        warmup_iters: int = 10000,
        group_num: int | None = None,
        approx_backward: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.eps = check_eps(eps)
        self.alpha_fwd = check_float("alpha_fwd", alpha_fwd, low=0.0, high=1.0)
        self.alpha_bkw = check_float("alpha_bkw", alpha_bkw, low=0.0, high=1.0)
        self.affine = bool(affine)
        self.warmup_iters = check_int("warmup_iters", warmup_iters, minimum=0)
        if group_num is not None and self.num_features % check_int("group_num", group_num):
            raise ValueError(f"group_num must divide num_features = {self.num_features}, got {group_num}")
        self.group_num = group_num
        self.approx_backward = bool(approx_backward)
        _channel.set_sync(self, sync, process_group)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        self.register_buffer("running_phi", torch.empty(self.num_features, **factory_kwargs))
        self.register_buffer("ema_gz", torch.empty(self.num_features, **factory_kwargs))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_phi = 1, ema_gz = 0, iters = 0 (the warmup starts again)."""
        self.running_phi.fill_(1.0)
        self.ema_gz.zero_()
        self.iters.zero_()

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        check_channel_input(x, "PowerNorm", self.num_features, ranks=(2, 3), axis=-1, layout="(N, {C}) or (N, L, {C})")
        step = None
        if self.training:
            self.iters.add_(1)
            step = self.iters
        return NF.power_norm(
            x,
            self.running_phi,
            self.ema_gz,
            self.weight,
            self.bias,
            self.training,
            step,
            self.warmup_iters,
            self.alpha_fwd,
            self.alpha_bkw,
            self.eps,
            self.group_num,
            pad_mask,
            self.approx_backward,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return (
            _channel.options_repr(self, "eps", "alpha_fwd", "alpha_bkw", "affine", "warmup_iters")
            + (f", group_num={self.group_num}" if self.group_num is not None else "")
            + ("" if self.approx_backward else ", approx_backward=False")
            + _channel.sync_repr(self)
        )
