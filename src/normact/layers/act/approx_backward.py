"""Activations whose forward pass is exact and whose backward pass is deliberately approximate, so that only a
few bits per element are saved for it: ReGELU2 and ReSiLU2 (2 bits) and HeLU (a hysteresis mask)."""

from __future__ import annotations

from normact import functional as NF
from normact._checks import check_float
from normact.layers.act._base import FunctionalActivation
from normact.registry import Paper, register

__all__ = ["HeLU", "ReGELU2", "ReSiLU2"]

APPROX_BP = Paper(
    "Reducing Fine-Tuning Memory Overhead by Approximate and Memory-Sharing Backpropagation (ICML 2024)",
    2024,
    "2406.16282",
    "Yang, Shi, Wang, Zhen, Shi, Xu",
)
HELU_PAPER = Paper(
    "Hysteresis Activation Function for Efficient Inference (NeurIPS 2024 ENLSP workshop, PMLR 262)",
    2024,
    "2411.10573",
    "Kimhi, Kashani, Mendelson, Baskin",
)


@register(
    "regelu2",
    kind="act",
    paper=APPROX_BP,
    formula=(
        "forward f(x) = GELU(x) = x * Phi(x) (exact); backward dL/dx = dL/dy * h'(x), "
        "h(x) = sum_k a_k ReLU(x - c_k), a = (-0.0492226, 1.0979632, -0.0487406), "
        "c = (-3.1858810, -0.0011788, 3.1908326)"
    ),
    functional=NF.regelu2,
    bounded_below=True,
    self_gated=True,
    custom_backward=True,
    verified_against=("torch.nn.GELU",),
)
class ReGELU2(FunctionalActivation):
    r"""ReGELU2, GELU with a 2-bit backward (Yang, Shi, Wang, Zhen, Shi & Xu, 2024, arXiv:2406.16282).

    .. math::
        y = \mathrm{GELU}(x) = x\,\Phi(x), \qquad
        \frac{\partial L}{\partial x} := \frac{\partial L}{\partial y}\, h'(x), \quad
        h(x) = \sum_{k=1}^{3} a_k\, \mathrm{ReLU}(x - c_k)

    The forward pass is :func:`normact.functional.gelu` itself (bitwise equal), computed as
    :math:`\tfrac12 x\,\mathrm{erfc}(-x/\sqrt2)`: ``torch.nn.functional.gelu``'s :math:`1 + \mathrm{erf}`
    cancels for negative :math:`x` (7% off at :math:`x = -5` in float32, 0 below -7); elsewhere the two agree
    to rounding. The backward pass replaces :math:`\mathrm{GELU}'(x)` by the step function
    :math:`h'(x) = \sum_k a_k [x > c_k]`, whose four levels are
    :math:`0,\ a_1,\ a_1 + a_2,\ a_1 + a_2 + a_3 = 0,\ -0.04922,\ 1.04874,\ 1` (the last is exactly 1). So only
    the number of thresholds exceeded, a 2-bit code, is saved; four codes are packed per byte, so a float32
    input costs 1/16 of the bytes ``torch.nn.GELU`` saves (its input). Constants of the official kernels
    (yyyyychen/LowMemoryBP, ``lomem/csrc/regelu2_cuda.cu``):
    :math:`a = (-0.04922261145617846, 1.0979632065417297, -0.048740595085551286)`,
    :math:`c = (-3.1858810036855245, -0.001178821281161997, 3.190832613414926)`. For float16/bfloat16 inputs the
    thresholds are compared in float32 (as the official kernels do).

    Shape:
        any; the output has the input's shape and dtype.
    """

    _functional = staticmethod(NF.regelu2)


@register(
    "resilu2",
    kind="act",
    paper=APPROX_BP,
    formula=(
        "forward f(x) = SiLU(x) = x * sigmoid(x) (exact); backward dL/dx = dL/dy * h'(x), "
        "h(x) = sum_k a_k ReLU(x - c_k), a = (-0.0406036, 1.0809254, -0.0403219), "
        "c = (-6.3050461, -0.0008685, 6.3258152)"
    ),
    functional=NF.resilu2,
    bounded_below=True,
    self_gated=True,
    custom_backward=True,
    verified_against=("torch.nn.SiLU",),
)
class ReSiLU2(FunctionalActivation):
    r"""ReSiLU2, SiLU with a 2-bit backward (Yang, Shi, Wang, Zhen, Shi & Xu, 2024, arXiv:2406.16282).

    .. math::
        y = \mathrm{SiLU}(x) = x\,\sigma(x), \qquad
        \frac{\partial L}{\partial x} := \frac{\partial L}{\partial y}\, h'(x), \quad
        h(x) = \sum_{k=1}^{3} a_k\, \mathrm{ReLU}(x - c_k)

    As :class:`ReGELU2` with the official SiLU constants (``lomem/csrc/resilu2_cuda.cu``):
    :math:`a = (-0.04060357190528599, 1.080925428529668, -0.040321856624382146)`,
    :math:`c = (-6.3050461001646445, -0.0008684942046214787, 6.325815242089708)`; levels
    :math:`0,\ -0.04060,\ 1.04032,\ 1`. The forward pass is ``torch.nn.functional.silu`` (bitwise); torch's
    ``inplace`` switch is not offered (the official module has none).

    Shape:
        any; the output has the input's shape and dtype.
    """

    _functional = staticmethod(NF.resilu2)


@register(
    "helu",
    kind="act",
    paper=HELU_PAPER,
    formula="forward f(x) = max(0, x) (exact); backward dL/dx = dL/dy * [x > -alpha]; alpha = 0.05",
    functional=NF.helu,
    smooth=False,
    monotonic=True,
    bounded_below=True,
    custom_backward=True,
    verified_against=("torch.nn.ReLU",),
)
class HeLU(FunctionalActivation):
    r"""Hysteresis ReLU (Kimhi, Kashani, Mendelson & Baskin, 2024, arXiv:2411.10573).

    .. math::
        y = \max(0, x), \qquad
        \frac{\partial L}{\partial x} := \frac{\partial L}{\partial y}\, \mathbb{1}[x > -\alpha]

    The forward pass is ReLU (inference is unchanged); in training the gradient also flows for
    :math:`-\alpha < x \le 0`, so that units just below the threshold are not dead. :math:`\alpha = 0.05` is the
    official default (idankdev/helu, ``helu.py``); :math:`\alpha = 0` gives exactly ReLU's gradient. The official
    function saves the input; this one saves the boolean mask :math:`x > -\alpha` (1 byte per element), which is
    all the backward pass needs.

    Args:
        alpha: the hysteresis width (>= 0). Default: 0.05.

    Shape:
        any; the output has the input's shape and dtype.
    """

    __constants__ = ["alpha"]
    _hyperparameters = ("alpha",)
    _functional = staticmethod(NF.helu)

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = check_float("alpha", alpha, nonnegative=True)
