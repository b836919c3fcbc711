"""Normalization of SO(3)-equivariant features: the separable layer normalization of EquiformerV2 (Liao, Wood,
Das & Smidt, ICLR 2024, arXiv:2306.12059)."""

from __future__ import annotations

import torch
from torch import Tensor

from normact import functional as NF
from normact._checks import check_int, check_tensor, shape_str
from normact.layers.norm import _channel
from normact.layers.norm._features import FeatureNorm
from normact.registry import Paper, Param, register

__all__ = ["SeparableLayerNorm"]

EQUIFORMER_V2 = Paper(
    "EquiformerV2: Improved Equivariant Transformer for Scaling to Higher-Degree Representations",
    2023,
    "2306.12059",
    "Liao, Wood, Das, Smidt",
)

_NORMALIZATIONS = ("component", "norm")


@register(
    "separable_layernorm",
    kind="norm",
    drop_in=False,
    input_layout="tokens",
    paper=EQUIFORMER_V2,
    formula=(
        "input (*, (lmax+1)^2, C) of spherical-harmonic coefficients; degree 0: LayerNorm over C, "
        "(x0 - mean_c) / sqrt(var_c + eps) * weight[0] + bias; degrees L >= 1: x_L / sqrt(s + eps) * weight[L] "
        "with s = (1/lmax) sum_{L>=1} mean_c (1/(2L+1)) sum_m x_{L,m,c}^2 (one s per sample)"
    ),
    functional=NF.separable_layer_norm,
    params=(
        Param("weight", "(lmax + 1, C)", "1 (affine=True only)"),
        Param("bias", "(C,)", "0 (affine=True only)"),
    ),
)
class SeparableLayerNorm(FeatureNorm):
    r"""Separable Layer Normalization, SLN (Liao, Wood, Das & Smidt, EquiformerV2, 2023, arXiv:2306.12059), of
    equivariant features of shape (*, (lmax+1)^2, C).

    .. math::
        y^{(0)} = \frac{x^{(0)} - \mu^{(0)}}{\sqrt{\sigma^{(0)2} + \epsilon}} \odot \gamma^{(0)} + \beta, \qquad
        y^{(L)} = \frac{x^{(L)}}{\sqrt{\sigma_{L>0}^2 + \epsilon}} \odot \gamma^{(L)} \quad (L \ge 1),

    .. math::
        \sigma_{L>0}^2 = \frac{1}{L_{max}} \sum_{L=1}^{L_{max}} \frac{1}{C} \sum_{c=1}^{C}
            \frac{1}{2L+1} \sum_{m=-L}^{L} \big(x^{(L)}_{m,c}\big)^2

    The input holds real spherical-harmonic coefficients, channels last: degree L occupies the 2L + 1 rows
    ``L**2 .. (L+1)**2 - 1`` of dim -2, as in the official ``nets/equiformer_v2`` (``(N, (lmax+1)**2, C)``).
    Degree 0 (invariant) gets a standard LayerNorm over the C channels (mean and biased variance
    :math:`\mu^{(0)}, \sigma^{(0)2}`, learnable :math:`\gamma^{(0)}, \beta`); all degrees L >= 1 are divided by
    one RMS :math:`\sigma_{L>0}` per sample (each degree's mean square over its components and channels,
    averaged over the degrees), with a learnable per-degree, per-channel scale :math:`\gamma^{(L)}` and no bias
    (a bias or a centering would break equivariance). Scaling the (2L+1)-vectors by one positive number
    commutes with any rotation, so the layer is SO(3)-equivariant (indeed O(2L+1)-equivariant per degree).

    The paper describes SLN as normalizing degree 0 and degrees L > 0 separately, with an LN for L = 0 and an
    RMS over L > 0; the exact :math:`\sigma_{L>0}` (the ``'component'`` normalization with
    ``std_balance_degrees=True``: per-degree means over the 2L+1 components, averaged over the degrees), the eps
    placement (inside the root, 1e-5), the initial values and the switches come from the official
    ``EquivariantLayerNormArraySphericalHarmonics`` (atomicarchitects/equiformer_v2,
    ``nets/equiformer_v2/layer_norm.py``, ``norm_type='layer_norm_sh'``). ``normalization="norm"`` sums the
    squares over all L >= 1 coefficients (then averages over channels; ``std_balance_degrees`` ignored there,
    as in the official code); ``std_balance_degrees=False`` takes the plain mean over all L >= 1 coefficients.
    (The official default model uses a different variant, ``rms_norm_sh``, that RMS-normalizes all degrees
    jointly; it is not this layer.)

    Deliberate differences from the official module: the parameters are ``weight`` of shape (lmax+1, C), whose
    row 0 is the official ``norm_l0.weight`` and rows 1..lmax its ``affine_weight``, and ``bias`` (C,), the
    official ``norm_l0.bias``; the balance weights are computed, not stored as a buffer; any leading dims are
    accepted. float16/bfloat16 inputs are normalized in float32 (the official module disables autocast).

    Args:
        num_features: the channel count C.
        lmax: the highest degree L_max >= 0. Default: 6 (the paper's OC20 models).
        eps: added inside both square roots. Default: 1e-5.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        normalization: ``"component"`` (mean of squares over components) or ``"norm"`` (sum). Default:
            ``"component"``.
        std_balance_degrees: with ``"component"``, weight every degree equally (1/(2L+1) per component, mean
            over degrees) rather than every component. Default: True.

    Shape:
        Input (*, (lmax+1)^2, C), at least 2-D; output the same shape.
    """

    def __init__(
        self,
        num_features: int,
        lmax: int = 6,
        eps: float = 1e-5,
        affine: bool = True,
        normalization: str = "component",
        std_balance_degrees: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        channels = check_int("num_features", num_features)  # validated in argument order: C, lmax, eps
        lmax = check_int("lmax", lmax, minimum=0)
        super().__init__(channels, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.lmax = lmax
        self.affine = bool(affine)
        if normalization not in _NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got {normalization!r}")
        self.normalization = normalization
        self.std_balance_degrees = bool(std_balance_degrees)
        _channel.add_channel_affine(self, (self.lmax + 1, self.num_features), self.affine, factory_kwargs, ("weight",))
        _channel.add_channel_affine(self, self.num_features, self.affine, factory_kwargs, ("bias",))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0."""
        _channel.reset_channel_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        check_tensor(x, type(self).__name__)
        rows = (self.lmax + 1) ** 2
        if x.dim() < 2 or x.shape[-2] != rows or x.shape[-1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (*, {rows}, {self.num_features}) "
                f"((lmax+1)^2 = {rows} coefficients for lmax={self.lmax}, C = {self.num_features} channels), "
                f"got shape {shape_str(x.shape)}"
            )
        return NF.separable_layer_norm(
            x, self.lmax, self.weight, self.bias, self.eps, self.normalization, self.std_balance_degrees
        )

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "lmax", "eps", "affine", "normalization", "std_balance_degrees")
