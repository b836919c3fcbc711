"""Stateless activation math, as in ``torch.nn.functional``: learnable parameters are arguments.

Every function takes a floating-point tensor (``TypeError`` otherwise) and returns a tensor of the same dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_tensor, upcast
from normact.functional._act_common import check_gelu_approximate, scalar_or_per_channel, split_halves

__all__ = [
    "geglu",
    "gelu",
    "golu",
    "mish",
    "relu",
    "relu2",
    "silu",
    "swiglu",
    "swish",
]

# exp(-exp(20)) == 0 exactly even in float64: clamping the Gompertz gate's input there changes no value,
# and it turns the 0 * inf of the gate's derivative for very negative x into an exact 0.
_GOMPERTZ_CLAMP = -20.0
_SQRT_HALF = math.sqrt(0.5)
# GELU's tanh form as a sigmoid: 2 sqrt(2/pi) (x + 0.044715 x^3) = x (C1 + C2 x^2); C1 a 0-d CPU tensor (a
# scalar operand on any device)
_GELU_TANH_C1 = torch.tensor(2.0 * math.sqrt(2.0 / math.pi), dtype=torch.float64)
_GELU_TANH_C2 = 2.0 * math.sqrt(2.0 / math.pi) * 0.044715


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    r""":math:`\mathrm{ReLU}(x) = \max(0, x)`."""
    check_tensor(x, "relu")
    return F.relu(x, inplace=inplace)


def relu2(x: Tensor) -> Tensor:
    r"""Squared ReLU: :math:`\mathrm{ReLU}(x)^2`."""
    check_tensor(x, "relu2")
    return torch.square(F.relu(x))


def _gelu(x: Tensor, approximate: str) -> Tensor:
    """GELU in forms that keep their relative accuracy in the negative tail (torch's kernels do not)."""
    xf = upcast(x)
    if approximate == "tanh":
        # 1/2 (1 + tanh(u)) = sigmoid(2u), 2u = x (c1 + c2 x^2): no cancellation where tanh(u) -> -1
        y = xf * torch.sigmoid(xf * torch.addcmul(_GELU_TANH_C1.to(xf.dtype), xf, xf, value=_GELU_TANH_C2))
    else:
        # 1/2 (1 + erf(x / sqrt 2)) = 1/2 erfc(-x / sqrt 2): no cancellation for negative x
        y = 0.5 * xf * torch.erfc(xf * -_SQRT_HALF)
    return y.to(x.dtype)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    r"""GELU :math:`x\,\Phi(x)`; ``approximate="tanh"`` gives
    :math:`\tfrac12 x (1 + \tanh(\sqrt{2/\pi}(x + 0.044715 x^3)))`.

    Computed as :math:`\tfrac12 x\,\mathrm{erfc}(-x/\sqrt2)` and :math:`x\,\sigma(2u)`, which keep their
    relative accuracy in the negative tail: ``torch.nn.functional.gelu``'s :math:`1 + \mathrm{erf}` and
    :math:`1 + \tanh` cancel there (7% off at x = -5 in float32, 0 below -7). Half inputs are computed in
    float32."""
    check_tensor(x, "gelu")
    check_gelu_approximate(approximate)
    return _gelu(x, approximate)


def silu(x: Tensor, inplace: bool = False) -> Tensor:
    r"""SiLU (Swish-1): :math:`x\,\sigma(x)`."""
    check_tensor(x, "silu")
    return F.silu(x, inplace=inplace)


def swish(x: Tensor, beta: Tensor | float = 1.0, channel_axis: int = -1) -> Tensor:
    r"""Swish: :math:`x\,\sigma(\beta x)`. A tensor ``beta`` of shape ``(C,)`` applies per channel along
    ``channel_axis``; a 0-d tensor or a float applies to all elements."""
    check_tensor(x, "swish")
    beta = scalar_or_per_channel(beta, x, channel_axis, "swish", "beta")
    return x * torch.sigmoid(beta * x)


def mish(x: Tensor, inplace: bool = False) -> Tensor:
    r"""Mish: :math:`x \tanh(\mathrm{softplus}(x))`."""
    check_tensor(x, "mish")
    return F.mish(x, inplace=inplace)


def golu(x: Tensor, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> Tensor:
    r"""Gompertz Linear Unit: :math:`x \cdot \alpha \exp(-\beta \exp(-\gamma x))`; the gate with
    :math:`\alpha=\beta=\gamma=1` is the standard Gumbel CDF. Computed in float32 for half inputs."""
    check_tensor(x, "golu")
    xf = upcast(x)
    gate = alpha * torch.exp(-beta * torch.exp(-(gamma * xf).clamp_min(_GOMPERTZ_CLAMP)))
    return (xf * gate).to(x.dtype)


def swiglu(x: Tensor, dim: int = -1) -> Tensor:
    r"""SwiGLU: split ``x`` in halves :math:`(a, b)` along ``dim``; :math:`\mathrm{SiLU}(a) \odot b`."""
    gate, value = split_halves(x, dim, "swiglu", "gate and value halves")
    return F.silu(gate) * value


def geglu(x: Tensor, dim: int = -1, approximate: str = "none") -> Tensor:
    r"""GeGLU: split ``x`` in halves :math:`(a, b)` along ``dim``; :math:`\mathrm{GELU}(a) \odot b`."""
    gate, value = split_halves(x, dim, "geglu", "gate and value halves")
    check_gelu_approximate(approximate)
    return _gelu(gate, approximate) * value
