"""Smoothed and corrected ReLUs: SmeLU (a quadratic bridge between the two pieces of ReLU), CRReLU (ReLU plus a
learnable Gaussian-damped correction) and VeLU (a variance-adaptive ArcTan-ArcSin gate)."""

from __future__ import annotations

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_eps, check_float
from normact.layers.act._base import Activation, FunctionalActivation
from normact.layers.act._params import add_scalar_or_channel, check_axis, check_dim, fill_tensors
from normact.registry import Paper, Param, register

__all__ = ["CRReLU", "SmeLU", "VeLU"]

SMELU_PAPER = Paper(
    "Smooth activations and reproducibility in deep networks",
    2020,
    "2010.09931",
    "Shamir, Lin, Coviello",
)
CRRELU_PAPER = Paper(
    "A Method on Searching Better Activation Functions (EAFO; Correction Regularized ReLU)",
    2024,
    "2405.12954",
    "Sun, Wu, Xia, Chang, Dong, Yuan, Chang, Wang",
)
VELU_PAPER = Paper(
    "VeLU: Variance-enhanced Learning Unit for Deep Neural Networks",
    2025,
    "2504.15051",
    "Shakarami, Yeganeh, Farshad, Nicolè, Ghidoni, Navab",
)


@register(
    "smelu",
    kind="act",
    paper=SMELU_PAPER,
    formula="f(x) = 0 if x <= -beta; (x + beta)^2 / (4 beta) if |x| <= beta; x if x >= beta; beta = 1",
    functional=NF.smelu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
)
class SmeLU(FunctionalActivation):
    r"""Smooth ReLU (Shamir, Lin & Coviello, 2020, arXiv:2010.09931).

    .. math::
        f(x) = \begin{cases} 0 & x \le -\beta \\ \dfrac{(x + \beta)^2}{4\beta} & |x| \le \beta \\
        x & x \ge \beta \end{cases}

    ReLU with its corner replaced by the quadratic that matches value and slope at :math:`\pm\beta` (ReLU
    convolved with a box of width :math:`2\beta`): continuously differentiable, monotonic, :math:`f(0) = \beta/4`,
    and ReLU as :math:`\beta \to 0`. Its second derivative jumps at :math:`\pm\beta` (0, :math:`1/(2\beta)`, 0),
    so it is not registered as smooth; its derivative there is 0 at :math:`-\beta` and 1 at :math:`\beta`
    from either piece. The paper sweeps :math:`\beta` and fixes no single value; the default
    :math:`\beta = 1` (transition on :math:`[-1, 1]`) is this library's choice.

    Args:
        beta: the half-width of the quadratic transition (> 0). Default: 1.0.

    Shape:
        any; the output has the input's shape and dtype.
    """

    __constants__ = ["beta"]
    _hyperparameters = ("beta",)
    _functional = staticmethod(NF.smelu)

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.beta = check_float("beta", beta, positive=True)


