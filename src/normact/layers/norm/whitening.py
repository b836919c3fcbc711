"""Group-wise whitening (exact ZCA) and the group-wise deep whitening-and-coloring transformation of GDWCT
(Cho, Choi, Park, Shin & Choo, CVPR 2019) for style-conditioned feature maps."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, check_int, check_tensor, shape_str
from normact.layers.norm import _channel
from normact.layers.norm._features import FeatureNorm
from normact.registry import Paper, Param, register

__all__ = ["GroupWhitening", "GroupWhiteningColoring"]

GDWCT = Paper(
    "Image-to-Image Translation via Group-wise Deep Whitening-and-Coloring Transformation",
    2019,
    "1812.09912",
    "Cho, Choi, Park, Shin, Choo",
)

_LAYOUT = "(N, {C}, L) or (N, {C}, H, W)"
_DEFAULT_GROUPS = 8  # N_GROUP in the official configs/config.yaml


def _empty_parameters(shapes: list[tuple[int, ...]] | list[int], factory_kwargs: dict[str, Any]) -> nn.ParameterList:
    """Uninitialized parameters of the given shapes, in order."""
    return nn.ParameterList([nn.Parameter(torch.empty(shape, **factory_kwargs)) for shape in shapes])


def _groups(num_features: int, num_groups: int | None) -> int:
    groups = math.gcd(num_features, _DEFAULT_GROUPS) if num_groups is None else check_int("num_groups", num_groups)
    if num_features % groups:
        raise ValueError(f"num_groups must divide num_features = {num_features}, got {groups}")
    return groups


# ---------------------------------------------------------------------------------------- group whitening


@register(
    "group_whitening",
    kind="norm",
    paper=GDWCT,
    formula=(
        "y_g = (Sigma_g + eps I)^(-1/2) (x_g - mu_g) * weight + bias per sample and group g of C/G channels, "
        "mu_g and Sigma_g = (x_g - mu_g)(x_g - mu_g)^T / P the mean and biased covariance over the P spatial "
        "positions (exact ZCA by eigendecomposition, eps added to the eigenvalues)"
    ),
    functional=NF.group_whitening,
    params=(*_channel.AFFINE_PARAMS,),
    verified_against=("torch.nn.functional.instance_norm",),
)
class GroupWhitening(FeatureNorm):
    r"""Group-wise ZCA whitening, the exact whitening that GDWCT (Cho, Choi, Park, Shin & Choo, 2019,
    arXiv:1812.09912) approximates, of (N, C, L) or (N, C, H, W) feature maps.

    .. math::
        y_g = (\Sigma_g + \epsilon I)^{-1/2} (x_g - \mu_g) \odot \gamma_g + \beta_g, \qquad
        \Sigma_g = \tfrac{1}{P}(x_g - \mu_g)(x_g - \mu_g)^\top

    For each sample and each of the ``num_groups`` groups of d = C/G consecutive channels, :math:`x_g` is the
    d x P matrix of the group's values at the P spatial positions, :math:`\mu_g` its mean over the positions
    and :math:`\Sigma_g` the biased covariance; the output covariance of each group is
    :math:`\Sigma_g(\Sigma_g + \epsilon I)^{-1} \approx I` before the per-channel affine (``weight`` init 1,
    ``bias`` init 0). This is the group-wise whitening of GDWCT done exactly, per sample (as WCT whitens
    each image's features); GDWCT itself replaces it in the forward by centering plus a regularizer (see
    :class:`GroupWhiteningColoring`).

    :math:`(\Sigma_g + \epsilon I)^{-1/2}` comes from ``torch.linalg.eigh`` (eigenvalues clamped at 0, then
    :math:`\epsilon` added). Its backward is a custom one, exact: the Daleckii-Krein formula with the divided
    differences of :math:`\lambda^{-1/2}` in closed form, :math:`-1/(s_i s_j (s_i + s_j))` with
    :math:`s = \sqrt\lambda`, which never divides by a difference of eigenvalues; gradients are therefore
    finite for repeated eigenvalues (constant inputs, fewer positions than channels), where autograd through
    ``eigh`` gives NaN. Second derivatives are exact too. The whole computation runs in float64 (the result
    cast back to the input dtype): whitening amplifies rounding errors by up to :math:`\epsilon^{-1/2}`.

    Choices: ``num_groups=None`` takes ``gcd(C, 8)`` (8 groups as in the official configs); eps (default 1e-5,
    the official code's eps on the covariance) is added to the eigenvalues.

    Args:
        num_features: the channel count C.
        num_groups: the group count G, dividing C; None: gcd(C, 8).
        eps: added to the covariance eigenvalues. Default: 1e-5.
        affine: learn the per-channel ``weight`` (init 1) and ``bias`` (init 0). Default: True.

    Shape:
        Input (N, C, L) or (N, C, H, W); output the same shape.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        eps: float = 1e-5,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        channels = check_int("num_features", num_features)  # the groups are checked against it before eps
        groups = _groups(channels, num_groups)
        super().__init__(channels, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_groups = groups
        self._add_affine(affine, factory_kwargs)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0."""
        _channel.reset_channel_affine(self)

    def forward(self, x: Tensor) -> Tensor:
        _channel.check_input(self, x, (3, 4), _LAYOUT)
        return NF.group_whitening(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return _channel.options_repr(self, "num_groups", "eps", "affine")


# ----------------------------------------------------------------------------- whitening and coloring


@register(
    "group_whitening_coloring",
    kind="norm",
    drop_in=False,
    paper=GDWCT,
    formula=(
        "c_g = x_g - mu_g per sample and group of d = C/G channels (whitening='zca': "
        "(Sigma_g + eps I)^(-1/2)(x_g - mu_g)); M_g = MLP_CT(style chunk g) reshaped d x d, D_g its column norms, "
        "U_g = M_g / D_g; y = alpha * (U_g D_g U_g^T c_g + MLP_mu(style)) + (1 - alpha) * x"
    ),
    functional=NF.group_whitening_coloring,
    params=(
        Param("ct_weights.0 .. ct_weights.4", "(h, S/G), (h, h) x3, (d*d, h)", "kaiming normal (fan_in, gain 2)"),
        Param("ct_biases.0 .. ct_biases.4", "(h,) x4, (d*d,)", "0"),
        Param("mu_weights.0 .. mu_weights.2", "(S, S), (S, S), (C, S)", "kaiming normal (fan_in, gain 2)"),
        Param("mu_biases.0 .. mu_biases.2", "(S,), (S,), (C,)", "0"),
        Param("alpha", "(1,)", "0.6 (blend=True only)"),
    ),
)
class GroupWhiteningColoring(nn.Module):
    r"""GDWCT, group-wise deep whitening-and-coloring transformation (Cho, Choi, Park, Shin & Choo, 2019,
    arXiv:1812.09912): content features (N, C, H, W) take the covariance and mean predicted from a style code.

    .. math::
        \bar c_g = x_g - \mu_g, \qquad
        \hat c_g = U_g D_g U_g^\top \bar c_g + \mu^s_g, \qquad
        y = \alpha\, \hat c + (1 - \alpha)\, x

    per sample and group g of d = C/G channels (:math:`\mu_g` the spatial mean). The coloring matrix is
    block-diagonal: for each group, the g-th of G equal chunks of the style code ``style`` (N, S) goes
    through a shared MLP (5 linear layers of width ``mlp_dim`` with LeakyReLU(0.01) between them) to a
    d x d matrix :math:`M_g` (row-major); :math:`D_g` holds its column L2 norms and
    :math:`U_g = M_g D_g^{-1}`, so that :math:`U_g D_g U_g^\top = M_g D_g^{-1} M_g^\top`. The style mean
    :math:`\mu^s = \mathrm{MLP}_\mu(s)` (3 linear layers S -> S -> S -> C, LeakyReLU between them) gives one
    value per channel. :math:`\alpha` is a learnable blend with the input, initialized to 0.6
    (``blend=False``: :math:`y = \hat c`).

    Whitening: the paper replaces the whitening matrix by a regularizer pushing each group's covariance to
    I, so the forward only centers (``whitening="center"``, the default); ``whitening="zca"`` whitens each
    group exactly, as :class:`GroupWhitening`, before coloring. The paper's two regularizers are the methods
    :meth:`whitening_regularizer` (mean :math:`|\Sigma_g - I|`) and :meth:`coloring_regularizer`
    (mean :math:`|U_g^\top U_g - I|`), to add to the training loss (the official weights are 0.001 and 10).

    From the paper (its abstract and the method as summarized in normact's research catalog; the full text
    was not available to check): centering in place of whitening plus the whitening regularizer, the
    block-diagonal group-wise coloring, the orthogonality regularizer :math:`|U^\top U - I|`, the style mean
    added after coloring. From the official code (WonwoongCho/GDWCT: ``model.py`` ``WCT``, ``MLP``,
    ``Get.coloring``; ``run.py``; ``configs/config.yaml``): the :math:`U D U^\top` parameterization with D the
    column norms of the MLP output (``Get.coloring`` computes :math:`M U^\top`), the MLP shapes
    (coloring MLP ``MLP(C/G, (C/G)^2, dim=mlp_dim, num_block=3)`` shared by the groups on G chunks of the
    style code; mean MLP ``MLP(S, C, dim=S, num_block=1)``), LeakyReLU slope 0.01, the row-major reshape,
    :math:`\alpha` init 1 - 0.4, kaiming-normal weights and zero biases (``INIT: kaiming``), mlp_dim 256,
    eps 1e-5 and the regularizers as means of absolute values.

    Deliberate differences from the official code: the content mean (and the whitening regularizer's
    covariance) is taken per sample over the spatial positions, as WCT style transfer treats each image,
    so the layer does not depend on the batch; the official ``WCT.wct`` pools it over the batch (B*H*W),
    which agrees at batch size 1. The coloring
    regularizer penalizes :math:`U^\top U - I` as in the paper; the official ``run.py`` penalizes
    :math:`U - I`. The style dimension S may differ from C (it must be divisible by G; the official model
    has S = C, the default here). Column norms are clamped at 1e-12.

    Args:
        num_features: the channel count C.
        num_groups: the group count G, dividing C and S; None: gcd(C, 8) (official N_GROUP 8).
        style_dim: the style code size S; None: C.
        mlp_dim: the width of the coloring MLP. Default: 256 (official MLP_DIM).
        eps: added to the covariance eigenvalues (``whitening="zca"``) and to the regularizer's
            covariance. Default: 1e-5.
        whitening: ``"center"`` (the paper's forward) or ``"zca"`` (exact group whitening).
        blend: learn the blend :math:`\alpha` (init 0.6) with the input. Default: True.

    Shape:
        x: (N, C, L) or (N, C, H, W); style: (N, S). Output: the shape of x.
    """

    def __init__(
        self,
        num_features: int,
        num_groups: int | None = None,
        style_dim: int | None = None,
        mlp_dim: int = 256,
        eps: float = 1e-5,
        whitening: str = "center",
        blend: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.num_groups = _groups(self.num_features, num_groups)
        self.style_dim = self.num_features if style_dim is None else check_int("style_dim", style_dim)
        if self.style_dim % self.num_groups:
            raise ValueError(f"style_dim must be divisible by num_groups = {self.num_groups}, got {self.style_dim}")
        self.mlp_dim = check_int("mlp_dim", mlp_dim)
        self.eps = check_eps(eps)
        if whitening not in ("center", "zca"):
            raise ValueError(f"whitening must be 'center' or 'zca', got {whitening!r}")
        self.whitening = whitening
        self.blend = bool(blend)
        self.negative_slope = 0.01
        d, s, h = self.num_features // self.num_groups, self.style_dim, self.mlp_dim
        ct_shapes = [(h, s // self.num_groups), (h, h), (h, h), (h, h), (d * d, h)]
        mu_shapes = [(s, s), (s, s), (self.num_features, s)]
        self.ct_weights = _empty_parameters(ct_shapes, factory_kwargs)
        self.ct_biases = _empty_parameters([shape[0] for shape in ct_shapes], factory_kwargs)
        self.mu_weights = _empty_parameters(mu_shapes, factory_kwargs)
        self.mu_biases = _empty_parameters([shape[0] for shape in mu_shapes], factory_kwargs)
        if self.blend:
            self.alpha = nn.Parameter(torch.empty(1, **factory_kwargs))
        else:
            self.register_parameter("alpha", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MLP weights kaiming normal (fan_in, a=0), biases 0, alpha = 0.6 (the official initialization)."""
        for w in [*self.ct_weights, *self.mu_weights]:
            nn.init.kaiming_normal_(w, a=0.0, mode="fan_in")
        for b in [*self.ct_biases, *self.mu_biases]:
            nn.init.zeros_(b)
        if self.alpha is not None:
            nn.init.constant_(self.alpha, 0.6)

    def _check(self, x: Tensor, style: Tensor) -> None:
        _channel.check_input(self, x, (3, 4), _LAYOUT)
        self._check_style(style, x.shape[0])

    def _check_style(self, style: Tensor, n: int | None) -> None:
        name = type(self).__name__
        check_tensor(style, f"{name} (style)")
        if style.dim() != 2 or style.shape[1] != self.style_dim or (n is not None and style.shape[0] != n):
            rows = "N" if n is None else str(n)
            raise ValueError(
                f"{name} expects a style code of shape ({rows}, {self.style_dim}) (style_dim={self.style_dim}), "
                f"got shape {shape_str(style.shape)}"
            )

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        self._check(x, style)
        return NF.group_whitening_coloring(
            x,
            style,
            self.num_groups,
            list(self.ct_weights),
            list(self.ct_biases),
            list(self.mu_weights),
            list(self.mu_biases),
            self.alpha,
            self.eps,
            self.whitening,
            self.negative_slope,
        )

    def whitening_regularizer(self, x: Tensor) -> Tensor:
        r"""The paper's whitening regularization of the content ``x``: the mean over samples, groups and
        entries of :math:`|\Sigma_g - I|`, :math:`\Sigma_g = \bar c_g \bar c_g^\top/(P - 1) + \epsilon I`
        (official ``cov_c`` and ``reg``; per sample here). Official loss weight: 0.001 (LAMBDA_W_REG)."""
        _channel.check_input(self, x, (3, 4), _LAYOUT)
        return NF.gdwct_whitening_regularizer(x, self.num_groups, self.eps)

    def coloring_regularizer(self, style: Tensor) -> Tensor:
        r"""The paper's coloring regularization for a style code: the mean over samples, groups and entries
        of :math:`|U_g^\top U_g - I|` (the official ``run.py`` applies it to :math:`U_g - I`). Official loss
        weight: 10 (LAMBDA_C_REG)."""
        self._check_style(style, None)
        return NF.gdwct_coloring_regularizer(
            style, self.num_groups, list(self.ct_weights), list(self.ct_biases), self.negative_slope
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, num_groups={self.num_groups}, style_dim={self.style_dim}, mlp_dim={self.mlp_dim}, "
            f"eps={self.eps}, whitening={self.whitening!r}, blend={self.blend}"
        )
