"""Frequency-domain normalizations of "Decompose, Adjust, Compose" (Lee, Bae & Kim, CVPR 2023, arXiv:2303.02328):
PCNorm, CCNorm and SCNorm.

A 2-D DFT per channel splits a feature map into amplitude (style) and phase (content). PCNorm takes the amplitude
of the batch-normalized map and the phase of the input; CCNorm interpolates the phase source between the input
(PCNorm) and the mean-subtracted input (BatchNorm); SCNorm interpolates the amplitude between the instance-
normalized map and the input, keeping the input's phase. PCNorm and CCNorm take ``sync=`` / ``process_group=``
for data parallelism (batch moments through :func:`normact.distributed.batch_moments`).

What comes from where: the names, the amplitude/phase (style/content) decomposition and the purpose of each
variant are the paper's (abstract; its method section was not available to us). PCNorm's formula, the
parameterizations of the mixing (a softmax with temperature over two learnable logits, 1e-6 for CCNorm and 0.1
for SCNorm), CCNorm's use of the BN mean, SCNorm's use of instance normalization, the placement of the affine
after the composition and the initial values were read in the authors' code (github.com/sangrokleeeeee/DAC,
``model.py``: ``pcnorm``, ``ccnorm``, ``SCNorm``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_float, check_int
from normact.layers.norm import _channel
from normact.layers.norm._running import RunningStatsNorm
from normact.registry import Paper, Param, register

__all__ = ["CCNorm", "PCNorm", "SCNorm"]

DAC = Paper(
    "Decompose, Adjust, Compose: Effective Normalization by Playing with Frequency for Domain Generalization",
    2023,
    "2303.02328",
    "Lee, Bae, Kim",
)


_BN_PARAMS = (
    *_channel.AFFINE_PARAMS,
    Param("running_mean", "(C,)", "0 (track_running_stats=True only)", buffer=True),
    Param("running_var", "(C,)", "1 (track_running_stats=True only)", buffer=True),
    Param("num_batches_tracked", "()", "0 (track_running_stats=True only)", buffer=True),
)


# --------------------------------------------------------------------------------------------------- PCNorm


@register(
    "pcnorm",
    kind="norm",
    paper=DAC,
    formula=(
        "y = irfft2(|rfft2(BN(x))| * exp(i * angle(rfft2(x)))) * weight + bias per sample and channel over (H, W); "
        "BN without affine: batch statistics over (N, H, W) in training (running statistics updated with "
        "momentum, unbiased variance), running statistics in eval; exp(i angle z) := z / max(|z|, sqrt(tiny))"
    ),
    functional=NF.pc_norm,
    params=_BN_PARAMS,
    batch_dependent=True,
    stateful=True,
    smooth=False,
)
class PCNorm(RunningStatsNorm):
    r"""PCNorm, phase-consistent normalization (Lee, Bae & Kim, 2023, arXiv:2303.02328) of (N, C, H, W) inputs.

    .. math::
        y = \mathcal{F}^{-1}\!\Big(\big|\mathcal{F}(\mathrm{BN}(x))\big|\; e^{\,i\angle \mathcal{F}(x)}\Big)
            \odot \gamma + \beta

    :math:`\mathcal{F}` is the 2-D DFT of each sample's channel over (H, W) (computed as ``rfft2``/``irfft2``:
    the composed spectrum is Hermitian, so the output is real). The amplitude (style) comes from the batch-
    normalized map, the phase (content) from the input, so normalization removes style without changing
    content (the paper's abstract). BN has no affine here: batch mean and biased variance over (N, H, W) in training
    (``eps`` inside the root; running statistics updated with ``momentum`` and the unbiased variance, as in
    ``torch.nn.BatchNorm2d``), the running statistics in evaluation; the affine :math:`\gamma, \beta` is
    applied to the composed map, as in the authors' ``pcnorm`` (github.com/sangrokleeeeee/DAC, ``model.py``).

    Since subtracting a per-channel constant changes only the zero frequency and dividing by
    :math:`\sigma > 0` no phase, PCNorm equals BatchNorm except for each map's spatial mean :math:`m`, which
    becomes :math:`\mathrm{sign}(m)\,|m - \mu| / \sigma` instead of :math:`(m - \mu)/\sigma`. It is therefore
    discontinuous where a map's mean crosses 0 (``smooth=False``).

    Phase of a zero amplitude: :math:`e^{i\angle z} := z / \max(|z|, \tau)`, :math:`\tau = \sqrt{\text{tiny}}`
    of the computation dtype, so that constant inputs have finite gradients. Deliberate differences from the
    authors' code, which floors squared amplitudes and real parts below 1e-5 (``replace_denormals``): the
    amplitude here is exactly :math:`|\mathcal{F}(\mathrm{BN}(x))|` and the phase exact wherever
    :math:`|\mathcal{F}(x)| \ge \tau`. float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep running statistics and use them in eval; if False, batch statistics are
            used in eval too. Default: True.
        sync: combine the batch moments over ``process_group`` when torch.distributed is initialized.
            Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, H, W); output the same shape. Batch statistics need N * H * W > 1.
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
        factory_kwargs = {"device": device, "dtype": dtype}
        self._init_batch_norm(
            num_features, eps, momentum, affine, track_running_stats, sync, process_group, factory_kwargs
        )
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        momentum = self._update_factor()
        return NF.pc_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.batch_norm_repr(self)


