"""Generalized Divisive Normalization (Ballé, Laparra & Simoncelli, 2015) across channels, its inverse
(IGDN, the decoder side of learned image codecs) and the simplified GDN of Johnston et al. (2019)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_channel_input, check_float, check_int
from normact.layers.norm._channel import options_repr
from normact.registry import Paper, Param, register

__all__ = ["GDN", "IGDN"]

GDN_PAPER = Paper(
    "Density Modeling of Images using a Generalized Normalization Transformation",
    2015,
    "1511.06281",
    "Ballé, Laparra, Simoncelli",
)
GDN_SIMPLIFIED_PAPER = Paper(
    "Computationally Efficient Neural Image Compression",
    2019,
    "1912.08771",
    "Johnston, Eban, Gordon, Ballé",
)

_PARAMS = (
    Param("beta", "(C,)", "sqrt(1 + offset^2) (effective beta = 1)"),
    Param("gamma", "(C, C)", "sqrt(gamma_init * I + offset^2) (effective gamma = gamma_init * I)"),
)
_REPARAM = (
    "; stored beta, gamma are reparametrized: effective = max(stored, sqrt(min + offset^2))^2 - offset^2 "
    "(min = beta_min for beta, 0 for gamma; offset = 2^-18)"
)
# What every GDN registration shares: one functional form, the stored parameters, the bound's custom gradient.
_GDN_ENTRY: dict[str, Any] = {
    "kind": "norm",
    "functional": NF.generalized_divisive_norm,
    "params": _PARAMS,
    "custom_backward": True,
}
# CompressAI's GDN keeps these constants as buffers of its NonNegativeParametrizer submodules.
_COMPRESSAI_BUFFERS = {
    "beta_reparam.pedestal": lambda m: m.reparam_offset**2,
    "beta_reparam.lower_bound.bound": lambda m: math.sqrt(m.beta_min + m.reparam_offset**2),
    "gamma_reparam.pedestal": lambda m: m.reparam_offset**2,
    "gamma_reparam.lower_bound.bound": lambda m: m.reparam_offset,
}


@register(
    "gdn",
    verified_against=("compressai.layers.GDN",),
    paper=GDN_PAPER,
    formula="y_i = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2) across channels at each position" + _REPARAM,
    **_GDN_ENTRY,
)
@register(
    "gdn_simplified",
    verified_against=("compressai.layers.GDN1",),
    paper=GDN_SIMPLIFIED_PAPER,
    formula="y_i = x_i / (beta_i + sum_j gamma_ij |x_j|) across channels at each position" + _REPARAM,
    defaults={"simplified": True},
    aliases=("gdn1",),
    smooth=False,
    **_GDN_ENTRY,
)
class GDN(nn.Module):
    r"""Generalized Divisive Normalization (Ballé, Laparra & Simoncelli, 2015, arXiv:1511.06281).

    .. math::
        y_i = \frac{x_i}{\sqrt{\beta_i + \sum_j \gamma_{ij}\, x_j^2}}

    across the C channels at each sample and position (the paper's
    :math:`y_i = x_i / (\beta_i + \sum_j \gamma_{ij} |x_j|^{\alpha_{ij}})^{\varepsilon_i}` with
    :math:`\alpha = 2, \varepsilon = 1/2`, the form used by learned image codecs). ``inverse=True`` gives
    the approximate inverse IGDN, :math:`y_i = x_i \sqrt{\beta_i + \sum_j \gamma_{ij} x_j^2}` (also
    :class:`IGDN`); ``simplified=True`` the simplified GDN of Johnston, Eban, Gordon & Ballé (2019,
    arXiv:1912.08771), :math:`y_i = x_i / (\beta_i + \sum_j \gamma_{ij} |x_j|)` (registered as
    ``gdn_simplified``; not differentiable at :math:`x_j = 0`).

    Initial values as in CompressAI (``compressai.layers.GDN``): :math:`\beta = 1`,
    :math:`\gamma = 0.1\, I`. **Parameters are stored reparametrized as in CompressAI**, so its
    checkpoints load directly: ``beta`` and ``gamma`` hold :math:`p = \sqrt{\max(v + o^2, o^2)}` of the
    effective values :math:`v`, with offset :math:`o = 2^{-18}`, and the forward uses
    :math:`v = \max(p, \sqrt{m + o^2})^2 - o^2` with :math:`m` = ``beta_min`` (1e-6) for :math:`\beta` and
    0 for :math:`\gamma`; this keeps :math:`\beta \ge` ``beta_min`` and :math:`\gamma \ge 0`. The bound
    has CompressAI's custom gradient (``custom_backward``): it passes where :math:`p` is above the bound
    or where descent would raise :math:`p`, and is zero otherwise, so a parameter at the bound can leave
    it. Above the bound the backward is the exact derivative.

    Deliberate differences from CompressAI: the channel count is called ``num_features`` (CompressAI's
    ``in_channels``); any ``(N, C, *)`` input is accepted (CompressAI: 4-D only; the channel mixing is a
    matrix product, the same as its 1x1 convolution); float16/bfloat16 inputs are computed in float32.
    CompressAI's constant buffers (``beta_reparam.pedestal``, ``*.lower_bound.bound``, ...) are not kept:
    loading a CompressAI state dict accepts them and checks that they match ``beta_min`` and
    ``reparam_offset``; loading a normact state dict into CompressAI needs ``strict=False``.
    ``NF.gdn_reparam(module.beta, module.beta_min, module.reparam_offset)`` gives the effective values.

    Args:
        num_features: the channel count C (CompressAI's ``in_channels``).
        inverse: compute IGDN (multiply instead of divide). Default: False.
        simplified: Johnston et al.'s form, ``|x|`` pooled without a square root. Default: False.
        beta_min: lower bound of the effective :math:`\beta` (> 0). Default: 1e-6.
        gamma_init: the effective :math:`\gamma` starts at ``gamma_init * I`` (>= 0). Default: 0.1.
        reparam_offset: the offset :math:`o` of the reparametrization (> 0). Default: 2**-18.

    Shape:
        Input ``(N, C, *)``; output the same shape.
    """

    __constants__ = ["num_features", "inverse", "simplified", "beta_min", "gamma_init", "reparam_offset"]

    def __init__(
        self,
        num_features: int,
        inverse: bool = False,
        simplified: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
        reparam_offset: float = 2.0**-18,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = check_int("num_features", num_features)
        self.inverse = bool(inverse)
        self.simplified = bool(simplified)
        self.beta_min = check_float("beta_min", beta_min, positive=True)
        self.gamma_init = check_float("gamma_init", gamma_init, nonnegative=True)
        self.reparam_offset = check_float("reparam_offset", reparam_offset, positive=True)
        c = self.num_features
        self.beta = nn.Parameter(torch.empty(c, **factory_kwargs))
        self.gamma = nn.Parameter(torch.empty(c, c, **factory_kwargs))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Effective beta = 1, gamma = gamma_init * I, stored as sqrt(max(v + offset^2, offset^2))."""
        pedestal = self.reparam_offset**2
        with torch.no_grad():
            self.beta.fill_(math.sqrt(1.0 + pedestal))
            self.gamma.fill_(math.sqrt(pedestal))
            self.gamma.diagonal().fill_(math.sqrt(self.gamma_init + pedestal))

    def forward(self, x: Tensor) -> Tensor:
        check_channel_input(x, type(self).__name__, self.num_features)
        return NF.generalized_divisive_norm(
            x, self.beta, self.gamma, self.inverse, self.simplified, self.beta_min, self.reparam_offset
        )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Accept CompressAI's constant buffers (checking them against this layer's constants) and drop them.
        for key, expected in _COMPRESSAI_BUFFERS.items():
            value = state_dict.pop(prefix + key, None)
            if value is None:
                continue
            want = expected(self)
            if value.numel() != 1 or not math.isclose(float(value.reshape(-1)[0]), want, rel_tol=1e-6):
                error_msgs.append(
                    f"{prefix}{key} = {value.reshape(-1).tolist()} does not match this layer's value {want!r} "
                    f"(beta_min={self.beta_min}, reparam_offset={self.reparam_offset})"
                )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return options_repr(self, "inverse", "simplified", "beta_min", "gamma_init", "reparam_offset")


