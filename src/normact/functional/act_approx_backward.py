"""Activations with an exact forward and a deliberately approximate, memory-light backward.

- **ReGELU2 / ReSiLU2** (Yang, Shi et al., ICML 2024, arXiv:2406.16282): the forward pass is exact,
  :func:`normact.functional.gelu` (the erfc form, accurate in the negative tail, where ``F.gelu``'s
  :math:`1 + \\mathrm{erf}` cancels) / ``F.silu`` itself (bitwise); the backward pass multiplies the incoming
  gradient by the derivative of the piecewise-linear surrogate :math:`h(x) = \\sum_{k=1}^{3} a_k
  \\mathrm{ReLU}(x - c_k)`, a step function with the four levels :math:`0, a_1, a_1 + a_2, a_1 + a_2 + a_3`.
  Only the number of thresholds :math:`c_k` that ``x`` exceeds (a 2-bit code) is saved for the backward pass;
  four codes are packed into each byte, as in the official CUDA kernels (yyyyychen/LowMemoryBP,
  ``lomem/csrc/regelu2_cuda.cu`` / ``resilu2_cuda.cu``: the flag is ``(x > c_1) + (x > c_2) + (x > c_3)`` and the
  gradient ``g * sum_k [flag >= k] a_k``). The constants below are those of the official kernels.
- **HeLU** (Kimhi, Kashani, Mendelson & Baskin, 2024, arXiv:2411.10573): the forward pass is ReLU; the backward
  pass lets the gradient through wherever ``x > -alpha`` (official idankdev/helu, ``helu.py``:
  ``torch.where(z > -alpha, grad_output, 0)``, ``alpha = 0.05``). The official code saves the input; here only the
  boolean mask ``x > -alpha`` is saved (1 byte per element), which gives the same gradient.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_float, check_tensor, upcast
from normact.functional.act import gelu

__all__ = ["helu", "regelu2", "resilu2"]

# yyyyychen/LowMemoryBP, lomem/csrc/regelu2_cuda.cu and resilu2_cuda.cu (ReGELU2_a/_c, ReSiLU2_a/_c)
REGELU2_A = (-0.04922261145617846, 1.0979632065417297, -0.048740595085551286)
REGELU2_C = (-3.1858810036855245, -0.001178821281161997, 3.190832613414926)
RESILU2_A = (-0.04060357190528599, 1.080925428529668, -0.040321856624382146)
RESILU2_C = (-6.3050461001646445, -0.0008684942046214787, 6.325815242089708)


def step_levels(a: tuple[float, float, float]) -> tuple[float, float, float, float]:
    """The derivative of :math:`\\sum_k a_k \\mathrm{ReLU}(x - c_k)` on the four intervals cut by the thresholds:
    ``(0, a1, a1 + a2, a1 + a2 + a3)`` (float64 partial sums; both official sets sum to exactly 1.0)."""
    return (0.0, a[0], a[0] + a[1], a[0] + a[1] + a[2])


def _pack2(code: Tensor) -> Tensor:
    """uint8 codes in {0, 1, 2, 3} -> one byte per four codes (code i of a group at bits 2i, 2i+1)."""
    flat = code.reshape(-1)
    flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % 4)]).reshape(-1, 4)
    return flat[:, 0] | (flat[:, 1] << 2) | (flat[:, 2] << 4) | (flat[:, 3] << 6)


def _unpack2(packed: Tensor, shape: torch.Size) -> Tensor:
    """The inverse of :func:`_pack2` for a tensor of ``shape``."""
    codes = torch.stack([packed & 3, (packed >> 2) & 3, (packed >> 4) & 3, (packed >> 6) & 3], dim=1)
    return codes.reshape(-1)[: shape.numel()].reshape(shape)


class _TwoBitBackward(torch.autograd.Function):
    """Forward: :func:`normact.functional.gelu` or ``F.silu`` (exact). Saved: the packed 2-bit code. Backward:
    ``g * level[code]``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, silu: bool, thresholds: tuple[float, ...], levels: tuple[float, ...]
    ) -> Tensor:
        y = F.silu(x) if silu else gelu(x)
        xc = upcast(x)  # thresholds compared in float32 for half inputs, as the official kernels do
        code = (xc > thresholds[0]).to(torch.uint8) + (xc > thresholds[1]).to(torch.uint8)
        code = code + (xc > thresholds[2]).to(torch.uint8)
        ctx.save_for_backward(_pack2(code))
        ctx.shape = x.shape
        ctx.levels = levels
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (packed,) = ctx.saved_tensors
        code = _unpack2(packed, ctx.shape)
        g = upcast(grad)
        _, l1, l2, l3 = ctx.levels
        slope = torch.where(code == 1, l1, torch.zeros_like(g))
        slope = torch.where(code == 2, l2, slope)
        slope = torch.where(code == 3, l3, slope)
        return (g * slope).to(grad.dtype), None, None, None


def regelu2(x: Tensor) -> Tensor:
    r"""ReGELU2: :math:`\mathrm{GELU}(x) = x\Phi(x)` forward (bitwise :func:`normact.functional.gelu`, the
    form :math:`\tfrac12 x\,\mathrm{erfc}(-x/\sqrt2)`, accurate in the negative tail); backward
    :math:`g \cdot h'(x)` with :math:`h'` the step function of levels ``(0, -0.04922, 1.04874, 1.0)`` at the
    thresholds :math:`c = (-3.18588, -0.00117882, 3.19083)`. Saves 2 bits per element."""
    check_tensor(x, "regelu2")
    return _TwoBitBackward.apply(x, False, REGELU2_C, step_levels(REGELU2_A))


def resilu2(x: Tensor) -> Tensor:
    r"""ReSiLU2: :math:`\mathrm{SiLU}(x) = x\sigma(x)` forward (bitwise ``F.silu``); backward
    :math:`g \cdot h'(x)` with :math:`h'` the step function of levels ``(0, -0.04060, 1.04032, 1.0)`` at the
    thresholds :math:`c = (-6.30505, -0.000868494, 6.32582)`. Saves 2 bits per element."""
    check_tensor(x, "resilu2")
    return _TwoBitBackward.apply(x, True, RESILU2_C, step_levels(RESILU2_A))


class _HysteresisBackward(torch.autograd.Function):
    """Forward: ReLU. Saved: the bool mask ``x > -alpha``. Backward: ``g`` where the mask holds, else 0."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x > -alpha)
        return F.relu(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, torch.zeros_like(grad)), None


def helu(x: Tensor, alpha: float = 0.05) -> Tensor:
    r"""HeLU: :math:`\max(0, x)` forward; backward :math:`g \cdot \mathbb{1}[x > -\alpha]` (the hysteresis: the
    gradient already flows for :math:`-\alpha < x \le 0`). ``alpha = 0`` gives ReLU's gradient. Saves a bool mask."""
    check_tensor(x, "helu")
    alpha = check_float("alpha", alpha, nonnegative=True)
    return _HysteresisBackward.apply(x, alpha)