@register(
    "crrelu",
    kind="act",
    paper=CRRELU_PAPER,
    formula="f(x) = max(0, x) + epsilon * x * exp(-x^2 / 2), epsilon learnable (a scalar, or one per channel)",
    functional=NF.crrelu,
    params=(Param("epsilon", "() or (dim,)", "epsilon_init = 0.01"),),
    smooth=False,
    monotonic=False,
    bounded_below=True,
)
class CRReLU(Activation):
    r"""Correction Regularized ReLU (Sun, Wu, Xia, Chang, Dong, Yuan, Chang & Wang, 2024, arXiv:2405.12954).

    .. math::
        f(x) = \max(0, x) + \varepsilon\, x\, e^{-x^2/2}

    The correction that the paper's entropy-based optimization (EAFO) derives from ReLU, with a learnable
    :math:`\varepsilon` initialized to 0.01 (one scalar by default, as in the paper; one per channel with
    ``dim``). The one-sided derivatives at 0 are :math:`\varepsilon` and :math:`1 + \varepsilon`; exactly at 0
    it is :math:`\varepsilon` (ReLU's derivative there is torch.relu's, 0); for
    :math:`\varepsilon > 0` the function dips to :math:`-\varepsilon e^{-1/2}` at :math:`x = -1` (bounded below,
    not monotonic) and tends to ReLU as :math:`|x| \to \infty`. No official code was found; the formula and
    initial value agree with the paper's abstract-level description and public re-implementations.

    Args:
        dim: number of channels for a per-channel :math:`\varepsilon` along ``channel_axis``; None for one scalar.
            Default: None.
        epsilon_init: initial :math:`\varepsilon`. Default: 0.01.
        learnable: learn :math:`\varepsilon` (otherwise it is a fixed buffer). Default: True.
        channel_axis: the channel dimension of the input when ``dim`` is given (-1 for ``(*, C)``,
            1 for ``(N, C, *)``). Default: -1.

    Shape:
        any (``(..., C, ...)`` with ``dim``); the output has the input's shape and dtype.
    """

    __constants__ = ["dim", "learnable", "channel_axis"]
    _hyperparameters = ("dim", "epsilon_init", "learnable", "channel_axis")

    def __init__(
        self,
        dim: int | None = None,
        epsilon_init: float = 0.01,
        learnable: bool = True,
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_dim(dim)
        self.epsilon_init = check_float("epsilon_init", epsilon_init)
        self.learnable = bool(learnable)
        self.channel_axis = check_axis("channel_axis", channel_axis)
        add_scalar_or_channel(self, "epsilon", self.dim, self.learnable, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """epsilon = epsilon_init."""
        fill_tensors(self, epsilon=self.epsilon_init)

    def forward(self, x: Tensor) -> Tensor:
        return NF.crrelu(x, self.epsilon, self.channel_axis)


@register(
    "velu",
    kind="act",
    paper=VELU_PAPER,
    formula=(
        "f(x) = lambda * x * sigmoid(alpha * (atan(beta1 x) + asin(clip(beta2 x, -1, 1)))) "
        "* (1 + gamma * tanh(momentum / sqrt(mean_last_dim(x^2) + eps))); alpha = beta1 = beta2 = gamma = 0.1, "
        "momentum = 0.9, eps = 1e-6, lambda learnable (init 1)"
    ),
    functional=NF.velu,
    params=(Param("lambd", "()", "1"),),
    smooth=False,
    monotonic=False,
    bounded_below=False,
    self_gated=True,
    elementwise=False,
)
class VeLU(Activation):
    r"""Variance-enhanced Learning Unit (Shakarami, Yeganeh, Farshad, Nicolè, Ghidoni & Navab, 2025,
    arXiv:2504.15051).

    .. math::
        s = \Big(\tfrac1D \textstyle\sum_{d=1}^{D} x_d^2 + \epsilon\Big)^{-1/2}, \qquad
        f(x) = \lambda\, x\, \sigma\big(\alpha\,[\arctan(\beta_1 x) + \arcsin(\mathrm{clip}(\beta_2 x, -1, 1))]\big)
        \,\big(1 + \gamma \tanh(m\, s)\big)

    The official implementation's forward (AshkanShakarami/VeLU, ``VeLU.ipynb``, Keras layer ``Velu``), with its
    defaults :math:`\alpha = \beta_1 = \beta_2 = \gamma = 0.1`, :math:`m` (``momentum``) :math:`= 0.9`,
    :math:`\epsilon = 10^{-6}` and one learnable scalar :math:`\lambda` initialized to 1 (the code's
    ``lambda_``; ``learnable=False`` fixes it, as the paper's v2 abstract, "without adding learnable
    parameters", describes). :math:`s` is the reciprocal root mean square of each row over the **last**
    dimension (the code calls it ``std_dev`` of a ``variance``), so VeLU is not elementwise: each element's scale
    depends on its row. The clip makes :math:`f` non-differentiable at :math:`|x| = 1/\beta_2` (10 by default),
    where the arcsine's one-sided slope is infinite; the derivative there is taken from outside (0 for the
    arcsine term). Not monotonic (the arcsine's steep slope near :math:`x = -1/\beta_2` turns the product down)
    and unbounded below (slope :math:`\lambda\sigma(-\alpha\pi)\cdot(1 + \gamma\tanh(m s))` as
    :math:`x \to -\infty`).

    The official layer also adds :math:`\lambda_{ot}\,W_2^2(N(\mu, \sigma^2), N(0, 1)) = \lambda_{ot}(\mu^2 +
    (\sigma - 1)^2)` of its pre-:math:`\lambda` output to the model's loss (Keras ``add_loss``). torch has no such
    mechanism, so the penalty is not added implicitly: :meth:`w2_penalty` computes it for the loss.

    Args:
        alpha, beta1, beta2, gamma: the gate's constants (> 0). Default: 0.1 each.
        momentum: :math:`m`, the scale inside the tanh of the adaptive factor (> 0). Default: 0.9.
        lambda_ot: the weight of the Wasserstein-2 penalty returned by :meth:`w2_penalty` (>= 0). Default: 0.1.
        eps: added to the mean square (> 0). Default: 1e-6.
        learnable: learn :math:`\lambda` (otherwise it is a fixed buffer). Default: True.

    Shape:
        ``(*, D)`` with at least one dimension; the output has the input's shape and dtype.
    """

    __constants__ = ["alpha", "beta1", "beta2", "gamma", "momentum", "lambda_ot", "eps", "learnable"]
    _hyperparameters = ("alpha", "beta1", "beta2", "gamma", "momentum", "lambda_ot", "eps", "learnable")

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        beta1: float = 0.1,
        beta2: float = 0.1,
        gamma: float = 0.1,
        momentum: float = 0.9,
        lambda_ot: float = 0.1,
        eps: float = 1e-6,
        learnable: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.alpha = check_float("alpha", alpha, positive=True)
        self.beta1 = check_float("beta1", beta1, positive=True)
        self.beta2 = check_float("beta2", beta2, positive=True)
        self.gamma = check_float("gamma", gamma, positive=True)
        self.momentum = check_float("momentum", momentum, positive=True)
        self.lambda_ot = check_float("lambda_ot", lambda_ot, nonnegative=True)
        self.eps = check_eps(eps)
        self.learnable = bool(learnable)
        add_scalar_or_channel(self, "lambd", dim=None, learnable=self.learnable, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """lambd = 1."""
        fill_tensors(self, lambd=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return NF.velu(x, self.lambd, self.alpha, self.beta1, self.beta2, self.gamma, self.momentum, self.eps)

    def w2_penalty(self, x: Tensor) -> Tensor:
        r""":math:`\lambda_{ot}\,(\mu^2 + (\sigma - 1)^2)` of the pre-:math:`\lambda` activation of ``x`` (the
        official layer's ``add_loss`` term; mean and population std over all elements). Recomputes the
        activation: call it on the layer's input and add the result to the training loss."""
        activation = NF.velu(x, 1.0, self.alpha, self.beta1, self.beta2, self.gamma, self.momentum, self.eps)
        return self.lambda_ot * NF.velu_w2_penalty(activation)
