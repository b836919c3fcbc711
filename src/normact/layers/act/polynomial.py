"""Learnable polynomial-type activations: PolyReLU and PolyNorm (PolyCom), the Hermite, Fourier and tropical
activations of torchortho, and the Chebyshev learnable-activation layer of SL²A-INR."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_int, check_tensor, shape_str
from normact.layers.act._base import Activation
from normact.layers.act._params import fill_tensors
from normact.registry import Paper, Param, register

__all__ = ["FourierActivation", "HermiteActivation", "PolyNorm", "PolyReLU", "SL2AChebyshev", "TropicalActivation"]

POLYCOM = Paper(
    "Polynomial Composition Activations: Unleashing the Dynamics of Large Language Models (ICLR 2025)",
    2024,
    "2411.03884",
    "Zhuo, Wang, Zeng, Li, Zhou, Ma",
)
ORTHO_ACTIVATIONS = Paper(
    "Polynomial, trigonometric, and tropical activations",
    2025,
    "2502.01247",
    "Khalfaoui-Hassani, Kesselheim",
)
SL2A_INR = Paper(
    "SL²A-INR: Single-Layer Learnable Activation for Implicit Neural Representation (ICCV 2025)",
    2024,
    "2409.10836",
    "Heidari, Rezaeian, Azad, Merhof, Soltanian-Zadeh, Hacihaliloglu",
)

TORCHORTHO_VERSIONS = ("0.1.2", "0.1.1")

# The official constants, as the code writes them (facts, copied as numbers):
# - torchortho 0.1.1, Hermite and Fourier a_0 / (sqrt(6)/pi): 0.66549, the rounding of sqrt(pi^2/6 - zeta(3)) =
#   0.66549017 (with a_k = k^(-3/2) for k >= 1 the squares sum to pi^2/6 as n -> infinity);
# - torchortho 0.1.2, Fourier scale "I_0_2_sqrt_inv" = 0.66232645879 = 1/sqrt(2.279585), I_0(2) = sum_k 1/k!^2 =
#   2.2795853 truncated (1/sqrt(I_0(2)) = 0.6623264149).
_A0_ZETA = 0.66549
_SQRT6_PI = math.sqrt(6.0) / math.pi
FOURIER_SCALE = 0.66232645879


# --------------------------------------------------------------------------------------------------
# PolyCom


class _PolyComposition(Activation):
    """The coefficients of PolyReLU and PolyNorm: ``weight`` of shape (order,), init 1/order, and ``bias`` of
    shape (1,), init 0."""

    __constants__ = ["order"]
    _hyperparameters = ("order",)

    def __init__(self, order: int, device: torch.device | str | None, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.order = check_int("order", order)
        self.weight = nn.Parameter(torch.empty(self.order, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1/order, bias = 0."""
        fill_tensors(self, weight=1.0 / self.order, bias=0.0)


