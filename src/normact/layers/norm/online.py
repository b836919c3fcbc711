"""Online Normalization (Chiley et al., NeurIPS 2019): per-channel normalization by exponentially decaying
running statistics of a stream of samples, with the paper's control-process backward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["OnlineNorm"]

ONLINE_NORM = Paper(
    "Online Normalization for Training Neural Networks",
    2019,
    "1905.05894",
    "Chiley, Sharapov, Kosson, Koster, Reece, Samaniego de la Fuente, Subbiah, James",
)


@register(
    "online_norm",
    kind="norm",
    paper=ONLINE_NORM,
    formula=(
        "training, per sample t of the batch in order (statistics m_t, v_t over the spatial dims): "
        "y_t = (x_t - mu_{t-1}) / sqrt(var_{t-1} + eps) * weight + bias, mu_t = a_f mu_{t-1} + (1 - a_f) m_t, "
        "var_t = a_f var_{t-1} + (1 - a_f) v_t + a_f (1 - a_f) (m_t - mu_{t-1})^2; backward: control process "
        "removing the running projections of the gradient on y and on 1 (accumulators error_y, error_1, decay "
        "a_b); eval: (x - mu) / sqrt(var + eps) * weight + bias with the frozen streams; optional layer scaling "
        "z / sqrt(mean_{C,*}(z^2) + eps) per sample"
    ),
    functional=NF.online_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("running_mean", "(C,)", "0 (the mean stream mu)", buffer=True),
        Param("running_var", "(C,)", "1 (the variance stream sigma^2)", buffer=True),
        Param("error_1", "(C,)", "0 (the backward accumulator e^(1), official u)", buffer=True),
        Param("error_y", "(C,)", "0 (the backward accumulator e^(y), official v)", buffer=True),
    ),
    batch_dependent=True,
    custom_backward=True,
    stateful=True,
)
class OnlineNorm(RunningStatsNorm):
    r"""Online Normalization (Chiley, Sharapov, Kosson, Koster, Reece, Samaniego de la Fuente, Subbiah & James,
    2019, arXiv:1905.05894) of (N, C), (N, C, L) or (N, C, H, W) inputs.

    .. math::
        y_t = \frac{x_t - \mu_{t-1}}{\sqrt{\sigma^2_{t-1} + \epsilon}}\,\gamma + \beta, \qquad
        \mu_t = \alpha_f \mu_{t-1} + (1 - \alpha_f)\, \mu(x_t), \qquad
        \sigma^2_t = \alpha_f \sigma^2_{t-1} + (1 - \alpha_f)\, \sigma^2(x_t)
            + \alpha_f (1 - \alpha_f) \big(\mu(x_t) - \mu_{t-1}\big)^2

    per channel, where :math:`\mu(x_t), \sigma^2(x_t)` are the mean and biased variance of sample t over its
    spatial positions (``mu(x_t) = x_t``, ``sigma^2(x_t) = 0`` for (N, C) input). In training the N samples of a
    batch are one stream, processed in batch order: sample t is normalized by the streams left by samples
    0..t-1 (and by earlier batches), never by itself. ``running_mean`` and ``running_var`` hold the streams
    :math:`\mu, \sigma^2` after the last sample. In evaluation the streams are frozen and the layer is the
    affine map :math:`(x - \mu)/\sqrt{\sigma^2 + \epsilon}\,\gamma + \beta`.

    **Backward (custom, the paper's, not the derivative of the forward).** With :math:`y'_t` the gradient
    arriving at the normalized output (after the affine), :math:`\langle\cdot,\cdot\rangle` and
    :math:`\mu(\cdot)` means over the spatial positions, and the accumulators :math:`e^{(y)}` (``error_y``) and
    :math:`e^{(1)}` (``error_1``) carried across samples and batches:

    .. math::
        x'_t = y'_t - (1 - \alpha_b)\, e^{(y)}_{t-1} y_t, \quad e^{(y)}_t = e^{(y)}_{t-1} + \langle x'_t, y_t\rangle,
        \quad x''_t = \frac{x'_t}{\sigma_{t-1}} - (1 - \alpha_b)\, e^{(1)}_{t-1}, \quad
        e^{(1)}_t = e^{(1)}_{t-1} + \mu(x''_t),

    and :math:`x''_t` is the input gradient: the running projections of the gradient on :math:`y` and on
    :math:`1` are removed (the control process that makes the streamed gradient unbiased). ``weight`` and
    ``bias`` get their ordinary gradients. The accumulators are updated in place by each backward pass (run
    it once per forward, in the order of the forwards), as the official module does. The paper claims no
    setting in which this backward is the exact gradient of the implemented forward; with ``alpha_bkw=1`` it
    treats the statistics as constants. Second derivatives are not available.

    **Batches.** The official ``online_norm_pytorch`` kernels (``csrc/norm/norm_cpu.cpp``) loop over the
    samples of a batch in order; its deprecated ``Norm2dBatched`` linearizes the same recurrences. This layer
    computes exactly the sequential recurrences with a parallel prefix scan. Because a sample's output depends
    on the samples before it in the batch, the layer is registered ``batch_dependent``; with ``sync=True``
    under torch.distributed the stream runs through the samples of all processes in rank order (per-sample
    statistics are all-gathered), so that P processes holding consecutive parts of a batch equal one process
    holding it all, buffers included.

    **Layer scaling** (``layer_scaling=True``, the paper's guard against compounding estimation errors; the
    official module's ``ecm='ls'``): after the affine, each sample is divided by
    :math:`\sqrt{\mathrm{mean}(z^2) + \epsilon}` over all its channels and positions (differentiated exactly).
    The official module's default guard since the paper is activation clamping (``ecm='ac'``, clamp at 5); it
    is not part of this layer (follow it with ``torch.clamp`` for it).

    Sources. From the paper (Section 3; its forward equations as reproduced in public summaries of it): the
    forward recurrences above, the unbiased two-accumulator backward and layer scaling. The full paper text
    was not available here; the backward equations are written from the official code, the ``numpy_on`` reference
    (``online_norm_2d.py: norm_backward``) and the C++ kernel (``norm_bwd_cpu``), which agree. From the
    official code: the defaults :math:`\alpha_f = 0.999`, :math:`\alpha_b = 0.99`, ``eps = 1e-5`` inside the
    root, :math:`\sqrt{\sigma^2 + \epsilon}` (the paper writes :math:`\sigma`); the means over spatial positions
    in the accumulator updates; the initial values (mean stream 0, variance stream 1, accumulators 0, weight
    1, bias 0); the forward-order loop of the backward; layer scaling over all non-batch dims with eps 1e-5
    (this layer reuses ``eps`` for it). float16/bfloat16 inputs are normalized in float32.

    Args:
        num_features: the channel count C.
        alpha_fwd: decay of the forward streams, in [0, 1]. Default: 0.999.
        alpha_bkw: decay of the backward control process, in [0, 1]. Default: 0.99.
        eps: added to the variance stream inside the root (and to the layer-scaling moment). Default: 1e-5.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        layer_scaling: divide each sample by its root mean square over (C, *) after the affine. Default: False.
        sync: in training, run the stream through the samples of the whole ``process_group`` when
            torch.distributed is initialized. Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C), (N, C, L) or (N, C, H, W); output the same shape. Any N >= 1.
    """

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
        eps: float = 1e-5,
        affine: bool = True,
        layer_scaling: bool = False,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.alpha_fwd = check_float("alpha_fwd", alpha_fwd, low=0.0, high=1.0)
        self.alpha_bkw = check_float("alpha_bkw", alpha_bkw, low=0.0, high=1.0)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        self.layer_scaling = bool(layer_scaling)
        _channel.set_sync(self, sync, process_group)
        c = self.num_features
        _channel.add_channel_affine(self, c, self.affine, factory_kwargs)
        _channel.add_running_stats(self, c, True, factory_kwargs, count=False)
        self.register_buffer("error_1", torch.empty(c, **factory_kwargs))
        self.register_buffer("error_y", torch.empty(c, **factory_kwargs))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Streams back to mean 0 and variance 1, accumulators to 0."""
        super().reset_running_stats()
        self.error_1.zero_()
        self.error_y.zero_()

    def reset_parameters(self) -> None:
        """Streams and accumulators reset; weight = 1, bias = 0."""
        super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (2, 3, 4), _channel.LAYOUT_1D_2D)
        return NF.online_norm(
            x,
            self.running_mean,
            self.running_var,
            self.error_1,
            self.error_y,
            self.weight,
            self.bias,
            self.training,
            self.alpha_fwd,
            self.alpha_bkw,
            self.eps,
            self.layer_scaling,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        options = ("alpha_fwd", "alpha_bkw", "eps", "affine", "layer_scaling")
        return _channel.options_repr(self, *options) + _channel.sync_repr(self)
