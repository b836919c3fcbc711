"""RescaleNorm, DehazeFormer's "Revised LayerNorm" (RLN; Song, He, Qian & Du, 2022): a per-sample LayerNorm over
(C, H, W) that also returns the statistics it removed, mapped to per-channel rescale and rebias terms that the
surrounding block multiplies and adds back after its branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_channel_input
from normact.layers.norm import _channel
from normact.layers.norm._features import FeatureNorm
from normact.registry import Paper, Param, register

__all__ = ["RescaleNorm"]

DEHAZEFORMER = Paper("Vision Transformers for Single Image Dehazing", 2022, "2204.03883", "Song, He, Qian, Du")


@register(
    "rescale_norm",
    kind="norm",
    drop_in=False,
    paper=DEHAZEFORMER,
    formula=(
        "returns (y, rescale, rebias): mu = mean(x), sigma = sqrt(mean((x - mu)^2) + eps) per sample over "
        "(C, *); y = (x - mu) / sigma * weight + bias; rescale = rescale_weight * sigma + rescale_bias, "
        "rebias = rebias_weight * mu + rebias_bias, shape (N, C, 1, ...); the block computes "
        "branch(y) * rescale + rebias"
    ),
    functional=NF.rescale_norm,
    params=(
        *_channel.AFFINE_PARAMS,
        Param("rescale_weight", "(C,)", "trunc_normal(std=0.02, bounds [-2, 2]) (official meta1.weight)"),
        Param("rescale_bias", "(C,)", "1 (official meta1.bias)"),
        Param("rebias_weight", "(C,)", "trunc_normal(std=0.02, bounds [-2, 2]) (official meta2.weight)"),
        Param("rebias_bias", "(C,)", "0 (official meta2.bias)"),
    ),
)
class RescaleNorm(FeatureNorm):
    r"""RescaleNorm, DehazeFormer's RLN "Revised LayerNorm" (Song, He, Qian & Du, 2022, arXiv:2204.03883) of
    (N, C, \*) inputs; returns a tuple ``(y, rescale, rebias)``.

    .. math::
        \mu = \mathrm{mean}_{C,*}(x), \quad \sigma = \sqrt{\mathrm{mean}_{C,*}\big((x - \mu)^2\big) + \epsilon},
        \quad y = \frac{x - \mu}{\sigma}\, w + b, \quad
        \text{rescale} = W_1 \sigma + B_1, \quad \text{rebias} = W_2 \mu + B_2

    :math:`\mu` and :math:`\sigma` are taken per sample over all of (C, H, W); ``w``, ``b`` (``weight``,
    ``bias``, shape (C,), init 1 and 0) are the usual affine; ``rescale`` and ``rebias`` have shape
    (N, C, 1, 1) (for an (N, C, \*) input: (N, C, 1, ...)) and are the official ``meta1`` / ``meta2``
    1x1 convolutions from one channel to C applied to :math:`\sigma` and :math:`\mu`, i.e. per-channel
    affine maps ``rescale_weight * sigma + rescale_bias`` and ``rebias_weight * mu + rebias_bias``. The
    DehazeFormer block uses them as ``x, rescale, rebias = norm(x); x = branch(x) * rescale + rebias``,
    restoring the per-sample brightness and contrast that the normalization removed. With
    ``detach_grad=True`` no gradient flows from rescale and rebias back into x through :math:`\sigma`
    and :math:`\mu` (the forward is unchanged).

    From the paper (its RescaleNorm subsection): the formula and the role of rescale/rebias. From the official
    ``models/dehazeformer.py`` (class ``RLN``): eps = 1e-5 inside the square root, the biased variance over
    dims (1, 2, 3), weight 1 and bias 0, ``meta1`` weight trunc_normal(std 0.02) with bias 1, ``meta2``
    weight trunc_normal(std 0.02) with bias 0 (timm's ``trunc_normal_``: mean 0, bounds [-2, 2]), the
    ``detach_grad`` option (default False). Differences: the parameters are flat (C,) vectors (official
    ``weight``/``bias`` of shape (1, C, 1, 1), ``meta1.weight`` (C, 1, 1, 1) and so on: reshape to load an
    official state dict); the ``affine`` switch; inputs of any rank >= 2 (the official layer takes
    (N, C, H, W)). float16/bfloat16 inputs are computed in float32.

    Args:
        num_features: the channel count C.
        eps: added to the variance inside the square root. Default: 1e-5.
        detach_grad: stop the gradient of rescale and rebias through sigma and mu. Default: False.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.

    Shape:
        Input (N, C, \*); outputs y of the input's shape, rescale and rebias of shape (N, C, 1, ...).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        detach_grad: bool = False,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.detach_grad = bool(detach_grad)
        self._add_affine(affine, factory_kwargs)
        meta_affines = ("rescale_weight", "rescale_bias", "rebias_weight", "rebias_bias")  # official meta1, meta2
        _channel.add_channel_affine(self, self.num_features, True, factory_kwargs, meta_affines)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight 1, bias 0; rescale_weight and rebias_weight trunc_normal(std 0.02), rescale_bias 1, rebias_bias 0."""
        _channel.reset_channel_affine(self)
        nn.init.trunc_normal_(self.rescale_weight, std=0.02, a=-2.0, b=2.0)
        nn.init.ones_(self.rescale_bias)
        nn.init.trunc_normal_(self.rebias_weight, std=0.02, a=-2.0, b=2.0)
        nn.init.zeros_(self.rebias_bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        check_channel_input(x, type(self).__name__, self.num_features, min_rank=2, layout="(N, {C}, *)")
        return NF.rescale_norm(
            x,
            self.weight,
            self.bias,
            self.rescale_weight,
            self.rescale_bias,
            self.rebias_weight,
            self.rebias_bias,
            self.eps,
            self.detach_grad,
        )

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "eps", "affine") + (", detach_grad=True" if self.detach_grad else "")
