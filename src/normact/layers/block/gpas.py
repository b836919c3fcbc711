r"""GPAS, the gradient-preserving scaling of the residual stream (a building block of
:class:`normact.layers.block.TransformerBlock`'s ``gpas=True`` and of the ``gpas_block`` preset; not registered
itself: it normalizes nothing, so it is no drop-in norm, and it has no feature count)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_float, check_tensor

__all__ = ["GPAS"]


class GPAS(nn.Module):
    r"""GPAS: Gradient-Preserving Activation Scaling (Chen, Xu, Liu, Li et al., 2025, arXiv:2506.22049).

    .. math::
        y = x - \mathrm{SiLU}(\alpha)\, \mathrm{sg}(x)

    where :math:`\mathrm{sg}` is the stop-gradient: the forward value is :math:`(1 - \mathrm{SiLU}(\alpha))\, x`,
    the Jacobian :math:`\partial y/\partial x` is the identity (the activations are scaled down, their gradients
    are not), and :math:`\partial L/\partial \alpha = -\mathrm{SiLU}'(\alpha)\,\langle g, x\rangle`.
    :math:`\alpha` is one learnable scalar, initialised to 0 (``init``), so that the layer is the identity at
    initialisation. The paper inserts one after each residual addition of a Pre-LN block (a learnable scalar
    :math:`\alpha_l` "after each sub-layer"); the official code (``GPASBlock`` in
    ``peft_pretraining/modeling_llama.py``) shares one module between a layer's two insertion points, normact's
    :class:`TransformerBlock` (``gpas=True``) gives each sub-layer its own. The paper's optional clipping of the
    gate's gradient (0.01 in its 1B Sandwich-LN and 7B runs) belongs to the optimizer and is not done here.

    Args:
        init: the initial :math:`\alpha` (0).

    Shape:
        any floating tensor; the output has its shape and dtype.
    """

    def __init__(
        self, init: float = 0.0, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.init = check_float("init", init)
        self.alpha = nn.Parameter(torch.empty((), device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """:math:`\\alpha` = ``init``."""
        with torch.no_grad():
            self.alpha.fill_(self.init)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, "GPAS")
        return NF.gpas(x, self.alpha)

    def extra_repr(self) -> str:
        return f"init={self.init:g}"
