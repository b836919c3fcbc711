"""Smooth and sigmoidal activations with torch.nn's arguments and semantics (Sigmoid, Tanh, LogSigmoid,
Softplus, Softsign, Hardsigmoid, Hardswish), and the sigmoid approximation of GELU, x * sigmoid(1.702 x)."""

from __future__ import annotations

from normact import functional as NF
from normact._checks import check_float
from normact.layers import papers
from normact.layers.act._base import FunctionalActivation, InplaceActivation
from normact.registry import Paper, register

__all__ = [
    "GELUSigmoid",
    "Hardsigmoid",
    "Hardswish",
    "LogSigmoid",
    "Sigmoid",
    "Softplus",
    "Softsign",
    "Tanh",
]

EFFICIENT_BACKPROP = Paper(
    "Efficient BackProp (Neural Networks: Tricks of the Trade, LNCS 1524)",
    1998,
    None,
    "LeCun, Bottou, Orr, Müller",
)
SOFTPLUS = Paper(
    "Incorporating Second-Order Functional Knowledge for Better Option Pricing (NIPS 13)",
    2001,
    None,
    "Dugas, Bengio, Bélisle, Nadeau, Garcia",
)
SOFTSIGN = Paper(
    "Understanding the Difficulty of Training Deep Feedforward Neural Networks (AISTATS)",
    2010,
    None,
    "Glorot, Bengio",
)
MOBILENET_V3 = Paper(
    "Searching for MobileNetV3",
    2019,
    "1905.02244",
    "Howard, Sandler, Chu, Chen, Chen, Tan, Wang, Zhu, Pang, Vasudevan, Le, Adam",
)


@register(
    "sigmoid",
    kind="act",
    paper=EFFICIENT_BACKPROP,
    formula="f(x) = 1 / (1 + e^(-x))",
    functional=NF.sigmoid,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Sigmoid",),
)
class Sigmoid(FunctionalActivation):
    r"""Logistic sigmoid (classic; see LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998; no arXiv id).

    .. math::
        \sigma(x) = \frac{1}{1 + e^{-x}}

    As ``torch.nn.Sigmoid``. Smooth, increasing, with values in (0, 1) and :math:`\sigma(0) = 1/2`; not
    zero-centred (``normact.gaussian_moments("sigmoid").mean`` is 1/2).

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.sigmoid)


@register(
    "tanh",
    kind="act",
    paper=EFFICIENT_BACKPROP,
    formula="f(x) = tanh(x) = (e^x - e^(-x)) / (e^x + e^(-x))",
    functional=NF.tanh,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Tanh",),
)
class Tanh(FunctionalActivation):
    r"""Hyperbolic tangent (classic; see LeCun, Bottou, Orr & Müller, "Efficient BackProp", 1998; no arXiv id).

    .. math::
        f(x) = \tanh(x) = \frac{e^x - e^{-x}}{e^x + e^{-x}} = 2\sigma(2x) - 1

    As ``torch.nn.Tanh``: the plain tanh, not the scaled :math:`1.7159 \tanh(2x/3)` that Efficient BackProp
    recommends. Odd, so zero-centred under a symmetric input distribution; values in (-1, 1).

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.tanh)


@register(
    "logsigmoid",
    kind="act",
    paper=EFFICIENT_BACKPROP,
    formula="f(x) = log(1 / (1 + e^(-x))) = -softplus(-x)",
    functional=NF.logsigmoid,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.LogSigmoid",),
)
class LogSigmoid(FunctionalActivation):
    r"""Log-sigmoid, the logarithm of the logistic sigmoid (classic; the sigmoid as in LeCun, Bottou, Orr &
    Müller, "Efficient BackProp", 1998; no arXiv id).

    .. math::
        f(x) = \log \sigma(x) = \log \frac{1}{1 + e^{-x}} = -\mathrm{softplus}(-x)

    As ``torch.nn.LogSigmoid`` (computed stably: :math:`\min(x, 0) - \log(1 + e^{-|x|})`). Increasing,
    negative, :math:`f(x) \approx x` for :math:`x \to -\infty`, so not bounded below.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.logsigmoid)


@register(
    "softplus",
    kind="act",
    paper=SOFTPLUS,
    formula="f(x) = log(1 + e^(beta x)) / beta, and x where beta x > threshold; beta = 1, threshold = 20",
    functional=NF.softplus,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Softplus",),
)
class Softplus(FunctionalActivation):
    r"""Softplus (Dugas, Bengio, Bélisle, Nadeau & Garcia, 2001; no arXiv id).

    .. math::
        f(x) = \begin{cases} \frac{1}{\beta} \log(1 + e^{\beta x}) & \beta x \le \text{threshold} \\
        x & \beta x > \text{threshold} \end{cases}

    With torch's semantics and defaults (``torch.nn.Softplus``, :math:`\beta = 1`, threshold 20): above the
    threshold torch returns :math:`x` itself (its "linear region", for numerical stability). Softplus is
    infinitely differentiable (registered ``smooth``); the switch at :math:`x = \text{threshold}/\beta` moves
    the value by :math:`\log(1 + e^{-\text{threshold}})/\beta` (2.1e-9 at the defaults, below float32's
    resolution at :math:`x = 20`) and the slope by :math:`\sigma(-\text{threshold}) \approx 2.1\text{e-}9`.
    Deliberate difference from torch: ``beta`` and ``threshold`` must be > 0 (torch accepts any float, and
    ``beta = 0`` divides by zero).

    Args:
        beta: the sharpness :math:`\beta` (> 0). Default: 1.0.
        threshold: :math:`\beta x` above which the output is :math:`x` (> 0). Default: 20.0.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["beta", "threshold"]
    _hyperparameters = ("beta", "threshold")
    _functional = staticmethod(NF.softplus)

    def __init__(self, beta: float = 1.0, threshold: float = 20.0) -> None:
        super().__init__()
        self.beta = check_float("beta", beta, positive=True)
        self.threshold = check_float("threshold", threshold, positive=True)


