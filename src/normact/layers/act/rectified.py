"""Rectified and piecewise activations: ReLU, squared ReLU and the rest of torch.nn's piecewise set (LeakyReLU,
PReLU, RReLU, ELU, SELU, CELU, ReLU6, Hardtanh, Threshold, Hardshrink, Softshrink, Tanhshrink)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int
from normact.functional._act_common import check_hardtanh_bounds, check_rrelu_bounds
from normact.layers import papers
from normact.layers.act._base import Activation, FunctionalActivation, InplaceActivation
from normact.layers.act._params import fill_tensors
from normact.registry import Paper, Param, register

__all__ = [
    "CELU",
    "ELU",
    "SELU",
    "Hardshrink",
    "Hardtanh",
    "LeakyReLU",
    "PReLU",
    "RReLU",
    "ReLU",
    "ReLU2",
    "ReLU6",
    "Softshrink",
    "Tanhshrink",
    "Threshold",
]


@register(
    "relu",
    kind="act",
    bounded_below=True,
    paper=papers.RELU,
    formula="f(x) = max(0, x)",
    functional=NF.relu,
    smooth=False,
    monotonic=True,
)
class ReLU(InplaceActivation):
    r"""Rectified linear unit (Nair & Hinton, 2010; no arXiv id).

    .. math::
        f(x) = \max(0, x)

    Args:
        inplace: overwrite the input. Default: False.
    """

    _functional = staticmethod(NF.relu)


@register(
    "relu2",
    kind="act",
    bounded_below=True,
    paper=papers.RELU2,
    formula="f(x) = max(0, x)^2",
    functional=NF.relu2,
    smooth=False,
    monotonic=True,
    aliases=("squared_relu", "relu_squared"),
)
class ReLU2(FunctionalActivation):
    r"""Squared ReLU (Zhang et al., "ReLU² Wins", 2024, arXiv:2402.03804; introduced in Primer, arXiv:2109.08668).

    .. math::
        f(x) = \max(0, x)^2, \qquad f'(x) = 2 \max(0, x)

    Continuously differentiable; its second derivative jumps at 0.
    """

    _functional = staticmethod(NF.relu2)


# --------------------------------------------------------------------------------------------------
# the rest of torch.nn's piecewise / rectified activations, with torch's arguments and semantics

LEAKY_RELU = Paper("Rectifier Nonlinearities Improve Neural Network Acoustic Models", 2013, None, "Maas, Hannun, Ng")
PRELU = Paper(
    "Delving Deep into Rectifiers: Surpassing Human-Level Performance on ImageNet Classification",
    2015,
    "1502.01852",
    "He, Zhang, Ren, Sun",
)
RRELU = Paper(
    "Empirical Evaluation of Rectified Activations in Convolutional Network", 2015, "1505.00853", "Xu, Wang, Chen, Li"
)
ELU_PAPER = Paper(
    "Fast and Accurate Deep Network Learning by Exponential Linear Units (ELUs)",
    2015,
    "1511.07289",
    "Clevert, Unterthiner, Hochreiter",
)
SELU_PAPER = Paper("Self-Normalizing Neural Networks", 2017, "1706.02515", "Klambauer, Unterthiner, Mayr, Hochreiter")
CELU_PAPER = Paper("Continuously Differentiable Exponential Linear Units", 2017, "1704.07483", "Barron")
RELU6 = Paper("Convolutional Deep Belief Networks on CIFAR-10 (technical report)", 2010, None, "Krizhevsky")
HARDTANH = Paper("Large Scale Machine Learning (PhD thesis, Université Paris VI)", 2004, None, "Collobert")
TORCH7 = Paper(
    "Torch7: A Matlab-like Environment for Machine Learning (BigLearn, NIPS Workshop; the nn package's "
    "Threshold and TanhShrink modules, documented today as torch.nn.Threshold and torch.nn.Tanhshrink)",
    2011,
    None,
    "Collobert, Kavukcuoglu, Farabet",
)
HARD_THRESHOLDING = Paper(
    "Ideal Spatial Adaptation by Wavelet Shrinkage (Biometrika 81(3); hard thresholding)",
    1994,
    None,
    "Donoho, Johnstone",
)
SOFT_THRESHOLDING = Paper("De-noising by Soft-Thresholding (IEEE Trans. Inf. Theory 41(3))", 1995, None, "Donoho")

# Klambauer et al. 2017: alpha_01 and lambda_01, the constants for the fixed point mean 0, variance 1 (torch's values;
# tests/test_act_torch_rectified.py recomputes them from the closed form with mpmath).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


@register(
    "leaky_relu",
    kind="act",
    paper=LEAKY_RELU,
    formula="f(x) = x if x > 0 else negative_slope * x; negative_slope = 0.01",
    functional=NF.leaky_relu,
    smooth=False,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.LeakyReLU",),
)
class LeakyReLU(InplaceActivation):
    r"""Leaky rectified linear unit (Maas, Hannun & Ng, 2013; no arXiv id).

    .. math::
        f(x) = \begin{cases} x & x > 0 \\ \text{negative\_slope} \cdot x & x \le 0 \end{cases}

    As ``torch.nn.LeakyReLU``: default slope 0.01 (the paper's value). Monotonic (the registry's flag) for
    ``negative_slope >= 0``; not bounded below for any slope > 0.

    Args:
        negative_slope: the slope for negative inputs. Default: 0.01.
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["negative_slope", "inplace"]
    _hyperparameters = ("negative_slope",)
    _functional = staticmethod(NF.leaky_relu)

    def __init__(self, negative_slope: float = 0.01, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.negative_slope = check_float("negative_slope", negative_slope)


@register(
    "prelu",
    kind="act",
    paper=PRELU,
    formula="f(x) = max(0, x) + a * min(0, x); a learnable, one shared or one per channel (dim 1), init 0.25",
    functional=NF.prelu,
    params=(Param("weight", "(num_parameters,)", "init = 0.25"),),
    smooth=False,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.PReLU",),
)
class PReLU(Activation):
    r"""Parametric ReLU (He, Zhang, Ren & Sun, 2015, arXiv:1502.01852).

    .. math::
        f(x_c) = \max(0, x_c) + a_c \min(0, x_c)

    The slope :math:`a` is learned: one scalar shared by every channel (``num_parameters=1``, the paper's
    channel-shared variant) or one per channel (``num_parameters=C``, channel-wise), initialised to 0.25 as
    in the paper (Sec. 2.1) and in ``torch.nn.PReLU``. Arguments and state-dict key (``weight``) are torch's:
    the channel count is ``num_parameters`` (the contract's ``dim``), first positionally, so
    ``normact.create("prelu")`` builds the shared slope and ``normact.create("prelu", C)`` the per-channel
    one. As in torch the channel axis is dim 1: a per-channel PReLU takes ``(N, C, *)``; the shared one takes
    any shape. Monotonic (the registry's flag) while :math:`a \ge 0`, as at initialisation.

    Args:
        num_parameters: number of slopes, 1 or the channel count C. Default: 1.
        init: the initial slope. Default: 0.25.

    Shape:
        ``(*)`` for ``num_parameters=1``; ``(N, C, *)`` with ``C = num_parameters`` otherwise.
    """

    __constants__ = ["num_parameters"]
    _hyperparameters = ("num_parameters", "init")

    def __init__(
        self,
        num_parameters: int = 1,
        init: float = 0.25,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_parameters = check_int("num_parameters", num_parameters)
        self.init = check_float("init", init)
        self.weight = nn.Parameter(torch.empty(self.num_parameters, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = init."""
        fill_tensors(self, weight=self.init)

    def forward(self, x: Tensor) -> Tensor:
        return NF.prelu(x, self.weight)


@register(
    "rrelu",
    kind="act",
    paper=RRELU,
    formula="f(x) = x if x >= 0 else a * x; a ~ U(lower, upper) per element in training, (lower + upper) / 2 "
    "in eval; lower = 1/8, upper = 1/3",
    functional=NF.rrelu,
    smooth=False,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.RReLU",),
)
class RReLU(InplaceActivation):
    r"""Randomized leaky ReLU (Xu, Wang, Chen & Li, 2015, arXiv:1505.00853).

    .. math::
        f(x) = \begin{cases} x & x \ge 0 \\ a x & x < 0 \end{cases}, \qquad
        a \sim U(\text{lower}, \text{upper}) \text{ (training)}, \quad
        a = \frac{\text{lower} + \text{upper}}{2} \text{ (eval)}

    As ``torch.nn.RReLU``: in training every element draws its own slope from torch's generator (the same
    draws as torch under the same seed); in eval the slope is the mean. Defaults lower = 1/8, upper = 1/3
    (torch's). Deliberate difference from the paper's experiments: the paper's NDSB setting divides by
    :math:`a' \sim U(3, 8)` (slope :math:`1/a'`, test slope :math:`2/11`); normact, like torch, samples the
    slope itself uniformly in [1/8, 1/3] (test slope 11/48), the paper's general formula. float16/bfloat16
    inputs in training draw in float32 (torch's CPU kernel has none for them). ``normact.gaussian_moments``
    uses the eval form.

    Args:
        lower: the smallest slope. Default: 1/8.
        upper: the largest slope (>= lower). Default: 1/3.
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["lower", "upper", "inplace"]
    _hyperparameters = ("lower", "upper")

    def __init__(self, lower: float = 1.0 / 8, upper: float = 1.0 / 3, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.lower, self.upper = check_rrelu_bounds(lower, upper)

    def forward(self, x: Tensor) -> Tensor:
        return NF.rrelu(x, self.lower, self.upper, self.training, self.inplace)


@register(
    "elu",
    kind="act",
    paper=ELU_PAPER,
    formula="f(x) = x if x > 0 else alpha * (exp(x) - 1); alpha = 1",
    functional=NF.elu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.ELU",),
)
class ELU(InplaceActivation):
    r"""Exponential linear unit (Clevert, Unterthiner & Hochreiter, 2015, arXiv:1511.07289).

    .. math::
        f(x) = \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0 \end{cases}

    Bounded below by :math:`-\alpha`. Not smooth: with :math:`\alpha = 1` the first derivative is continuous
    at 0 but the second jumps (0 on the right, 1 on the left); for other :math:`\alpha` the first derivative
    jumps too. Deliberate difference from torch: ``alpha < 0`` (not an ELU) is rejected.

    Args:
        alpha: the negative saturation value (>= 0). Default: 1.0.
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["alpha", "inplace"]
    _hyperparameters = ("alpha",)
    _functional = staticmethod(NF.elu)

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.alpha = check_float("alpha", alpha, nonnegative=True)


@register(
    "selu",
    kind="act",
    paper=SELU_PAPER,
    formula="f(x) = scale * (x if x > 0 else alpha * (exp(x) - 1)); alpha = 1.6732632423543772848170429916717, "
    "scale = 1.0507009873554804934193349852946",
    functional=NF.selu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.SELU",),
)
class SELU(InplaceActivation):
    r"""Scaled exponential linear unit (Klambauer, Unterthiner, Mayr & Hochreiter, 2017, arXiv:1706.02515).

    .. math::
        f(x) = \lambda \begin{cases} x & x > 0 \\ \alpha (e^x - 1) & x \le 0 \end{cases}

    with the paper's constants for the fixed point mean 0, variance 1
    :math:`\alpha_{01} = -\sqrt{2/\pi} / (\operatorname{erfc}(1/\sqrt2)\, e^{1/2} - 1)
    = 1.6732632423543772848170429916717` and :math:`\lambda_{01} = 1.0507009873554804934193349852946`
    (torch's values): :math:`f(z)` has mean 0 and variance 1 for :math:`z \sim N(0, 1)`. Bounded below by
    :math:`-\lambda\alpha`; the derivative jumps at 0 (:math:`\lambda` vs :math:`\lambda\alpha`).

    Args:
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.selu)


@register(
    "celu",
    kind="act",
    paper=CELU_PAPER,
    formula="f(x) = max(0, x) + min(0, alpha * (exp(x / alpha) - 1)); alpha = 1",
    functional=NF.celu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.CELU",),
)
class CELU(InplaceActivation):
    r"""Continuously differentiable exponential linear unit (Barron, 2017, arXiv:1704.07483).

    .. math::
        f(x) = \max(0, x) + \min\!\left(0, \alpha \left(e^{x/\alpha} - 1\right)\right)

    Its first derivative is continuous for every :math:`\alpha > 0` (unlike ELU's), but the second jumps at 0
    (0 on the right, :math:`1/\alpha` on the left), so it is not smooth. Bounded below by :math:`-\alpha`.

    Args:
        alpha: the negative saturation value and the scale of the exponential (> 0). Default: 1.0.
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["alpha", "inplace"]
    _hyperparameters = ("alpha",)
    _functional = staticmethod(NF.celu)

    def __init__(self, alpha: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.alpha = check_float("alpha", alpha, positive=True)


@register(
    "relu6",
    kind="act",
    paper=RELU6,
    formula="f(x) = min(max(0, x), 6)",
    functional=NF.relu6,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.ReLU6",),
)
class ReLU6(InplaceActivation):
    r"""ReLU capped at 6 (Krizhevsky, 2010, technical report, no arXiv id; popularised by MobileNets).

    .. math::
        f(x) = \min(\max(0, x), 6)

    Args:
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.relu6)


@register(
    "hardtanh",
    kind="act",
    paper=HARDTANH,
    formula="f(x) = min(max(x, min_val), max_val); min_val = -1, max_val = 1",
    functional=NF.hardtanh,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Hardtanh",),
)
class Hardtanh(InplaceActivation):
    r"""Hard tanh (Collobert, 2004, PhD thesis, no arXiv id; ``torch.nn.Hardtanh``).

    .. math::
        f(x) = \min(\max(x, \text{min\_val}), \text{max\_val})

    Deliberate differences from torch: the deprecated aliases ``min_value``/``max_value`` are not accepted,
    and ``max_val <= min_val`` raises ``ValueError`` (torch asserts).

    Args:
        min_val: the lower bound. Default: -1.0.
        max_val: the upper bound (> min_val). Default: 1.0.
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["min_val", "max_val", "inplace"]
    _hyperparameters = ("min_val", "max_val")
    _functional = staticmethod(NF.hardtanh)

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.min_val, self.max_val = check_hardtanh_bounds(min_val, max_val)


@register(
    "threshold",
    kind="act",
    paper=TORCH7,
    formula="f(x) = x if x > threshold else value; registry defaults threshold = 0, value = 0 (= ReLU)",
    functional=NF.threshold,
    defaults={"threshold": 0.0, "value": 0.0},
    smooth=False,
    monotonic=True,
    bounded_below=True,
    verified_against=("torch.nn.Threshold",),
)
class Threshold(InplaceActivation):
    r"""Threshold (the Torch7 ``nn.Threshold`` module, Collobert, Kavukcuoglu & Farabet, 2011; no arXiv id).

    .. math::
        f(x) = \begin{cases} x & x > \text{threshold} \\ \text{value} & x \le \text{threshold} \end{cases}

    As in ``torch.nn.Threshold`` the class requires both ``threshold`` and ``value``; the registry entry
    supplies ``threshold=0.0, value=0.0`` (ReLU), so ``normact.create("threshold")`` works. Always bounded
    below (by ``min(threshold, value)``); monotonic (the registry's flag) when ``value <= threshold``;
    discontinuous at ``threshold`` when ``value != threshold``.

    Args:
        threshold: the threshold.
        value: the value below (and at) the threshold.
        inplace: overwrite the input. Default: False.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["threshold", "value", "inplace"]
    _hyperparameters = ("threshold", "value")
    _functional = staticmethod(NF.threshold)

    def __init__(self, threshold: float, value: float, inplace: bool = False) -> None:
        super().__init__(inplace)
        self.threshold = check_float("threshold", threshold)
        self.value = check_float("value", value)


class _Shrink(FunctionalActivation):
    """Hard and soft shrinkage: the threshold ``lambd`` (>= 0)."""

    __constants__ = ["lambd"]
    _hyperparameters = ("lambd",)

    def __init__(self, lambd: float = 0.5) -> None:
        super().__init__()
        self.lambd = check_float("lambd", lambd, nonnegative=True)


@register(
    "hardshrink",
    kind="act",
    paper=HARD_THRESHOLDING,
    formula="f(x) = x if |x| > lambd else 0; lambd = 0.5",
    functional=NF.hardshrink,
    smooth=False,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.Hardshrink",),
)
class Hardshrink(_Shrink):
    r"""Hard shrinkage, hard thresholding (Donoho & Johnstone, 1994, Biometrika; no arXiv id).

    .. math::
        f(x) = \begin{cases} x & |x| > \lambda \\ 0 & |x| \le \lambda \end{cases}

    As ``torch.nn.Hardshrink`` (no ``inplace``). Discontinuous at :math:`\pm\lambda`; non-decreasing (both
    jumps go up). Deliberate difference from torch: ``lambd < 0`` is rejected (torch accepts it for
    Hardshrink, not for Softshrink).

    Args:
        lambd: the threshold :math:`\lambda` (>= 0). Default: 0.5.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.hardshrink)


@register(
    "softshrink",
    kind="act",
    paper=SOFT_THRESHOLDING,
    formula="f(x) = x - lambd if x > lambd, x + lambd if x < -lambd, else 0; lambd = 0.5",
    functional=NF.softshrink,
    smooth=False,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.Softshrink",),
)
class Softshrink(_Shrink):
    r"""Soft shrinkage, soft thresholding (Donoho, 1995, IEEE Trans. Inf. Theory; no arXiv id).

    .. math::
        f(x) = \operatorname{sign}(x) \max(|x| - \lambda, 0)
        = \begin{cases} x - \lambda & x > \lambda \\ x + \lambda & x < -\lambda \\ 0 & \text{otherwise}
        \end{cases}

    As ``torch.nn.Softshrink`` (no ``inplace``; ``lambd >= 0``). Continuous, with kinks at :math:`\pm\lambda`.

    Args:
        lambd: the threshold :math:`\lambda` (>= 0). Default: 0.5.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.softshrink)


@register(
    "tanhshrink",
    kind="act",
    paper=TORCH7,
    formula="f(x) = x - tanh(x)",
    functional=NF.tanhshrink,
    smooth=True,
    monotonic=True,
    bounded_below=False,
    verified_against=("torch.nn.Tanhshrink",),
)
class Tanhshrink(FunctionalActivation):
    r"""Tanh shrinkage (the Torch7 ``nn.TanhShrink`` module, Collobert, Kavukcuoglu & Farabet, 2011; no arXiv id).

    .. math::
        f(x) = x - \tanh(x), \qquad f'(x) = \tanh^2(x) \ge 0

    Smooth and non-decreasing; not bounded below. Deliberate difference from ``torch.nn.Tanhshrink``: accurate
    near 0, where torch's :math:`x - \tanh(x)` cancels (:math:`f(x) \approx x^3/3`; torch returns 0 below
    :math:`|x| \approx 10^{-4}` in float32): normact sums the series of :math:`x \cosh x - \sinh x` for
    :math:`|x| < 1` and equals torch elsewhere.

    Shape:
        any shape; the output has the input's shape.
    """

    _functional = staticmethod(NF.tanhshrink)
