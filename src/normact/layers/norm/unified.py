"""Unified Normalization (Yang, Zhang, Lan, et al., ACM MM 2022): an offline, foldable replacement for LayerNorm in
Transformers, with fluctuation smoothing of the activation and gradient statistics and outlier filtration.
Takes ``sync=`` / ``process_group=`` for data parallelism."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_channel_input, check_eps, check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["UnifiedNorm"]

UNIFIED_NORMALIZATION = Paper(
    "Unified Normalization for Accelerating and Stabilizing Transformers",
    2022,
    "2208.01313",
    "Yang, Zhang, Lan, Yang, Li, Tan, Xiao, Pu",
)


def _window_sizes(window_size: object) -> tuple[int, int]:
    """An int (both windows) or a pair (forward window, backward window), each >= 1."""
    if isinstance(window_size, numbers.Integral) and not isinstance(window_size, bool):
        size = check_int("window_size", window_size)
        return size, size
    if isinstance(window_size, Sequence) and not isinstance(window_size, str):
        if len(window_size) != 2:
            raise ValueError(
                f"window_size must be an int or a pair (forward, backward) of ints, got {len(window_size)} values"
            )
        return check_int("window_size[0]", window_size[0]), check_int("window_size[1]", window_size[1])
    raise TypeError(f"window_size must be an int or a pair of ints, got {type(window_size).__name__}")


@register(
    "unified_norm",
    kind="norm",
    input_layout="tokens",
    paper=UNIFIED_NORMALIZATION,
    formula=(
        "training: x2 = E_B[x^2] per channel over the unpadded tokens of the batch (no centering); "
        "var = x2 during warm-up or while the window of the last W statistics is filling, else the geometric "
        "mean of that window (fluctuation smoothing); y = x / sqrt(var + eps) * weight + bias; "
        "running_var <- lerp(running_var, var, momentum); optional outlier filtration; custom backward "
        "(gradient compensation: g = dy * weight * r, dx = (g - ema(E_B[g * z]) * z) / sqrt(var + eps), "
        "r = clamp(sqrt((var + eps) / (running_var + eps)), 1/5, 5) after the first max(1000, warmup) steps); "
        "eval: y = x / sqrt(running_var + eps) * weight + bias (foldable into the previous linear layer)"
    ),
    functional=NF.unified_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("running_var", "(C,)", "1", buffer=True),
        Param("x2_window", "(W_f, C)", "0", buffer=True),
        Param("gz_window", "(W_b, C)", "0", buffer=True),
        Param("ema_gz", "(C,)", "0", buffer=True),
        Param("num_batches_tracked", "()", "0", buffer=True),
        Param("num_skipped", "()", "0", buffer=True),
    ),
    batch_dependent=True,
    stateful=True,
    custom_backward=True,
)
class UnifiedNorm(RunningStatsNorm):
    r"""Unified Normalization (Yang, Zhang, Lan, et al., 2022, arXiv:2208.01313) of (N, C) or (N, L, C) inputs.

    Features last; a foldable (offline) replacement for LayerNorm in Transformers.

    .. math::
        y = \gamma \odot \frac{x}{\sqrt{\hat\sigma^2 + \epsilon}} + \beta, \qquad
        \hat\sigma^2 = \begin{cases}
            \sigma_t^2 = \mathrm{E}_B[x^2] & t \le W \text{ or } t < T_{warm} \text{ or skipped} \\
            \big(\prod_{i=0}^{W-1} \sigma_{t-i}^2\big)^{1/W} & \text{otherwise}
        \end{cases}

    **Training.** No mean is subtracted. At iteration t (``num_batches_tracked``, incremented by each
    training forward pass) the per-channel mean of :math:`x^2` over the batch and the tokens (the tokens
    not marked by ``pad_mask``; over the whole process group with ``sync``) enters ``x2_window``, the last
    :math:`W` statistics (newest row last). Once the window is full and the warm-up is over the layer
    normalizes with the window's geometric mean (*fluctuation smoothing*), computed as
    :math:`\exp(\mathrm{mean}\log)`. Then ``running_var <- (1 - momentum) * running_var + momentum * var``.

    **Outlier filtration** (``outlier_filtration=True``, the paper's suggestion for vision; False for
    language). Once :math:`t \ge T_{warm}`, a batch is skipped when, in any channel, the arithmetic mean minus
    the geometric mean of the window (with the new statistic) exceeds :math:`W \cdot \mathrm{Var}(\sqrt{w})`,
    the unbiased variance over every entry of the window before the update. A skipped batch is normalized
    with its own statistic, ``running_var`` enters the window in its place, the backward pass uses its
    exact batch statistic, and ``num_skipped`` counts it.

    **Gradient compensation** (the custom backward). With :math:`z = x/\sqrt{\hat\sigma^2+\epsilon}`,
    :math:`g = \partial L/\partial y \odot \gamma \odot r` and
    :math:`r = \mathrm{clamp}(\sqrt{(\hat\sigma^2+\epsilon)/(\text{running\_var}+\epsilon)}, 1/5, 5)`
    (:math:`r = 1` during the first :math:`\max(1000, T_{warm})` iterations and for skipped batches):
    :math:`\psi_t = \mathrm{E}_B[g \odot z]` enters ``gz_window`` (``ema_gz`` instead for a skipped batch);
    :math:`\bar\psi` is :math:`\psi_t` while :math:`t \le W_b`, :math:`t < T_{warm}` or skipped, else the
    window's arithmetic mean; ``ema_gz <- lerp(ema_gz, psi_bar, momentum)``; and
    :math:`\partial L/\partial x = (g - \nu\, z)/\sqrt{\hat\sigma^2+\epsilon}` with :math:`\nu` = ``ema_gz``
    (:math:`\bar\psi` for a skipped batch). :math:`\partial L/\partial\gamma = \sum \partial L/\partial y
    \odot r z`, :math:`\partial L/\partial\beta = \sum \partial L/\partial y`. With ``window_size=1`` every
    batch counts as skipped and the backward is the exact gradient of the batch-statistic forward.
    ``gradient_compensation=False`` replaces the custom backward by autograd through the forward as computed.

    **Evaluation**: :math:`y = \gamma \odot x/\sqrt{\text{running\_var}+\epsilon} + \beta`, a per-channel
    affine map that folds into the preceding linear layer.

    From the official code (hikvision-research/Unified-Normalization, ``unified_normalization.py``, identical
    for image classification and translation): window_size=4, warmup_iters=4000, outlier_filtration=False,
    eps=1e-5, momentum 0.9 as the weight of the *old* value (``momentum=0.1`` here, torch's convention, is
    the same update, used for ``running_var`` and ``ema_gz`` alike), initial values running_var=1, windows
    and ema_gz=0, weight=1, bias=0, the r clamp [1/5, 5] and its 1000-iteration warm-up, the skip rule and
    the weight gradient through :math:`r z`. From the paper: the formula above, the geometric-mean smoothing,
    the outlier filtration and the offline (foldable) inference.

    Deliberate differences from the official code: (1) the outlier test starts only once the window holds W
    real statistics (:math:`t > W`); the official code also runs it earlier when ``warmup_iters < W``, where
    the window's initial zeros make the geometric mean 0 and trigger it spuriously. (2) With ``pad_mask``
    the backward statistic :math:`\psi_t` divides by the number of unpadded tokens and the correction
    :math:`\nu z` applies only to unpadded tokens (padded inputs do not enter :math:`\hat\sigma^2`), which
    makes the skipped-batch backward the exact gradient; the official code averages :math:`g z` over all
    tokens and corrects them all (the two agree without padding). (3) The windows are shift registers
    (newest row last) rather than ring buffers indexed by ``t % W``; the statistics (means, variance) do not
    depend on the order. (4) ``momentum`` follows torch's convention (see above); ``affine`` and
    ``gradient_compensation`` switches are additions. float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C (the last input dim).
        window_size: W, the number of past statistics smoothed; an int for both passes or a pair
            (forward W, backward W_b), as the official code accepts. Default: 4.
        warmup_iters: :math:`T_{warm}`, iterations using the plain batch statistic. Default: 4000.
        outlier_filtration: skip outlier batches (see above). Default: False.
        eps: added to the statistics inside the square roots. Default: 1e-5.
        momentum: update rate in [0, 1] of ``running_var`` and ``ema_gz``. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        gradient_compensation: use the paper's backward; False for autograd's gradient. Default: True.
        sync: in training, combine the statistics of the forward (sums of :math:`x^2` and token counts) and
            of the backward (sums of :math:`g z`) over ``process_group`` when torch.distributed is
            initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C) or (N, L, C); output the same shape. ``pad_mask`` (keyword, optional): a bool tensor of
        shape (N,) or (N, L), True at padding tokens, which are left out of the statistics (their outputs
        are still computed).
    """

    def __init__(
        self,
        num_features: int,
        window_size: int | tuple[int, int] = 4,
        warmup_iters: int = 4000,
        outlier_filtration: bool = False,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        gradient_compensation: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.forward_window, self.backward_window = _window_sizes(window_size)
        self.window_size = int(window_size) if isinstance(window_size, numbers.Integral) else tuple(window_size)
        self.warmup_iters = check_int("warmup_iters", warmup_iters, minimum=0)
        self.outlier_filtration = bool(outlier_filtration)
        self.eps = check_eps(eps)
        self.momentum = check_float("momentum", momentum, low=0.0, high=1.0)
        self.affine = bool(affine)
        self.gradient_compensation = bool(gradient_compensation)
        _channel.set_sync(self, sync, process_group)
        c = self.num_features
        _channel.add_channel_affine(self, c, self.affine, factory_kwargs)
        self.register_buffer("running_var", torch.empty(c, **factory_kwargs))
        self.register_buffer("x2_window", torch.empty(self.forward_window, c, **factory_kwargs))
        self.register_buffer("gz_window", torch.empty(self.backward_window, c, **factory_kwargs))
        self.register_buffer("ema_gz", torch.empty(c, **factory_kwargs))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=device))
        self.register_buffer("num_skipped", torch.zeros((), dtype=torch.long, device=device))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_var = 1; windows, ema_gz and counters = 0."""
        with torch.no_grad():
            self.running_var.fill_(1.0)
            self.x2_window.zero_()
            self.gz_window.zero_()
            self.ema_gz.zero_()
            self.num_batches_tracked.zero_()
            self.num_skipped.zero_()

    def forward(self, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
        check_channel_input(
            x, "UnifiedNorm", self.num_features, ranks=(2, 3), axis=-1, layout="(N, {C}) or (N, L, {C})"
        )
        return NF.unified_norm(
            x,
            self.running_var,
            self.x2_window,
            self.gz_window,
            self.ema_gz,
            self.num_batches_tracked,
            self.num_skipped,
            self.weight,
            self.bias,
            pad_mask=pad_mask,
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
            warmup_iters=self.warmup_iters,
            outlier_filtration=self.outlier_filtration,
            gradient_compensation=self.gradient_compensation,
            sync=self.sync,
            process_group=self.process_group,
        )

    def extra_repr(self) -> str:
        options = ("window_size", "warmup_iters", "outlier_filtration", "eps", "momentum", "affine")
        return (
            _channel.options_repr(self, *options)
            + ("" if self.gradient_compensation else ", gradient_compensation=False")
            + _channel.sync_repr(self)
        )