@register(
    "softsign",
    kind="act",
    paper=SOFTSIGN,
    formula="f(x) = x / (1 + |x|)",
    functional=NF.softsign,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Softsign",),
)
class Softsign(FunctionalActivation):
    r"""Softsign (Glorot & Bengio, 2010, AISTATS; no arXiv id; introduced by Bergstra, Desjardins, Lamblin &
    Bengio, 2009).

    .. math::
        f(x) = \frac{x}{1 + |x|}, \qquad f'(x) = \frac{1}{(1 + |x|)^2}

    As ``torch.nn.Softsign``. Odd, increasing, values in (-1, 1), approaching them polynomially rather than
    exponentially as tanh does. Continuously differentiable but not twice: :math:`f''(x) =
    -2\,\mathrm{sign}(x)/(1 + |x|)^3` jumps at 0, so it is registered ``smooth=False`` with 0 as its kink.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.softsign)


@register(
    "hardsigmoid",
    kind="act",
    paper=MOBILENET_V3,
    formula="f(x) = ReLU6(x + 3) / 6 = min(max(x + 3, 0), 6) / 6",
    functional=NF.hardsigmoid,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Hardsigmoid",),
)
class Hardsigmoid(InplaceActivation):
    r"""Hard sigmoid, the piecewise-linear sigmoid of MobileNetV3 (Howard et al., 2019, arXiv:1905.02244).

    .. math::
        f(x) = \frac{\mathrm{ReLU6}(x + 3)}{6} = \begin{cases} 0 & x \le -3 \\ x/6 + 1/2 & -3 < x < 3 \\
        1 & x \ge 3 \end{cases}

    As ``torch.nn.Hardsigmoid`` (the paper's h-sigmoid): the same values in every dtype and the same
    derivative convention at the kinks :math:`x = \pm 3` (0 there); deliberate difference: the float64
    derivative is 1/6 to double precision, where torch's CPU backward uses 1/6 rounded to float32. Other "hard
    sigmoids" in the literature (slope 1/4 or 1/5) are different functions.

    Args:
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.hardsigmoid)


@register(
    "hardswish",
    kind="act",
    paper=MOBILENET_V3,
    formula="f(x) = x * ReLU6(x + 3) / 6",
    functional=NF.hardswish,
    smooth=False,
    monotonic=False,
    bounded_below=True,
    self_gated=True,
    verified_against=("torch.nn.Hardswish",),
)
class Hardswish(InplaceActivation):
    r"""Hard swish of MobileNetV3 (Howard et al., 2019, arXiv:1905.02244).

    .. math::
        f(x) = x\,\frac{\mathrm{ReLU6}(x + 3)}{6} = \begin{cases} 0 & x \le -3 \\ x (x + 3) / 6 & -3 < x < 3 \\
        x & x \ge 3 \end{cases}

    As ``torch.nn.Hardswish`` (the paper's h-swish): swish :math:`x\sigma(x)` with the sigmoid
    replaced by the hard sigmoid. Kinks at :math:`x = \pm 3` (slopes 0 | -1/2 and 3/2 | 1); not monotonic, with
    its minimum :math:`-3/8` at :math:`x = -3/2`.

    Args:
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.hardswish)


@register(
    "gelu_sigmoid",
    kind="act",
    paper=papers.GELU,
    formula="f(x) = x * sigmoid(1.702 x), the sigmoid approximation of GELU x * Phi(x)",
    functional=NF.gelu_sigmoid,
    bounded_below=True,
    self_gated=True,
    aliases=("quick_gelu",),
    verified_against=("timm.layers.activations.QuickGELU",),
)
class GELUSigmoid(FunctionalActivation):
    r"""The sigmoid approximation of GELU, "QuickGELU" (Hendrycks & Gimpel, 2016, arXiv:1606.08415).

    .. math::
        f(x) = x\,\sigma(1.702\,x) \approx x\,\Phi(x)

    The GELU paper (its revised arXiv versions) offers :math:`x\sigma(1.702x)` as the faster, less exact of
    its two approximations of :math:`x\Phi(x)`, without an error figure; the authors' code (hendrycks/GELUs README)
    calls it "fast but somewhat inaccurate". Its largest deviation from the exact GELU is 0.0203 (at
    :math:`x = \pm 2.27`, computed in tests/test_act_torch_sigmoidal.py), versus 4.7e-4 for the tanh form.
    Used by CLIP as ``QuickGELU``. float16/bfloat16 inputs are computed in float32.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.gelu_sigmoid)