# --------------------------------------------------------------------------------------------------- CCNorm


@register(
    "ccnorm",
    kind="norm",
    paper=DAC,
    formula=(
        "y = irfft2(|rfft2(BN(x))| * exp(i * angle(rfft2(x - lambda * mu)))) * weight + bias, "
        "lambda = sigmoid(mix_logit / temperature), mu the mean BN subtracts (batch mean in training, running "
        "mean in eval); lambda = 0: PCNorm, lambda = 1: BatchNorm"
    ),
    functional=NF.cc_norm,
    params=(*_BN_PARAMS, Param("mix_logit", "()", "0 (lambda = 0.5)")),
    batch_dependent=True,
    stateful=True,
    smooth=False,
)
class CCNorm(RunningStatsNorm):
    r"""CCNorm, content-controlling normalization (Lee, Bae & Kim, 2023, arXiv:2303.02328) of (N, C, H, W) inputs.

    .. math::
        y = \mathcal{F}^{-1}\!\Big(\big|\mathcal{F}(\mathrm{BN}(x))\big|\;
            e^{\,i\angle \mathcal{F}(x - \lambda\mu)}\Big) \odot \gamma + \beta, \qquad
        \lambda = \mathrm{sigmoid}(h / T)

    PCNorm with a learnable degree of content change: the phase is taken from :math:`x - \lambda\mu`, where
    :math:`\mu` is the per-channel mean that BN subtracts (the batch mean over (N, H, W) in training, over the
    process group with ``sync``; the running mean in evaluation). :math:`\lambda = 0` is PCNorm (the input's
    phase) and :math:`\lambda = 1` is BatchNorm (BN's own phase, :math:`\angle\mathcal{F}(x - \mu)`); only the
    zero frequency depends on :math:`\lambda`. BN, the affine and the zero-amplitude phase are as in
    :class:`PCNorm`.

    From the authors' ``ccnorm`` (github.com/sangrokleeeeee/DAC, ``model.py``): :math:`\lambda` is the first
    entry of a softmax with temperature :math:`T = 10^{-6}` over two learnable logits initialized to 0, one
    pair per layer (shared by the channels). A softmax of two entries is a sigmoid of their difference, so this
    layer learns that difference, :math:`h` = ``mix_logit`` (a scalar, init 0, so :math:`\lambda = 0.5` at
    first), which is the same function with one parameter fewer. With the default temperature :math:`\lambda`
    saturates to 0 or 1 within a few updates (a learned choice between PCNorm and BatchNorm); a larger
    ``temperature`` gives a soft mix.

    Args:
        num_features: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-5.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        track_running_stats: keep running statistics and use them in eval; if False, batch statistics are
            used in eval too. Default: True.
        temperature: T > 0 of :math:`\lambda = \mathrm{sigmoid}(h/T)`. Default: 1e-6 (the authors' code).
        sync: combine the batch moments over ``process_group`` when torch.distributed is initialized.
            Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input (N, C, H, W); output the same shape. Batch statistics need N * H * W > 1.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        temperature: float = 1e-6,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self._init_batch_norm(
            num_features, eps, momentum, affine, track_running_stats, sync, process_group, factory_kwargs
        )
        self.temperature = check_float("temperature", temperature, positive=True)
        self.mix_logit = nn.Parameter(torch.empty((), **factory_kwargs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Running statistics reset; weight = 1, bias = 0, mix_logit = 0."""
        super().reset_parameters()
        nn.init.zeros_(self.mix_logit)

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        momentum = self._update_factor()
        return NF.cc_norm(
            x,
            self.running_mean,
            self.running_var,
            self.mix_logit,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
            self.temperature,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return _channel.batch_norm_repr(self) + f", temperature={self.temperature}"


# --------------------------------------------------------------------------------------------------- SCNorm


@register(
    "scnorm",
    kind="norm",
    paper=DAC,
    formula=(
        "y = irfft2((lambda * |rfft2(IN(x))| + (1 - lambda) * |rfft2(x)|) * exp(i * angle(rfft2(x)))) * weight "
        "+ bias, lambda = sigmoid(mix_logit / temperature), IN without affine per sample and channel over (H, W) "
        "(biased variance, eps inside the root)"
    ),
    functional=NF.sc_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("mix_logit", "()", "0 (lambda = 0.5)"),
    ),
    smooth=False,
)
class SCNorm(nn.Module):
    r"""SCNorm, style-controlling normalization (Lee, Bae & Kim, 2023, arXiv:2303.02328) of (N, C, H, W) inputs.

    .. math::
        y = \mathcal{F}^{-1}\!\Big(\big(\lambda\,|\mathcal{F}(\mathrm{IN}(x))| + (1 - \lambda)\,|\mathcal{F}(x)|\big)
            \; e^{\,i\angle \mathcal{F}(x)}\Big) \odot \gamma + \beta, \qquad \lambda = \mathrm{sigmoid}(h / T)

    A learnable degree of style removal: the amplitude is a mix of the instance-normalized map's and the
    input's, the phase is the input's. IN has no affine: per sample and channel over (H, W), biased variance,
    ``eps`` inside the root, the same in training and evaluation (no running statistics, no batch
    dependence). Mathematically the layer equals :math:`(\lambda\,\mathrm{IN}(x) + (1-\lambda)\,x)\odot\gamma +
    \beta` (IN changes only the zero frequency, which it sets to 0, and scales the others by
    :math:`1/\sigma > 0`); the spectral form is computed as the paper defines it.

    From the authors' ``SCNorm`` module (github.com/sangrokleeeeee/DAC, ``model.py``, used after ResNet stages
    1-3 in DAC-SC): instance normalization (``F.instance_norm``, eps 1e-5), :math:`\lambda` the first entry of a
    softmax with temperature :math:`T = 0.1` over two learnable logits initialized to 0, and a per-channel
    affine (init 1 and 0) applied to the composed map. This layer learns the logits' difference
    :math:`h` = ``mix_logit`` (a scalar, init 0, so :math:`\lambda = 0.5`), the same function. The zero-amplitude
    phase is :math:`z/\max(|z|, \sqrt{\text{tiny}})` as in :class:`PCNorm`; the authors' amplitude and real-part
    floors of 1e-5 are not reproduced. float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C.
        eps: added to the instance variance inside the square root. Default: 1e-5.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        temperature: T > 0 of :math:`\lambda = \mathrm{sigmoid}(h/T)`. Default: 0.1 (the authors' code).

    Shape:
        Input (N, C, H, W); output the same shape.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        temperature: float = 0.1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.eps = check_eps(eps)
        self.affine = bool(affine)
        self.temperature = check_float("temperature", temperature, positive=True)
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs)
        self.mix_logit = nn.Parameter(torch.empty((), **factory_kwargs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0, mix_logit = 0."""
        _channel.reset_channel_affine(self)
        nn.init.zeros_(self.mix_logit)

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (4,), _channel.LAYOUT_2D)
        return NF.sc_norm(x, self.mix_logit, self.weight, self.bias, self.eps, self.temperature)

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "eps", "affine", "temperature")
