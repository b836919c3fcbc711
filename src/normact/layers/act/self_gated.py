"""Self-gated activations f(x) = x * g(x): GELU, SiLU, Swish, Mish and GoLU."""

from __future__ import annotations

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_float
from normact.functional._act_common import check_gelu_approximate
from normact.layers import papers
from normact.layers.act._base import Activation, FunctionalActivation, InplaceActivation
from normact.layers.act._params import add_scalar_or_channel, check_axis, check_dim, fill_tensors
from normact.registry import Param, register

__all__ = ["GELU", "GoLU", "Mish", "SiLU", "Swish"]


@register(
    "gelu",
    kind="act",
    bounded_below=True,
    self_gated=True,
    paper=papers.GELU,
    formula="f(x) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))",
    functional=NF.gelu,
)
@register(
    "gelu_tanh",
    kind="act",
    bounded_below=True,
    self_gated=True,
    paper=papers.GELU,
    formula="f(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
    functional=NF.gelu,
    defaults={"approximate": "tanh"},
)
class GELU(FunctionalActivation):
    r"""Gaussian error linear unit (Hendrycks & Gimpel, 2016, arXiv:1606.08415).

    .. math::
        f(x) = x\,\Phi(x) = \tfrac12 x \left(1 + \mathrm{erf}(x/\sqrt2)\right)

    ``approximate="tanh"`` (registered as ``gelu_tanh``) uses
    :math:`\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))`.

    Args:
        approximate: ``"none"`` (exact) or ``"tanh"``. Default: ``"none"``.
    """

    __constants__ = ["approximate"]
    _hyperparameters = ("approximate",)
    _functional = staticmethod(NF.gelu)

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        self.approximate = check_gelu_approximate(approximate)


@register(
    "silu",
    kind="act",
    bounded_below=True,
    self_gated=True,
    paper=papers.SILU,
    formula="f(x) = x * sigmoid(x)",
    functional=NF.silu,
    aliases=("swish1",),
)
class SiLU(InplaceActivation):
    r"""Sigmoid-weighted linear unit, Swish-1 (Elfwing, Uchibe & Doya, 2017, arXiv:1702.03118).

    .. math::
        f(x) = x\,\sigma(x)

    Args:
        inplace: overwrite the input. Default: False.
    """

    _functional = staticmethod(NF.silu)


@register(
    "swish",
    kind="act",
    bounded_below=True,
    self_gated=True,
    paper=papers.SWISH,
    formula="f(x) = x * sigmoid(beta * x), beta learnable (a scalar, or one per channel)",
    functional=NF.swish,
    params=(Param("beta", "() or (dim,)", "beta_init = 1"),),
)
class Swish(Activation):
    r"""Swish with a learnable :math:`\beta` (Ramachandran, Zoph & Le, 2017, arXiv:1710.05941).

    .. math::
        f(x) = x\,\sigma(\beta x)

    :math:`\beta = 1` is SiLU, :math:`\beta = 0` gives :math:`x/2` and :math:`\beta \to \infty` tends to ReLU.

    Args:
        dim: number of channels for a per-channel :math:`\beta` along ``channel_axis``; None for one scalar.
            Default: None.
        beta_init: initial :math:`\beta`. Default: 1.0.
        learnable: learn :math:`\beta` (otherwise it is a fixed buffer). Default: True.
        channel_axis: the channel dimension of the input when ``dim`` is given (-1 for ``(*, C)``,
            1 for ``(N, C, *)``). Default: -1.
    """

    __constants__ = ["dim", "learnable", "channel_axis"]
    _hyperparameters = ("dim", "beta_init", "learnable", "channel_axis")

    def __init__(
        self,
        dim: int | None = None,
        beta_init: float = 1.0,
        learnable: bool = True,
        channel_axis: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_dim(dim)
        self.beta_init = check_float("beta_init", beta_init)
        self.learnable = bool(learnable)
        self.channel_axis = check_axis("channel_axis", channel_axis)
        add_scalar_or_channel(self, "beta", self.dim, self.learnable, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """beta = beta_init."""
        fill_tensors(self, beta=self.beta_init)

    def forward(self, x: Tensor) -> Tensor:
        return NF.swish(x, self.beta, self.channel_axis)


@register(
    "mish",
    kind="act",
    bounded_below=True,
    self_gated=True,
    paper=papers.MISH,
    formula="f(x) = x * tanh(softplus(x)) = x * tanh(ln(1 + e^x))",
    functional=NF.mish,
)
class Mish(InplaceActivation):
    r"""Mish (Misra, 2019, arXiv:1908.08681).

    .. math::
        f(x) = x \tanh(\mathrm{softplus}(x)) = x \tanh(\ln(1 + e^x))

    Args:
        inplace: overwrite the input. Default: False.
    """

    _functional = staticmethod(NF.mish)


@register(
    "golu",
    kind="act",
    bounded_below=True,
    self_gated=True,
    paper=papers.GOLU,
    formula="f(x) = x * alpha * exp(-beta * exp(-gamma * x)); alpha = beta = gamma = 1: x * GumbelCDF(x)",
    functional=NF.golu,
)
class GoLU(FunctionalActivation):
    r"""Gompertz linear unit (Das, Safari, Adriaensen & Hutter, 2025, arXiv:2502.03654).

    .. math::
        f(x) = x \cdot \alpha \exp(-\beta \exp(-\gamma x))

    With :math:`\alpha = \beta = \gamma = 1` (the paper's GoLU) the gate is the CDF of the standard Gumbel
    distribution, :math:`f(x) = x e^{-e^{-x}}`; the official code exposes the three constants as
    non-learnable floats, as here. The gate's argument is clamped at -20 where it is exactly 0 in every
    float type, so that the derivative stays finite for very negative inputs.

    Args:
        alpha, beta, gamma: the Gompertz constants (> 0). Default: 1.0 each.
    """

    __constants__ = ["alpha", "beta", "gamma"]
    _hyperparameters = ("alpha", "beta", "gamma")
    _functional = staticmethod(NF.golu)

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        self.alpha = check_float("alpha", alpha, positive=True)
        self.beta = check_float("beta", beta, positive=True)
        self.gamma = check_float("gamma", gamma, positive=True)
