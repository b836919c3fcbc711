"""Memory-sharing LayerNorm and RMSNorm, MS-LN and MS-RMSNorm (Yang, Shi et al., ICML 2024, arXiv:2406.16282):
exact normalizations whose backward reads the saved output (shared with the next linear layer) instead of the
input, and :func:`merge_affine_into`, which folds a norm's affine into the following linear layers."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact.layers.norm.layer import _LastDimNorm
from normact.registry import Paper, Param, register

__all__ = ["MSLayerNorm", "MSRMSNorm", "merge_affine_into"]

MEMORY_SHARING_BP = Paper(
    "Reducing Fine-Tuning Memory Overhead by Approximate and Memory-Sharing Backpropagation",
    2024,
    "2406.16282",
    "Yang, Shi, Wang, Zhen, Shi, Xu",
)


def merge_affine_into(norm: nn.Module, *linears: nn.Linear) -> nn.Module:
    r"""Fold ``norm.weight`` (gamma) and ``norm.bias`` (beta) into every ``nn.Linear`` that consumes the norm's
    output, then remove them from the norm: ``linear(norm(x))`` is unchanged (exactly, up to the rounding of the
    folded weights, computed in float64) and the norm becomes affine-free.

    .. math::
        W \left(\gamma \odot \hat x + \beta\right) + b = (W \operatorname{diag}\gamma)\, \hat x + (b + W\beta)

    Every linear must take ``in_features = prod(normalized_shape)`` (the norm's trailing dims flattened in
    row-major order). A linear without a bias gets one (``W beta``) when the norm has a bias. Works on any norm
    with ``normalized_shape``, ``weight`` and optional ``bias`` attributes (:class:`MSLayerNorm`,
    :class:`MSRMSNorm`, ``torch.nn.LayerNorm``...); sets ``norm.elementwise_affine = False`` and registers
    ``weight``/``bias`` as ``None``. Returns ``norm``.
    """
    if not linears:
        raise ValueError("merge_affine_into needs at least one nn.Linear fed by the norm (else the affine is lost)")
    shape = tuple(getattr(norm, "normalized_shape", ()))
    features = math.prod(shape) if shape else None
    for i, linear in enumerate(linears):
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"merge_affine_into folds into nn.Linear layers, got {type(linear).__name__} at {i}")
        if linear.in_features != features:
            raise ValueError(
                f"merge_affine_into: linear {i} has in_features={linear.in_features}, expected "
                f"prod(normalized_shape={shape}) = {features}"
            )
    weight, bias = getattr(norm, "weight", None), getattr(norm, "bias", None)
    with torch.no_grad():
        for linear in linears:
            w64 = linear.weight.double()
            if bias is not None:
                shift = w64 @ bias.double().reshape(-1)
                if linear.bias is None:
                    linear.bias = nn.Parameter(shift.to(linear.weight))
                else:
                    linear.bias.copy_(linear.bias.double() + shift)
            if weight is not None:
                linear.weight.copy_(w64 * weight.double().reshape(1, -1))
    norm.weight = None
    norm.bias = None
    if hasattr(norm, "elementwise_affine"):
        norm.elementwise_affine = False
    return norm


class _MSNorm(_LastDimNorm):
    """Shared constructor: normalized shape, eps, affine switches, factory kwargs (those of LayerNorm)."""

    def merge_affine_into(self, *linears: nn.Linear) -> _MSNorm:
        """Fold this norm's weight/bias into the following ``nn.Linear`` layer(s) and drop them, so that the
        memory is shared (see :func:`merge_affine_into`). Returns ``self``."""
        return merge_affine_into(self, *linears)


_AFFINE_PARAMS = (
    Param("weight", "normalized_shape", "1 (elementwise_affine=True only)"),
    Param("bias", "normalized_shape", "0 (elementwise_affine=True and bias=True only)"),
)


@register(
    "ms_layernorm",
    kind="norm",
    paper=MEMORY_SHARING_BP,
    formula=(
        "y = (x - mean(x)) / sqrt(var(x) + eps) (* weight + bias), over the last dims (biased variance); exact "
        "backward from the saved output x_hat and rstd: dx = rstd * (g - mean(g) - mean(g * x_hat) * x_hat)"
    ),
    functional=NF.ms_layer_norm,
    params=_AFFINE_PARAMS,
    verified_against=("torch.nn.LayerNorm",),
    custom_backward=True,
)
class MSLayerNorm(_MSNorm):
    r"""Memory-sharing LayerNorm, MS-LN (Yang, Shi et al., ICML 2024, arXiv:2406.16282).

    .. math::
        \hat x = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}}, \qquad
        \frac{\partial L}{\partial x} = r \left(g - \overline{g} - \overline{g \odot \hat x}\; \hat x\right),
        \quad r = \frac{1}{\sqrt{\mathrm{Var}[x] + \epsilon}}

    with :math:`g = \partial L/\partial \hat x` and bars the means over the normalized dims. The forward equals
    ``torch.nn.LayerNorm`` (biased variance, eps inside the root, default 1e-5 as in the official
    ``lomem.nn.MSLayerNorm``); the backward is the exact gradient, computed from :math:`\hat x` and :math:`r`
    (paper and official CUDA kernel ``layer_norm_bw_2d_kernel``). With ``elementwise_affine=True`` the output is
    :math:`\hat x \odot \gamma + \beta` (init 1 and 0).

    Memory sharing (the paper's Memory-Sharing Backpropagation; official code yyyyychen/LowMemoryBP,
    ``lomem/normalization.py``): the forward saves only :math:`\hat x` and :math:`r` per row (float32 for
    float16/bfloat16 inputs) and the backward computes the exact input gradient from them. A following layer
    that saves its input (``nn.Linear``) saves the same tensor, so a Linear -> MS-LN -> Linear block keeps one
    activation fewer than with ``torch.nn.LayerNorm``, which saves its input.

    The affine is where the sharing ends. The paper drops it from the norm and merges it into the next linear
    layer (:math:`W' = W \operatorname{diag}\gamma`, :math:`b' = b + W\beta`, official
    ``experiments/*/src/merge_utils/merge_ln.py``); the official ``MSLayerNorm`` has no affine. So here too the
    default is ``elementwise_affine=False``. With ``elementwise_affine=True`` the layer keeps torch's
    ``weight``/``bias`` (same state-dict keys, exact gradients), applied by ordinary autograd after the
    memory-sharing core: the next layer then saves the affine output while the norm keeps :math:`\hat x`, so the
    block saves as much as with ``torch.nn.LayerNorm`` (no gain, no loss). Recovering :math:`\hat x` from the
    affine output would divide by gamma, which fails where gamma = 0, so it is not done. To get the saving, call
    :meth:`merge_affine_into` with the linear layer(s) fed by the norm: it folds gamma and beta into them exactly
    and removes the affine (for a pretrained ``torch.nn.LayerNorm``: build ``MSLayerNorm(C, eps,
    elementwise_affine=True)``, load its state dict, then merge). The sharing also needs the next layer to
    receive the output itself: a cast in between (autocast) makes a copy, and a compiled graph may choose what
    it saves.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the variance inside the square root. Default: 1e-5.
        elementwise_affine: learn ``weight`` (init 1) and ``bias`` (init 0); no memory saving then, see above.
            Default: False (the paper's MS-LN).
        bias: learn the ``bias`` too (with ``elementwise_affine``). Default: True.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = False,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return NF.ms_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


@register(
    "ms_rmsnorm",
    kind="norm",
    paper=MEMORY_SHARING_BP,
    formula=(
        "y = x / sqrt(mean(x^2) + eps) (* weight), over the last dims; exact backward from the saved output "
        "x_hat and rstd: dx = rstd * (g - mean(g * x_hat) * x_hat)"
    ),
    functional=NF.ms_rms_norm,
    params=(Param("weight", "normalized_shape", "1 (elementwise_affine=True only)"),),
    verified_against=("torch.nn.RMSNorm",),
    custom_backward=True,
)
class MSRMSNorm(_MSNorm):
    r"""Memory-sharing RMSNorm, MS-RMSNorm (Yang, Shi et al., ICML 2024, arXiv:2406.16282).

    .. math::
        \hat x = \frac{x}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}}, \qquad
        \frac{\partial L}{\partial x} = r \left(g - \overline{g \odot \hat x}\; \hat x\right), \quad
        r = \frac{1}{\sqrt{\tfrac{1}{d}\sum_i x_i^2 + \epsilon}}

    ``torch.nn.RMSNorm`` semantics in the forward (eps inside the root; default 1e-5 as in the official
    ``lomem.nn.MSRMSNorm`` and its kernel ``rms_norm_fw_2d_kernel``; ``eps=None`` is torch's machine-epsilon
    default); the exact backward from :math:`\hat x` and :math:`r` (official ``rms_norm_bw_2d_kernel``). With
    ``elementwise_affine=True`` the output is :math:`\hat x \odot \gamma` (init 1); no bias, as torch's RMSNorm.

    Memory sharing as in :class:`MSLayerNorm`: only :math:`\hat x` (shared with the next linear layer) and
    :math:`r` are saved. The official ``MSRMSNorm`` has no affine (default ``elementwise_affine=False`` here);
    with ``elementwise_affine=True`` the gain is applied after the core and the sharing is lost (no gain, no
    loss against ``torch.nn.RMSNorm``); :meth:`merge_affine_into` folds it into the following linear layer(s).

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the mean square inside the root, or None for machine epsilon. Default: 1e-5.
        elementwise_affine: learn ``weight`` (init 1); no memory saving then, see above. Default: False.

    Shape:
        Input ``(*, *normalized_shape)``; output the same shape.
    """

    _has_bias_switch = False

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = 1e-5,
        elementwise_affine: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            normalized_shape, eps, elementwise_affine, False, allow_none_eps=True, device=device, dtype=dtype
        )

    def forward(self, x: Tensor) -> Tensor:
        return NF.ms_rms_norm(x, self.normalized_shape, self.weight, self.eps)