@register(
    "igdn",
    verified_against=("compressai.layers.GDN",),
    paper=GDN_PAPER,
    formula="y_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2) across channels at each position" + _REPARAM,
    aliases=("inverse_gdn",),
    **_GDN_ENTRY,
)
class IGDN(GDN):
    r"""Inverse GDN (Ballé, Laparra & Simoncelli, 2015, arXiv:1511.06281): :class:`GDN` with ``inverse=True``.

    .. math::
        y_i = x_i \sqrt{\beta_i + \sum_j \gamma_{ij}\, x_j^2}

    the approximate inverse used by decoders of learned image codecs (one fixed-point step of the exact
    inverse; ``IGDN(GDN(x)) = x`` exactly only as :math:`\gamma \to 0`). Same parameters, initial values
    (:math:`\beta = 1`, :math:`\gamma = 0.1 I`), reparametrization and CompressAI compatibility as
    :class:`GDN` (``compressai.layers.GDN(C, inverse=True)``); its output grows like :math:`x^2`, so
    float16 overflows from :math:`|x| \approx 800` with the default :math:`\gamma`. ``simplified=True``
    gives :math:`y_i = x_i (\beta_i + \sum_j \gamma_{ij} |x_j|)`.

    Args:
        num_features: the channel count C (CompressAI's ``in_channels``).
        inverse: Default: True (False gives GDN).
        simplified, beta_min, gamma_init, reparam_offset: as in :class:`GDN`.

    Shape:
        Input ``(N, C, *)``; output the same shape.
    """

    def __init__(
        self,
        num_features: int,
        inverse: bool = True,
        simplified: bool = False,
        beta_min: float = 1e-6,
        gamma_init: float = 0.1,
        reparam_offset: float = 2.0**-18,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, inverse, simplified, beta_min, gamma_init, reparam_offset, device, dtype)