@register(
    "polyrelu",
    kind="act",
    paper=POLYCOM,
    formula=(
        "f(x) = sum_{i=1..r} a_i ReLU(x)^i + a_0, r = 3; a_1..a_r = weight (init 1/r each), a_0 = bias (init 0): "
        "(ReLU^3 + ReLU^2 + ReLU)/3 at init"
    ),
    functional=NF.polyrelu,
    verified_against=("torch.nn.functional.relu",),
    params=(
        Param("weight", "(order,)", "1/order (official: ones(3)/3); weight[0] multiplies ReLU(x)^order"),
        Param("bias", "(1,)", "0"),
    ),
    smooth=False,
    monotonic=True,
    bounded_below=True,
)
class PolyReLU(_PolyComposition):
    r"""PolyReLU, polynomial composition with ReLU (Zhuo, Wang, Zeng, Li, Zhou & Ma, 2024, arXiv:2411.03884).

    .. math::
        f(x) = \sum_{i=0}^{r} a_i\,\mathrm{ReLU}(x)^i
        = a_r\,\mathrm{ReLU}(x)^r + \dots + a_1\,\mathrm{ReLU}(x) + a_0

    Learnable coefficients shared by the whole layer: ``weight`` :math:`= (a_r, \dots, a_1)` (the official
    order: ``weight[0]`` multiplies the highest power) and ``bias`` :math:`= a_0`. Defaults and initial values
    from the official code (BryceZhuo/PolyCom, ``dense_model/megatron_patch/model/llama2/transformer.py`` and
    ``moe_model/olmo/model.py``, class ``PolyReLU``): order :math:`r = 3`, ``weight = ones(3) / 3``,
    ``bias = 0``, so at initialization :math:`f(x) = (x^3 + x^2 + x)/3` for :math:`x > 0` and :math:`0` for
    :math:`x \le 0`. Other orders initialize ``weight`` to :math:`1/r`.

    Kink at 0 (the left derivative is 0, the right one :math:`a_1`); exactly at 0 the derivative is 0 (ReLU's
    derivative there is torch.relu's, 0). Registered ``monotonic`` and
    ``bounded_below`` for its initial parameters (the coefficients are learned). Deliberate difference: the
    official code recomputes the polynomial in the backward pass (activation checkpointing); here autograd
    stores it. float16/bfloat16 inputs are computed in float32.

    Args:
        order: the polynomial order :math:`r` (>= 1). Default: 3.

    Shape:
        any shape; the output has the input's shape.
    """

    def __init__(
        self, order: int = 3, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__(order, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        return NF.polyrelu(x, self.weight, self.bias)


@register(
    "polynorm",
    kind="act",
    paper=POLYCOM,
    formula=(
        "f(x) = sum_{i=1..r} a_i N(x^i) + a_0, N(z) = z / sqrt(mean_last_dim(z^2) + eps) (RMSNorm without weight, "
        "over the last dim), r = 3, eps = 1e-6; a_1..a_r = weight (init 1/r each), a_0 = bias (init 0)"
    ),
    functional=NF.polynorm,
    verified_against=("torch.nn.functional.rms_norm",),
    params=(
        Param("weight", "(order,)", "1/order (official: ones(3)/3); weight[0] multiplies N(x^order)"),
        Param("bias", "(1,)", "0"),
    ),
    smooth=True,
    monotonic=False,
    bounded_below=False,
    elementwise=False,
)
class PolyNorm(_PolyComposition):
    r"""PolyNorm, polynomial composition with normalized powers (Zhuo, Wang, Zeng, Li, Zhou & Ma, 2024,
    arXiv:2411.03884).

    .. math::
        f(x) = \sum_{i=1}^{r} a_i\,N(x^i) + a_0, \qquad
        N(z) = \frac{z}{\sqrt{\tfrac1d \sum_{j=1}^{d} z_j^2 + \epsilon}}

    Each power :math:`x^i` (elementwise) is RMS-normalized over the last dimension of size :math:`d` (RMSNorm
    without a weight), so PolyNorm is not elementwise: an output depends on the whole last-dimension vector,
    like a last-dimension norm (registered ``elementwise=False``). With :math:`a = (0, \dots, 0, 1)` and
    :math:`a_0 = 0` it is RMSNorm; it is invariant to a positive rescaling of the input (up to
    :math:`\epsilon`). Each :math:`|N(z)_j| < \sqrt d`, so the output is bounded for a fixed width but not
    below as :math:`d` grows (registered ``bounded_below=False``).

    Defaults and initial values from the official code (BryceZhuo/PolyCom, README ``PolyNorm`` and the dense
    and MoE models): order :math:`r = 3`, :math:`\epsilon = 10^{-6}`, ``weight`` :math:`= (a_3, a_2, a_1) =`
    ``ones(3) / 3`` (``weight[0]`` multiplies :math:`N(x^3)`), ``bias`` :math:`= a_0 = 0`; other orders
    initialize ``weight`` to :math:`1/r`. Deliberate differences: the official MoE model
    (``moe_model/olmo/model.py``) regroups the hidden units before normalizing (its README and dense model
    normalize over the last dimension, as here); the official code uses activation checkpointing; the mean
    square runs in float32 for float16/bfloat16 inputs.

    Args:
        order: the polynomial order :math:`r` (>= 1). Default: 3.
        eps: added to the mean square (> 0). Default: 1e-6.

    Shape:
        ``(*, d)`` with at least one dimension; the output has the input's shape.
    """

    __constants__ = ["order", "eps"]
    _hyperparameters = ("order", "eps")

    def __init__(
        self,
        order: int = 3,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(order, device, dtype)
        self.eps = check_float("eps", eps, positive=True)

    def forward(self, x: Tensor) -> Tensor:
        return NF.polynorm(x, self.weight, self.bias, self.eps)


# --------------------------------------------------------------------------------------------------
# torchortho: Hermite, Fourier, tropical


class _Torchortho(Activation):
    """The torchortho activations' ``degree`` (>= 1) and ``version``, the torchortho parameterization."""

    __constants__ = ["degree", "version"]
    _hyperparameters = ("degree", "version")

    def __init__(self, degree: int, version: str) -> None:
        super().__init__()
        self.degree = check_int("degree", degree)
        if version not in TORCHORTHO_VERSIONS:
            raise ValueError(f"version must be one of {TORCHORTHO_VERSIONS}, got {version!r}")
        self.version = str(version)


def hermite_init(degree: int, version: str = "0.1.2") -> list[float]:
    r"""The initial Hermite coefficients :math:`a_0, \dots, a_n` of torchortho ``version``:
    ``"0.1.2"``: :math:`a_0 = \sqrt{1 - 1/n!}/\sqrt e`, :math:`a_k = 1/\sqrt e`;
    ``"0.1.1"``: :math:`a_0 = 0.66549\,\sqrt6/\pi` (:math:`\approx\sqrt{\pi^2/6 - \zeta(3)}\,\sqrt6/\pi`),
    :math:`a_k = k^{-3/2}\sqrt6/\pi`."""
    if version == "0.1.2":
        return [math.sqrt(1.0 - 1.0 / math.factorial(degree)) / math.sqrt(math.e)] + [1.0 / math.sqrt(math.e)] * degree
    return [_A0_ZETA * _SQRT6_PI] + [k**-1.5 * _SQRT6_PI for k in range(1, degree + 1)]


@register(
    "hermite_act",
    kind="act",
    paper=ORTHO_ACTIVATIONS,
    formula=(
        "f(x) = sum_{k=0..n} a_k He_k(x) / k!, He_k the probabilists' Hermite polynomials, n = 3; a learnable, init "
        "a_0 = sqrt(1 - 1/n!)/sqrt(e), a_k = 1/sqrt(e) (torchortho 0.1.2; version='0.1.1': He_k/sqrt(k!), "
        "a_0 = 0.66549 sqrt(6)/pi ~ sqrt(pi^2/6 - zeta(3)) sqrt(6)/pi, a_k = k^(-3/2) sqrt(6)/pi)"
    ),
    functional=NF.hermite_act,
    verified_against=("scipy.special.eval_hermitenorm",),
    params=(Param("coefficients", "(degree + 1,)", "hermite_init(degree, version)"),),
    smooth=True,
    monotonic=True,
    bounded_below=False,
)
class HermiteActivation(_Torchortho):
    r"""Learnable Hermite activation (Khalfaoui-Hassani & Kesselheim, 2025, arXiv:2502.01247).

    .. math::
        f(x) = \sum_{k=0}^{n} a_k\,\frac{\mathrm{He}_k(x)}{k!}

    with the probabilists' Hermite polynomials :math:`\mathrm{He}_k` (:math:`\mathrm{He}_{k+1} = x\,\mathrm{He}_k
    - k\,\mathrm{He}_{k-1}`), orthogonal under :math:`N(0, 1)` with :math:`E[\mathrm{He}_j \mathrm{He}_k] =
    k!\,\delta_{jk}`, and learnable coefficients :math:`a_0, \dots, a_n` shared by the layer.

    Parameterization and initial values from the official implementation (K-H-Ismail/torchortho,
    ``torchortho/hermite_activation.py``), selected by ``version``:

    - ``"0.1.2"`` (default; the current release, May 2025, "exponential generating function" normalization): basis
      :math:`\mathrm{He}_k/k!`, :math:`a_0 = \sqrt{1 - 1/n!}/\sqrt e`, :math:`a_k = 1/\sqrt e`, so that
      :math:`E[f(z)^2] = (1 - 1/n! + \sum_{k=1}^{n} 1/k!)/e \to 1` for :math:`z \sim N(0, 1)`. At the default
      degree 3, :math:`f(x) = (\sqrt{5/6} + x + (x^2 - 1)/2 + (x^3 - 3x)/6)/\sqrt e` and
      :math:`f'(x) = (x + 1)^2/(2\sqrt e) \ge 0`: monotonic, not bounded below.
    - ``"0.1.1"`` (the first release, February 2025): orthonormal basis
      :math:`\mathrm{He}_k/\sqrt{k!}`, :math:`a_0 = 0.66549\,\sqrt6/\pi` (the code's rounding of
      :math:`\sqrt{\pi^2/6 - \zeta(3)} = 0.6654902`), :math:`a_k = k^{-3/2}\sqrt6/\pi`, so that
      :math:`E[f(z)^2] = \sum_k a_k^2 \to 1` (to that rounding).

    Default degree :math:`n = 3`, the degree of the paper's ConvNeXt experiments (K-H-Ismail/ConvNeXt-ortho,
    ``convnext_hermite_*``). Not provided: the optional learnable clamp and the Hermite-interpolation init from
    a target activation. Deliberate difference: the basis is evaluated by the three-term recurrence instead of
    the official explicit power sums (the same polynomials); float16/bfloat16 inputs are computed in float32.

    Args:
        degree: the polynomial degree :math:`n` (>= 1). Default: 3.
        version: ``"0.1.2"`` or ``"0.1.1"``, the torchortho parameterization. Default: ``"0.1.2"``.

    Shape:
        any shape; the output has the input's shape.
    """

    def __init__(
        self,
        degree: int = 3,
        version: str = "0.1.2",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(degree, version)
        self.normalization = "factorial" if self.version == "0.1.2" else "sqrt_factorial"
        self.coefficients = nn.Parameter(torch.empty(self.degree + 1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """coefficients = hermite_init(degree, version)."""
        fill_tensors(self, coefficients=hermite_init(self.degree, self.version))

    def forward(self, x: Tensor) -> Tensor:
        return NF.hermite_act(x, self.coefficients, self.normalization)


@register(
    "fourier_act",
    kind="act",
    paper=ORTHO_ACTIVATIONS,
    formula=(
        "f(x) = a_0 + sum_{k=1..n} a_k cos(w_k x - phi_k) / k!, n = 5; a_0, a_k, w_k, phi_k learnable, init "
        "a_k = 0.66232645879 ~ 1/sqrt(I_0(2)), a_0 = a_k sqrt(1 - 1/n!^2), w_k = k, phi_k = pi/4 (torchortho "
        "0.1.2; version='0.1.1': no 1/k!, a_k = k^(-3/2) sqrt(6)/pi, a_0 = 0.66549 sqrt(6)/pi, "
        "w_k = k pi/sqrt(3))"
    ),
    functional=NF.fourier_act,
    params=(
        Param("fundamental", "(1,)", "a_0 = 0.66232645879 sqrt(1 - 1/n!^2) (0.1.2)"),
        Param("coefficients", "(degree,)", "a_k = 0.66232645879 ~ 1/sqrt(I_0(2)) (0.1.2)"),
        Param("frequencies", "(degree,)", "w_k = k (0.1.2), k pi/sqrt(3) (0.1.1)"),
        Param("phases", "(degree,)", "phi_k = pi/4"),
    ),
    smooth=True,
    monotonic=False,
    bounded_below=True,
)
class FourierActivation(_Torchortho):
    r"""Learnable Fourier activation (Khalfaoui-Hassani & Kesselheim, 2025, arXiv:2502.01247).

    .. math::
        f(x) = a_0 + \sum_{k=1}^{n} \frac{a_k}{k!} \cos(\omega_k x - \varphi_k)

    A truncated trigonometric series with learnable constant ``fundamental`` :math:`a_0`, amplitudes
    ``coefficients`` :math:`a_k`, ``frequencies`` :math:`\omega_k` and ``phases`` :math:`\varphi_k`, shared by
    the layer. Parameterization and initial values from the official implementation (K-H-Ismail/torchortho,
    ``torchortho/fourier_activation.py``), selected by ``version``:

    - ``"0.1.2"`` (default, the current release): amplitudes divided by :math:`k!`,
      :math:`a_k = 0.66232645879`, the code's :math:`1/\sqrt{I_0(2)}` with the modified Bessel value
      :math:`I_0(2) = \sum_k 1/k!^2 = 2.2795853\ldots` truncated to 2.279585 (exactly: 0.6623264149),
      :math:`a_0 = a_k\sqrt{1 - 1/n!^2}`, :math:`\omega_k = k`, :math:`\varphi_k = \pi/4`.
    - ``"0.1.1"`` (the first release): no :math:`1/k!`, :math:`a_k = k^{-3/2}\sqrt6/\pi`,
      :math:`a_0 = 0.66549\,\sqrt6/\pi`, :math:`\omega_k = k\pi/\sqrt3`,
      :math:`\varphi_k = \pi/4`.

    Default degree :math:`n = 5`, the degree of the paper's ConvNeXt experiments (K-H-Ismail/ConvNeXt-ortho,
    ``convnext_fourier_*``). :math:`|f| \le |a_0| + \sum_k |a_k|/k!`: bounded. Not provided: the
    Hermite-interpolation init from a target activation. float16/bfloat16 inputs are computed in float32.

    Args:
        degree: the number of harmonics :math:`n` (>= 1). Default: 5.
        version: ``"0.1.2"`` or ``"0.1.1"``, the torchortho parameterization. Default: ``"0.1.2"``.

    Shape:
        any shape; the output has the input's shape.
    """

    def __init__(
        self,
        degree: int = 5,
        version: str = "0.1.2",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(degree, version)
        self.normalization = "factorial" if self.version == "0.1.2" else "none"
        factory = {"device": device, "dtype": dtype}
        self.fundamental = nn.Parameter(torch.empty(1, **factory))
        self.coefficients = nn.Parameter(torch.empty(self.degree, **factory))
        self.frequencies = nn.Parameter(torch.empty(self.degree, **factory))
        self.phases = nn.Parameter(torch.empty(self.degree, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The torchortho initial values of ``version`` (see the class docstring)."""
        n = self.degree
        k = torch.arange(1, n + 1, dtype=torch.float64)
        if self.version == "0.1.2":
            a0 = FOURIER_SCALE * math.sqrt(1.0 - 1.0 / math.factorial(n) ** 2)
            a = torch.full((n,), FOURIER_SCALE, dtype=torch.float64)
            w = k
        else:
            a0 = _A0_ZETA * _SQRT6_PI
            a = k**-1.5 * _SQRT6_PI
            w = k * math.pi / math.sqrt(3.0)
        fill_tensors(self, fundamental=a0, coefficients=a, frequencies=w, phases=math.pi / 4)

    def forward(self, x: Tensor) -> Tensor:
        return NF.fourier_act(x, self.fundamental, self.coefficients, self.frequencies, self.phases, self.normalization)


@register(
    "tropical_act",
    kind="act",
    paper=ORTHO_ACTIVATIONS,
    formula=(
        "f(x) = (sqrt(2)/n) max_{k=0..n} (k x + c_k), n = 5; c learnable, init 1: sqrt(2)/n + sqrt(2) ReLU(x) at init "
        "(torchortho 0.1.2; version='0.1.1': no sqrt(2)/n factor)"
    ),
    functional=NF.tropical_act,
    verified_against=("torch.nn.functional.relu",),
    params=(Param("coefficients", "(degree + 1,)", "1"),),
    smooth=False,
    monotonic=True,
    bounded_below=True,
)
class TropicalActivation(_Torchortho):
    r"""Tropical polynomial activation (Khalfaoui-Hassani & Kesselheim, 2025, arXiv:2502.01247).

    .. math::
        f(x) = g \max_{k=0,\dots,n} \left(k\,x + c_k\right)

    The tropicalization of the polynomial :math:`\sum_k c_k x^k` (in the max-plus semiring products become
    sums and sums maxima): a convex piecewise-linear function with the fixed integer slopes
    :math:`0, 1, \dots, n` and learnable intercepts ``coefficients`` :math:`c_k`, shared by the layer. The
    slopes are non-negative, so :math:`f` is non-decreasing and :math:`f \ge g\,c_0` for any coefficients.

    Parameterization and initial values from the official implementation (K-H-Ismail/torchortho,
    ``torchortho/tropical_activation.py``, ``TropicalActivation``): :math:`c_k = 1`, and the fixed gain
    :math:`g = \sqrt2/n` (``version="0.1.2"``, the current release) or :math:`g = 1` (``"0.1.1"``). At
    initialization all lines meet at 0: :math:`f(x) = g\,(1 + n\max(x, 0))`, i.e. :math:`\sqrt2/n +
    \sqrt2\,\mathrm{ReLU}(x)` with the default gain (the :math:`\sqrt2` of ReLU's unit-second-moment gain).
    Default degree :math:`n = 5`, the degree of the paper's ConvNeXt experiments (K-H-Ismail/ConvNeXt-ortho,
    ``convnext_tropical_*``). Kinks where two lines cross (at 0 initially); at a kink the derivative is that of
    the lowest-degree line among those tied for the maximum, as in the official code (``max(-1)`` returns the
    first maximum): 0 at :math:`x = 0` initially. Not provided: the tropical rational
    activation. float16/bfloat16 inputs are computed in float32.

    Args:
        degree: the tropical degree :math:`n` (>= 1). Default: 5.
        version: ``"0.1.2"`` or ``"0.1.1"``, the torchortho parameterization. Default: ``"0.1.2"``.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["degree", "version", "gain"]

    def __init__(
        self,
        degree: int = 5,
        version: str = "0.1.2",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(degree, version)
        self.gain = math.sqrt(2.0) / self.degree if self.version == "0.1.2" else 1.0
        self.coefficients = nn.Parameter(torch.empty(self.degree + 1, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """coefficients = 1."""
        fill_tensors(self, coefficients=1.0)

    def forward(self, x: Tensor) -> Tensor:
        return NF.tropical_act(x, self.coefficients, self.gain)


# --------------------------------------------------------------------------------------------------
# SL²A-INR


SL2A_INITS = ("xavier_uniform", "kaiming_uniform", "kaiming_normal", "orthogonal", "uniform", "normal", "identity")


@register(
    "sl2a_chebyshev",
    kind="act",
    paper=SL2A_INR,
    formula=(
        "y_o = sum_i sum_{k=0..K} c_{i,o,k} T_k(tanh(x_i)), T_k the Chebyshev polynomials of the first kind "
        "(T_k(cos t) = cos(k t)), K = 256; c of shape (in_features, out_features, K + 1), init xavier_uniform"
    ),
    functional=NF.sl2a_chebyshev,
    verified_against=("scipy.special.eval_chebyt",),
    params=(Param("coefficients", "(in_features, out_features, degree + 1)", "xavier_uniform (official default)"),),
    smooth=True,
    monotonic=False,
    bounded_below=True,
    elementwise=False,
)
class SL2AChebyshev(Activation):
    r"""The Chebyshev learnable-activation layer of SL²A-INR (Heidari, Rezaeian, Azad, Merhof,
    Soltanian-Zadeh & Hacihaliloglu, 2024, arXiv:2409.10836).

    .. math::
        y_o = \sum_{i=1}^{d_\text{in}} \sum_{k=0}^{K} c_{i,o,k}\,T_k(\tanh x_i),
        \qquad T_k(\cos\theta) = \cos(k\theta)

    A Kolmogorov-Arnold layer: every input feature :math:`x_i` passes through its own learnable activation
    per output, a Chebyshev series of degree :math:`K` in :math:`\tanh x_i` (``tanh`` maps the input into
    the polynomials' domain :math:`[-1, 1]`), and the activations are summed over the inputs. SL²A-INR uses
    it as the first layer of its implicit neural representation (``ChebyKANLayer`` followed by
    ``nn.LayerNorm(out_features)``, then low-rank ReLU layers whose inputs are modulated by it); this class
    is the learnable activation alone: add the LayerNorm and the MLP around it. It mixes the input features
    (registered ``elementwise=False``); :math:`|y_o| \le \sum_{i,k} |c_{i,o,k}|` (bounded).

    Defaults and initial values from the official code (moeinheidari7829/SL2A-INR, ``ChebyKANLayer.py`` and
    ``train.py``): degree :math:`K = 256` (``--deg``; the class default there is 512), coefficients of shape
    ``(in_features, out_features, K + 1)`` initialized with ``nn.init.xavier_uniform_`` (``--init_method``;
    the official alternatives ``kaiming_uniform``, ``kaiming_normal``, ``orthogonal``, ``uniform`` on
    :math:`[-0.5, 0.5]` and ``normal`` with std :math:`1/(d_\text{in}(K+1))` are available). ``init="identity"``
    is a normact addition: :math:`c_{i,o,1} = \delta_{io}` and all other coefficients 0, so that
    :math:`y = \tanh x` (the harness's exact values use it). Every init draws from torch's global generator
    except ``"identity"``.

    Deliberate difference: :math:`\arccos(\tanh x)` is computed as :math:`2\arctan(e^{-x})` (the same angle),
    whose derivative :math:`-\mathrm{sech}\,x` stays finite where the official ``tanh`` then ``acos`` rounds to
    :math:`\pm1` and gives infinite or NaN gradients (:math:`|x| \gtrsim 9` in float32). float16/bfloat16
    inputs are computed in float32.

    Args:
        in_features: the size :math:`d_\text{in}` of the input's last dimension. Default: 1.
        out_features: the output size; None for ``in_features``. Default: None.
        degree: the Chebyshev degree :math:`K` (>= 0). Default: 256.
        init: the coefficients' initialization, one of ``SL2A_INITS``. Default: ``"xavier_uniform"``.

    Shape:
        input ``(*, in_features)``, output ``(*, out_features)``.
    """

    __constants__ = ["in_features", "out_features", "degree", "init"]

    def __init__(
        self,
        in_features: int = 1,
        out_features: int | None = None,
        degree: int = 256,
        init: str = "xavier_uniform",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_int("in_features", in_features)
        self.out_features = self.in_features if out_features is None else check_int("out_features", out_features)
        self.degree = check_int("degree", degree, minimum=0)
        if init not in SL2A_INITS:
            raise ValueError(f"init must be one of {SL2A_INITS}, got {init!r}")
        self.init = init
        self.coefficients = nn.Parameter(
            torch.empty(self.in_features, self.out_features, self.degree + 1, device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initializations of ``ChebyKANLayer`` (``init``), or the normact ``"identity"``."""
        c = self.coefficients
        with torch.no_grad():
            if self.init == "xavier_uniform":
                nn.init.xavier_uniform_(c)
            elif self.init == "kaiming_uniform":
                nn.init.kaiming_uniform_(c, a=0, mode="fan_in", nonlinearity="relu")
            elif self.init == "kaiming_normal":
                nn.init.kaiming_normal_(c, a=0, mode="fan_in", nonlinearity="relu")
            elif self.init == "orthogonal":
                nn.init.orthogonal_(c)
            elif self.init == "uniform":
                nn.init.uniform_(c, a=-0.5, b=0.5)
            elif self.init == "normal":
                nn.init.normal_(c, mean=0.0, std=1.0 / (self.in_features * (self.degree + 1)))
            else:  # identity
                c.zero_()
                if self.degree >= 1:
                    n = min(self.in_features, self.out_features)
                    idx = torch.arange(n, device=c.device)
                    c[idx, idx, 1] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "SL2AChebyshev")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"SL2AChebyshev expects input of shape (*, {self.in_features}) (in_features={self.in_features}), "
                f"got shape {shape_str(x.shape)}"
            )
        return NF.sl2a_chebyshev(x, self.coefficients)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, degree={self.degree}, init={self.init!r}"
