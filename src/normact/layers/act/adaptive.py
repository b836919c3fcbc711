"""Adaptive activations with learned shape parameters: APA and AGLU, the trainable (diagonal) matrix activation
and the data-adaptive Dice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_channel_input, check_eps, check_float, check_int, check_momentum
from normact.functional.act_adaptive import check_breakpoints
from normact.layers.act._base import Activation, FunctionalActivation
from normact.layers.act._params import add_scalar_or_channel, check_axis, check_dim, fill_tensors
from normact.layers.norm import _channel
from normact.registry import Paper, Param, register

__all__ = ["AGLU", "APA", "Dice", "MatrixActivation"]

ADAPTIVE_PARAMETRIC_ACTIVATION = Paper(
    "Adaptive Parametric Activation (ECCV)", 2024, "2407.08567", "Alexandridis, Deng, Nguyen, Luo"
)
TRAINABLE_MATRIX_ACTIVATION = Paper(
    "Neural networks with trainable matrix activation functions", 2021, "2109.09948", "Liu, Cao, Li, Zikatanov"
)
DEEP_INTEREST_NETWORK = Paper(
    "Deep Interest Network for Click-Through Rate Prediction (KDD)",
    2018,
    "1706.06978",
    "Zhou, Song, Zhu, Fan, Zhu, Ma, Yan, Jin, Li, Gai",
)


# ------------------------------------------------------------------------------------------------- APA, AGLU


class _AdaptiveParametric(FunctionalActivation):
    """Shared body of APA and AGLU: kappa and lambda, one scalar each or one per channel, passed with the channel
    axis to the functional form."""

    __constants__ = ["dim", "channel_axis"]
    _hyperparameters = ("dim", "kappa_init", "lambda_init", "channel_axis")

    def __init__(
        self,
        dim: int | None = None,
        kappa_init: float | None = 1.0,
        lambda_init: float | None = 1.0,
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_dim(dim)
        self.kappa_init = None if kappa_init is None else check_float("kappa_init", kappa_init)
        self.lambda_init = None if lambda_init is None else check_float("lambda_init", lambda_init, positive=True)
        self.channel_axis = check_axis("channel_axis", channel_axis)
        add_scalar_or_channel(self, "kappa", self.dim, device=device, dtype=dtype)
        add_scalar_or_channel(self, "lambda_", self.dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """kappa = kappa_init, lambda = lambda_init; a None init draws U(0, 1) (the official code's)."""
        with torch.no_grad():
            for p, init in ((self.kappa, self.kappa_init), (self.lambda_, self.lambda_init)):
                if init is None:
                    nn.init.uniform_(p, 0.0, 1.0)
                else:
                    p.fill_(init)

    def _functional_args(self) -> list[Any]:
        return [self.kappa, self.lambda_, self.channel_axis]


_APA_DOC = r"""{title} (Alexandridis, Deng, Nguyen & Luo, 2024, arXiv:2407.08567).

    .. math::
        {math}

    :math:`\mathrm{{APA}}` unifies the logistic sigmoid (:math:`\kappa = \lambda = 1`) and the Gumbel CDF
    :math:`\exp(-e^{{-\kappa z}})` (:math:`\lambda \to 0`); :math:`\kappa` sets the slope and :math:`\lambda`
    the asymmetry. Both are learnable, one scalar each (the paper's layer-wise form, the default) or one per
    channel (``dim``; the official code's per-channel variant). As in the official code
    (kostas1515/AGLU README, ``Unified``) :math:`\lambda` is clamped to at least 1e-4 in the forward pass
    and the value is computed stably as :math:`\exp\!\big(-\mathrm{{softplus}}(\ln\lambda - \kappa z)/\lambda\big)`.

    Initial values: the official code draws :math:`\kappa, \lambda \sim U(0, 1)` (README and Ultralytics'
    ``AGLU``; its CIFAR ResNet draws :math:`\kappa \sim U(-1, 0)` and also clamps :math:`\lambda \le 10`,
    :math:`|\kappa| \le 3.5`). normact's default is deterministic, :math:`\kappa = \lambda = 1`
    ({identity}); pass ``kappa_init=None, lambda_init=None`` for the official random draw.

    Args:
        dim: number of channels for per-channel :math:`\kappa, \lambda` along ``channel_axis``; None for one
            scalar each. Default: None.
        kappa_init: initial :math:`\kappa`, or None for U(0, 1). Default: 1.0.
        lambda_init: initial :math:`\lambda` (> 0), or None for U(0, 1). Default: 1.0.
        channel_axis: the channel dimension of the input when ``dim`` is given. Default: -1.

    Shape:
        any shape (with ``dim`` C at ``channel_axis``); the output has the input's shape.
    """

_APA_PARAMS = (
    Param("kappa", "() or (dim,)", "kappa_init = 1 (None: U(0, 1), the official code's)"),
    Param("lambda_", "() or (dim,)", "lambda_init = 1 (None: U(0, 1), the official code's)"),
)


@register(
    "apa",
    kind="act",
    paper=ADAPTIVE_PARAMETRIC_ACTIVATION,
    formula="f(z) = (lambda exp(-kappa z) + 1)^(-1/lambda), lambda clamped >= 1e-4; kappa, lambda learnable",
    functional=NF.apa,
    params=_APA_PARAMS,
    smooth=True,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Sigmoid",),
)
class APA(_AdaptiveParametric):
    __doc__ = _APA_DOC.format(
        title="Adaptive Parametric Activation",
        math=r"\mathrm{APA}(z; \kappa, \lambda) = \left(\lambda e^{-\kappa z} + 1\right)^{-1/\lambda}",
        identity="the logistic sigmoid",
    )

    _functional = staticmethod(NF.apa)


@register(
    "aglu",
    kind="act",
    paper=ADAPTIVE_PARAMETRIC_ACTIVATION,
    formula="f(z) = z * (lambda exp(-kappa z) + 1)^(-1/lambda), lambda clamped >= 1e-4; kappa, lambda learnable",
    functional=NF.aglu,
    params=_APA_PARAMS,
    smooth=True,
    bounded_below=True,
    self_gated=True,
    verified_against=("torch.nn.SiLU",),
)
class AGLU(_AdaptiveParametric):
    __doc__ = _APA_DOC.format(
        title="Adaptive Generalised Linear Unit, AGLU(z) = z APA(z)",
        math=r"\mathrm{AGLU}(z) = z\,\mathrm{APA}(z; \kappa, \lambda) = z \left(\lambda e^{-\kappa z} + 1\right)"
        r"^{-1/\lambda}",
        identity="SiLU",
    )

    _functional = staticmethod(NF.aglu)


# ------------------------------------------------------------------------------------ trainable matrix activation


@register(
    "matrix_activation",
    kind="act",
    paper=TRAINABLE_MATRIX_ACTIVATION,
    formula=(
        "sigma(x) = D(x) x, D(x) = diag(t(x_i)), t(x_i) = t_k on [s_k, s_{k+1}) for fixed breakpoints "
        "s_1 < ... < s_K; levels t learnable, initialised to ReLU (0 below 0, 1 from 0 on)"
    ),
    functional=NF.matrix_activation,
    params=(Param("levels", "(K+1,) or (dim, K+1)", "t_k = 1 if s_k >= 0 else 0 (ReLU)"),),
    aliases=("tmaf",),
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.ReLU", "torch.nn.PReLU"),
)
class MatrixActivation(Activation):
    r"""Trainable diagonal matrix activation (Liu, Cao, Li & Zikatanov, 2021, arXiv:2109.09948).

    .. math::
        \sigma(x) = D(x)\,x, \qquad D(x) = \mathrm{diag}\big(t(x_1), \dots, t(x_n)\big), \qquad
        t(x_i) = t_k \ \text{ for } s_k \le x_i < s_{k+1}

    ReLU written as a matrix-vector product, :math:`\mathrm{ReLU}(x) = \mathrm{diag}(1[x_i \ge 0])\,x`, with
    the 0/1 entries generalised to trainable piecewise-constant functions of the unit's input: fixed
    breakpoints :math:`s_1 < \dots < s_K` (:math:`s_0 = -\infty`, :math:`s_{K+1} = \infty`) and one trainable
    level :math:`t_k` per interval, evaluated with comparisons and scalar multiplications only. The levels
    start as ReLU (:math:`t_k = 1` on intervals at or above 0, 0 below), so 0 must be a breakpoint.
    ``levels`` holds one row per channel (``dim``, the paper's per-unit :math:`t_{i,k}`) or one shared row.

    What is implemented and what is not: the diagonal form above (from the paper's abstract and two
    summaries of its construction). The paper's text and any official code could not be read here, so its
    other variants (a tridiagonal matrix coupling neighbouring units) and the breakpoints of its experiments
    are not implemented; the default breakpoints ``(0.0,)`` are the minimal partition (PReLU with a learnable
    positive slope too), not the paper's. Breakpoints are fixed hyperparameters: the output's derivative with
    respect to a breakpoint is zero almost everywhere, so gradient descent could not move them. The function
    is discontinuous at a breakpoint :math:`s \ne 0` once the neighbouring levels differ. At a breakpoint
    :math:`s_k` the derivative is the level above it, :math:`t_k` (1 at 0 initially, as the interval
    :math:`s_k \le x < s_{k+1}` holds the point).

    Args:
        dim: number of channels (one row of levels each) along ``channel_axis``; None for one shared row.
            Default: None.
        breakpoints: the strictly increasing breakpoints, containing 0. Default: ``(0.0,)``.
        channel_axis: the channel dimension of the input when ``dim`` is given. Default: -1.

    Shape:
        any shape (with ``dim`` C at ``channel_axis``); the output has the input's shape.
    """

    __constants__ = ["dim", "breakpoints", "channel_axis"]
    _hyperparameters = ("dim", "breakpoints", "channel_axis")

    def __init__(
        self,
        dim: int | None = None,
        breakpoints: Sequence[float] = (0.0,),
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_dim(dim)
        self.breakpoints = check_breakpoints(breakpoints)
        if 0.0 not in self.breakpoints:
            raise ValueError(f"breakpoints must contain 0 (the ReLU initialisation), got {self.breakpoints}")
        self.channel_axis = check_axis("channel_axis", channel_axis)
        shape = (len(self.breakpoints) + 1,) if self.dim is None else (self.dim, len(self.breakpoints) + 1)
        self.levels = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """levels = ReLU: 1 on the intervals [s_k, s_{k+1}) with s_k >= 0, 0 below."""
        relu = [0.0] + [1.0 if s >= 0 else 0.0 for s in self.breakpoints]
        fill_tensors(self, levels=relu)

    def forward(self, x: Tensor) -> Tensor:
        return NF.matrix_activation(x, self.levels, self.breakpoints, self.channel_axis)


# ------------------------------------------------------------------------------------------------------ Dice


@register(
    "dice",
    kind="act",
    paper=DEEP_INTEREST_NETWORK,
    formula=(
        "f(s) = p(s) s + (1 - p(s)) alpha s, p(s) = sigmoid((s - E[s]) / sqrt(Var[s] + eps)); E, Var per channel "
        "over the batch in training (running averages updated with momentum, unbiased variance, BatchNorm's "
        "convention), the running statistics in eval; alpha learnable per channel, init 0; eps = 1e-8"
    ),
    functional=NF.dice,
    params=(
        Param("alpha", "(dim,)", "0"),
        Param("running_mean", "(dim,)", "0", buffer=True),
        Param("running_var", "(dim,)", "1", buffer=True),
        Param("num_batches_tracked", "()", "0", buffer=True),
    ),
    batch_dependent=True,
    stateful=True,
    smooth=True,
    bounded_below=True,
    self_gated=True,
    verified_against=("torch.nn.BatchNorm1d",),
)
class Dice(Activation):
    r"""Dice, the data-adaptive activation of the Deep Interest Network (Zhou et al., 2018, arXiv:1706.06978).

    .. math::
        f(s) = p(s)\,s + \big(1 - p(s)\big)\,\alpha\,s, \qquad
        p(s) = \frac{1}{1 + e^{-(s - \mathrm{E}[s]) / \sqrt{\mathrm{Var}[s] + \epsilon}}}

    PReLU with its hard switch :math:`1[s > 0]` replaced by a smooth one centred at the data's mean: in
    training :math:`\mathrm{E}[s]` and :math:`\mathrm{Var}[s]` are the mean and (biased) variance of each
    channel over the mini-batch (and any trailing dims), in evaluation moving averages of them. :math:`\alpha`
    is learnable per channel, initialised to 0 (the official TF code, zhougr1993/DeepInterestNetwork
    ``din/Dice.py``); :math:`\epsilon = 10^{-8}` (the paper's value). :math:`\alpha = 1` is the identity;
    as :math:`\mathrm{Var} \to 0` with :math:`\mathrm{E} = 0` Dice tends to PReLU with slope :math:`\alpha`.

    Running statistics follow ``torch.nn.BatchNorm1d`` exactly (what the tests check): ``r = (1 - momentum) r
    + momentum s`` with the unbiased batch variance, ``momentum=None`` for a cumulative average,
    ``running_mean = 0`` and ``running_var = 1`` initially, the same state-dict keys. In torch's convention
    ``momentum`` weighs the new batch; the official code's ``tf.layers.batch_normalization`` uses TF's
    convention (``momentum`` = 0.99 weighs the old average), which is ``momentum=0.01`` here.

    Deliberate differences from the official code, which follows the paper's formula except that it
    normalizes with ``tf.layers.batch_normalization`` (its own epsilon 1e-3, and ``training`` left at its
    default) and multiplies the normalized input by a second learnable ``beta`` initialised to 0 (so that
    :math:`p = 1/2` at the start): normact implements the paper's formula, with :math:`\epsilon = 10^{-8}`,
    batch statistics in training and running statistics in evaluation, and no ``beta``.

    Args:
        dim: the channel count C (dim 1 of the input). Default: 1.
        eps: added to the variance inside the square root. Default: 1e-8.
        momentum: running-average factor in [0, 1], or None for a cumulative average. Default: 0.1.
        alpha_init: initial :math:`\alpha`. Default: 0.0.
        sync: in training, combine the batch moments over ``process_group`` when torch.distributed is
            initialized (see ``normact.distributed``). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input ``(N, C, *)``; output the same shape. Training needs N x trailing dims > 1.
    """

    __constants__ = ["dim", "eps", "momentum"]

    def __init__(
        self,
        dim: int = 1,
        eps: float = 1e-8,
        momentum: float | None = 0.1,
        alpha_init: float = 0.0,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.dim = check_int("dim", dim)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.alpha_init = check_float("alpha_init", alpha_init)
        self.sync = bool(sync)
        self.process_group = process_group
        self.alpha = nn.Parameter(torch.empty(self.dim, **factory_kwargs))
        _channel.add_running_stats(self, self.dim, True, factory_kwargs, count=True)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        _channel.reset_running_stats(self)

    def reset_parameters(self) -> None:
        """Running statistics reset; alpha = alpha_init."""
        self.reset_running_stats()
        fill_tensors(self, alpha=self.alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, "Dice", self.dim, min_rank=2, layout="(N, {C}, *)")
        momentum = _channel.momentum_factor(self) if self.training else 0.0
        return NF.dice(
            x,
            self.alpha,
            self.running_mean,
            self.running_var,
            self.training,
            momentum,
            self.eps,
            self.sync,
            self.process_group,
        )

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}" + _channel.sync_repr(self)
