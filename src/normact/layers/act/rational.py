"""Rational and smoothed activations: Padé Activation Units (safe PAU) and the Smooth Activation Unit (SAU)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float
from normact.layers.act._base import Activation
from normact.layers.act._params import add_scalar_or_channel, check_axis, check_dim, fill_tensors
from normact.registry import Paper, Param, register

__all__ = ["PAU", "PAU_INITS", "SAU"]

PADE_ACTIVATION_UNITS = Paper(
    "Padé Activation Units: End-to-end Learning of Flexible Activation Functions in Deep Networks (ICLR)",
    2020,
    "1907.06732",
    "Molina, Schramowski, Kersting",
)
SMOOTH_ACTIVATION_UNIT = Paper(
    "SAU: Smooth activation function using convolution with approximate identities",
    2021,
    "2109.13210",
    "Biswas, Kumar, Banerjee, Pandey",
)

# The initial coefficients (numerator a_0..a_5, denominator b_1..b_4) of the official implementation,
# ml-research/pau, pau/cuda/python_imp/Pade.py, get_constants_for_inits(); copied as numbers (facts). Sets of
# lower degree are padded with zero coefficients, which leaves the function unchanged.
PAU_INITS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # "pade_optimized_leakyrelu": the default of the official PAU() (pau/utils.py), a least-squares fit of
    # LeakyReLU(0.01) under version A.
    "leaky_relu": (
        (3.35583603e-02, 5.05000375e-01, 1.65343934e00, 2.01001052e00, 9.31901999e-01, 1.52424124e-01),
        (3.30847488e-06, 3.98021568e00, 5.12471206e-07, 3.01830109e-01),
    ),
    # "pade_sigmoid_3": the [3/2] Padé approximant of the logistic sigmoid at 0.
    "sigmoid": ((1 / 2, 1 / 4, 1 / 20, 1 / 240, 0.0, 0.0), (0.0, 1 / 10, 0.0, 0.0)),
    # "pade_softplus": a Padé-type approximant of softplus, ln(1 + e^x), with b_1 = 0.01.
    "softplus": (
        (math.log(2), 1 / 2, (15 + 8 * math.log(2)) / 120, 1 / 30, 1 / 320, 0.0),
        (0.01, 1 / 15, 0.0, 0.0),
    ),
}


@register(
    "pau",
    kind="act",
    paper=PADE_ACTIVATION_UNITS,
    formula=(
        "f(x) = P(x) / Q(x), P(x) = a_0 + a_1 x + ... + a_5 x^5, Q(x) = 1 + |b_1| |x| + ... + |b_4| |x|^4 "
        "(version A, the official code's; version B: Q(x) = 1 + |b_1 x + ... + b_4 x^4|); a, b learnable, "
        "one set per layer, initialised to the official fit of LeakyReLU(0.01)"
    ),
    functional=NF.pau,
    params=(
        Param("numerator", "(6,)", "a = PAU_INITS[init][0] (leaky_relu: 0.0335584, 0.5050004, 1.6534393, ...)"),
        Param("denominator", "(4,)", "b = PAU_INITS[init][1] (leaky_relu: 3.308e-6, 3.9802157, 5.125e-7, ...)"),
    ),
    smooth=False,
    monotonic=False,
    bounded_below=False,
)
class PAU(Activation):
    r"""Padé Activation Unit, safe form (Molina, Schramowski & Kersting, 2020, arXiv:1907.06732).

    .. math::
        F(x) = \frac{P(x)}{Q(x)} = \frac{a_0 + a_1 x + \dots + a_5 x^5}{1 + |b_1|\,|x| + |b_2|\,|x|^2
        + |b_3|\,|x|^3 + |b_4|\,|x|^4}

    The rational function of degrees (m, n) = (5, 4), the paper's default, with learnable coefficients
    ``numerator`` :math:`(a_0, \dots, a_5)` and ``denominator`` :math:`(b_1, \dots, b_4)`, one set shared by
    the whole layer (the paper's choice). :math:`Q \ge 1`, so there are no poles.

    Which safe denominator: the official implementation (ml-research/pau, the CUDA kernels called by
    ``pau.utils.PAU()`` and the python reference ``PADEACTIVATION_F_python``) computes the per-term absolute
    value :math:`Q = 1 + \sum_k |b_k| |x|^k`; its successor library (ml-research/rational_activations) calls
    this version "A" and makes it the default. ``version="B"`` is that library's
    :math:`Q = 1 + |\sum_k b_k x^k|`, the form in which secondary sources quote the paper's safe PAU (the
    paper's own text could not be read here). The default is version A, the one the initial coefficients were
    fitted under.

    Initial coefficients (``init``), from the official init table (``get_constants_for_inits`` in
    ``pau/cuda/python_imp/Pade.py``), see :data:`PAU_INITS`: ``"leaky_relu"`` (default;
    ``pade_optimized_leakyrelu``, the official ``PAU()`` default, a fit of LeakyReLU with slope 0.01; on
    [-3, 3] it stays within 0.0336 of it, the largest error being :math:`F(0) = a_0`), ``"sigmoid"``
    (``pade_sigmoid_3``, the [3/2] Padé approximant of the logistic sigmoid) and ``"softplus"``
    (``pade_softplus``). For large :math:`|x|`, :math:`F(x) \approx (a_5/|b_4|)\,x`, so the LeakyReLU fit is
    not bounded below. :math:`F` has a kink at 0 (the :math:`|x|` and :math:`|x|^3` terms; version B: at the
    real roots of :math:`\sum_k b_k x^k`, among them 0); there :math:`|\cdot|` is differentiated as 0,
    torch.abs's convention, so :math:`F'(0) = a_1`.

    Deliberate differences from the official code: autograd computes the exact gradient (the official CUDA
    backward adds an optional regularisation term, disabled in ``PAU()`` with ``alpha=0``); float16/bfloat16
    inputs are computed in float32.

    Args:
        init: name of the initial coefficient set in :data:`PAU_INITS`. Default: ``"leaky_relu"``.
        version: ``"A"`` (per-term absolute values) or ``"B"`` (absolute value of the sum). Default: ``"A"``.

    Shape:
        any shape; the output has the input's shape.
    """

    __constants__ = ["init", "version"]
    _hyperparameters = ("init", "version")

    def __init__(
        self,
        init: str = "leaky_relu",
        version: str = "A",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if init not in PAU_INITS:
            raise ValueError(f"init must be one of {sorted(PAU_INITS)}, got {init!r}")
        if version not in ("A", "B"):
            raise ValueError(f"version must be 'A' or 'B', got {version!r}")
        self.init, self.version = init, version
        num, den = PAU_INITS[init]
        self.numerator = nn.Parameter(torch.empty(len(num), device=device, dtype=dtype))
        self.denominator = nn.Parameter(torch.empty(len(den), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """numerator, denominator = PAU_INITS[init]."""
        num, den = PAU_INITS[self.init]
        fill_tensors(self, numerator=num, denominator=den)

    def forward(self, x: Tensor) -> Tensor:
        return NF.pau(x, self.numerator, self.denominator, self.version)


@register(
    "sau",
    kind="act",
    paper=SMOOTH_ACTIVATION_UNIT,
    formula=(
        "f(x) = (LeakyReLU_alpha * N(0, 1/n^2))(x) = (1 + alpha)/2 x + (1 - alpha)/2 (x erf(n x / sqrt(2)) "
        "+ sqrt(2/pi)/n exp(-n^2 x^2 / 2)); alpha learnable (init 0.15), n = 20000 fixed"
    ),
    functional=NF.sau,
    params=(Param("alpha", "() or (dim,)", "alpha_init = 0.15"),),
    smooth=True,
    monotonic=True,
    bounded_below=False,
)
class SAU(Activation):
    r"""Smooth Activation Unit (Biswas, Kumar, Banerjee & Pandey, 2021, arXiv:2109.13210).

    .. math::
        f(x) = (\mathrm{LReLU}_\alpha * \phi_n)(x)
        = \frac{1+\alpha}{2} x + \frac{1-\alpha}{2}\left(x\,\mathrm{erf}\!\left(\frac{n x}{\sqrt2}\right)
        + \frac{\sqrt{2/\pi}}{n}\, e^{-n^2 x^2 / 2}\right)

    The Leaky ReLU :math:`\mathrm{LReLU}_\alpha(x) = \max(x, \alpha x)` convolved with the approximate
    identity :math:`\phi_n(x) = \frac{n}{\sqrt{2\pi}} e^{-n^2x^2/2}` (the density of
    :math:`N(0, \sigma^2)`, :math:`\sigma = 1/n`). The closed form follows from
    :math:`\mathrm{LReLU}_\alpha(x) = \frac{1+\alpha}{2}x + \frac{1-\alpha}{2}|x|` and
    :math:`\mathrm{E}|x - \sigma Z| = x\,\mathrm{erf}(x/(\sigma\sqrt2)) + \sigma\sqrt{2/\pi}\,e^{-x^2/(2\sigma^2)}`;
    its derivative is :math:`\frac{1+\alpha}{2} + \frac{1-\alpha}{2}\mathrm{erf}(nx/\sqrt2) \in (\alpha, 1)`,
    so it is monotonic for :math:`\alpha \ge 0`, smooth, and tends to the Leaky ReLU as :math:`n \to \infty`.

    Defaults: :math:`\alpha` learnable, initialised to 0.15, and :math:`n = 20000` fixed (:math:`\sigma = 5
    \cdot 10^{-5}`), the paper's experimental setting as reported by two independent secondary sources (the
    paper's text and code could not be read here). Secondary sources print the closed form with slips (a
    missing :math:`(1-\alpha)` on the Gaussian term, or :math:`x/2` for :math:`(1+\alpha)x/2`); normact
    implements the exact convolution, which the tests check against numerical quadrature. It is computed as
    :math:`\alpha x + (1 - \alpha)\,\mathrm{E}[\mathrm{ReLU}(x + \sigma Z)]` with :math:`\Phi` by erfc (and
    the Mills ratio for :math:`x < 0`), since the closed form's :math:`1 + \mathrm{erf}` cancels for negative
    :math:`x` (the smoothed ReLU's tail, all of the value at :math:`\alpha = 0`, is lost).

    Args:
        dim: number of channels for a per-channel :math:`\alpha` along ``channel_axis``; None for one
            scalar. Default: None.
        alpha_init: initial :math:`\alpha`. Default: 0.15.
        n: the approximate identity's sharpness :math:`n = 1/\sigma` (> 0, fixed). Default: 20000.
        channel_axis: the channel dimension of the input when ``dim`` is given. Default: -1.

    Shape:
        any shape (with ``dim`` C at ``channel_axis``); the output has the input's shape.
    """

    __constants__ = ["dim", "n", "channel_axis"]
    _hyperparameters = ("dim", "alpha_init", "n", "channel_axis")

    def __init__(
        self,
        dim: int | None = None,
        alpha_init: float = 0.15,
        n: float = 20000.0,
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_dim(dim)
        self.alpha_init = check_float("alpha_init", alpha_init)
        self.n = check_float("n", n, positive=True)
        self.channel_axis = check_axis("channel_axis", channel_axis)
        add_scalar_or_channel(self, "alpha", self.dim, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """alpha = alpha_init."""
        fill_tensors(self, alpha=self.alpha_init)

    def forward(self, x: Tensor) -> Tensor:
        return NF.sau(x, self.alpha, self.n, self.channel_axis)
