"""Time-dependent LayerNorm and RMSNorm of DiMR (Liu, Zeng, He et al., 2024, arXiv:2406.09416): the affine
parameters move between two learned endpoints with the diffusion time, a parameter-efficient alternative to
adaLN (no MLP from a time embedding)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_eps, normalize_shape
from normact.registry import Paper, Param, register

__all__ = ["TimeDependentLayerNorm", "TimeDependentRMSNorm"]

DIMR = Paper(
    "Alleviating Distortion in Image Generation via Multi-Resolution Diffusion Models and Time-Dependent Layer "
    "Normalization",
    2024,
    "2406.09416",
    "Liu, Zeng, He, Yu, Shen, Chen",
)

_SUFFIXES = ("0", "1", "_slope", "_offset")


class _TimeDependentNorm(nn.Module):
    """Shared constructor: the four tensors of the time-dependent gain (``weight0``, ``weight1``,
    ``weight_slope``, ``weight_offset``) and, with ``bias``, of the time-dependent offset (``bias0``...)."""

    __constants__ = ["normalized_shape", "eps"]
    normalized_shape: tuple[int, ...]

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float,
        bias: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory_kwargs = {"device": device, "dtype": dtype}
        self.normalized_shape = normalize_shape(normalized_shape)
        self.eps = check_eps(eps)
        for suffix in _SUFFIXES:
            setattr(self, f"weight{suffix}", nn.Parameter(torch.empty(self.normalized_shape, **factory_kwargs)))
        for suffix in _SUFFIXES:
            if bias:
                setattr(self, f"bias{suffix}", nn.Parameter(torch.empty(self.normalized_shape, **factory_kwargs)))
            else:
                self.register_parameter(f"bias{suffix}", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """gamma_0 = gamma_1 = 1, beta_0 = beta_1 = 0, slopes w = 1, offsets b = 0 (official DiMR init)."""
        with torch.no_grad():
            for name, value in (("weight0", 1.0), ("weight1", 1.0), ("bias0", 0.0), ("bias1", 0.0)):
                p = getattr(self, name)
                if p is not None:
                    p.fill_(value)
            for prefix in ("weight", "bias"):
                if getattr(self, f"{prefix}_slope") is not None:
                    getattr(self, f"{prefix}_slope").fill_(1.0)
                    getattr(self, f"{prefix}_offset").fill_(0.0)

    def _params(self) -> tuple[Tensor | None, ...]:
        return tuple(getattr(self, f"{prefix}{suffix}") for prefix in ("weight", "bias") for suffix in _SUFFIXES)

    def gamma(self, t: Tensor) -> Tensor:
        """gamma(t) for times ``t`` of any shape T: shape ``T + normalized_shape``."""
        return NF.time_dependent_parameter(self.weight0, self.weight1, self.weight_slope, self.weight_offset, t)

    def beta(self, t: Tensor) -> Tensor | None:
        """beta(t) (None without bias): shape ``T + normalized_shape``."""
        if self.bias0 is None:
            return None
        return NF.time_dependent_parameter(self.bias0, self.bias1, self.bias_slope, self.bias_offset, t)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias0 is not None}"


_PARAMS = (
    Param("weight0", "normalized_shape", "1 (gamma_0)"),
    Param("weight1", "normalized_shape", "1 (gamma_1)"),
    Param("weight_slope", "normalized_shape", "1 (w of s_gamma(t) = sigmoid(w t + b))"),
    Param("weight_offset", "normalized_shape", "0 (b of s_gamma)"),
    Param("bias0", "normalized_shape", "0 (beta_0; bias=True only)"),
    Param("bias1", "normalized_shape", "0 (beta_1; bias=True only)"),
    Param("bias_slope", "normalized_shape", "1 (w of s_beta; bias=True only)"),
    Param("bias_offset", "normalized_shape", "0 (b of s_beta; bias=True only)"),
)


@register(
    "td_layernorm",
    kind="norm",
    drop_in=False,
    paper=DIMR,
    formula=(
        "y = (x - mean(x)) / sqrt(var(x) + eps) * gamma(t) + beta(t), over the last dims (biased variance); "
        "P(t) = s * P0 + (1 - s) * P1, s = sigmoid(slope * t + offset) elementwise, t one time per sample"
    ),
    functional=NF.td_layer_norm,
    params=_PARAMS,
)
class TimeDependentLayerNorm(_TimeDependentNorm):
    r"""Time-dependent LayerNorm, TD-LN of DiMR (Liu, Zeng, He et al., 2024, arXiv:2406.09416).

    .. math::
        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \odot \gamma(t) + \beta(t), \qquad
        P(t) = s_P(t)\, P_0 + \big(1 - s_P(t)\big)\, P_1, \quad s_P(t) = \sigma(w_P\, t + b_P)

    for :math:`P \in \{\gamma, \beta\}`; :math:`P_0, P_1, w_P, b_P` all have ``normalized_shape`` (per element,
    the official ``TimeDependentParameter((dim,), ...)``) and the sigmoid is elementwise. LayerNorm statistics
    as ``torch.nn.LayerNorm`` (biased variance, eps inside the root, default 1e-5 as the official
    ``libs/core/sigmoid/module.py`` ``LayerNorm``); float16/bfloat16 inputs are computed in float32.

    The time condition ``t`` is a required keyword argument of ``forward``: shape (N,), one time per sample,
    broadcast over the tokens/positions of that sample (as the official code, which reshapes the input to
    ``(N, -1, dim)`` and applies per-sample parameters); more generally any shape that broadcasts *from the left*
    against the input's leading dims (``(N, L)`` for a time per token, ``()`` or ``(1,)`` for one time for all).
    DiMR feeds ``t = log-SNR / 4`` (``TimeDependentParameter.seed_time``); that scaling is the caller's job.

    Initial values (official code): :math:`\gamma_0 = \gamma_1 = 1`, :math:`\beta_0 = \beta_1 = 0`, so the
    layer starts as a plain LayerNorm for every t; :math:`b = 0` and :math:`w = 1`. Deliberate difference: the
    official code stores :math:`w - 1` (``nodecay_weight``, init 0, used as ``nodecay_weight + 1``) and keeps
    ``nodecay_*`` out of weight decay; here ``weight_slope`` holds :math:`w` itself (init 1), so exclude
    ``*_slope``/``*_offset`` from weight decay to match DiMR's training. There is no ``elementwise_affine``
    switch: the time-dependent affine is the layer (without it, it is ``torch.nn.LayerNorm(elementwise_affine=
    False)``); ``bias=False`` drops :math:`\beta(t)`.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the variance inside the square root. Default: 1e-5.
        bias: learn the time-dependent offset beta(t). Default: True.

    Shape:
        Input ``(*lead, *normalized_shape)``, ``t`` of shape ``(N,)`` with N = lead[0] (or broadcasting from the
        left against ``lead``); output the input's shape.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor, *, t: Tensor | float) -> Tensor:
        return NF.td_layer_norm(x, t, self.normalized_shape, *self._params(), eps=self.eps)


@register(
    "td_rmsnorm",
    kind="norm",
    drop_in=False,
    paper=DIMR,
    formula=(
        "y = x / (||x||_2 / sqrt(d) + eps) * gamma(t) (+ beta(t)), over the last dims (eps outside the root); "
        "P(t) = s * P0 + (1 - s) * P1, s = sigmoid(slope * t + offset) elementwise, t one time per sample"
    ),
    functional=NF.td_rms_norm,
    params=_PARAMS,
)
class TimeDependentRMSNorm(_TimeDependentNorm):
    r"""Time-dependent RMSNorm, TDRMSNorm of DiMR (Liu, Zeng, He et al., 2024, arXiv:2406.09416).

    .. math::
        y = \frac{x}{\mathrm{RMS}(x) + \epsilon} \odot \gamma(t) \;(+\, \beta(t)), \quad
        \mathrm{RMS}(x) = \frac{\lVert x \rVert_2}{\sqrt{d}}, \qquad
        P(t) = s_P(t)\, P_0 + \big(1 - s_P(t)\big)\, P_1, \quad s_P(t) = \sigma(w_P\, t + b_P)

    The official ``TDRMSNorm`` (``libs/core/sigmoid/module.py``, the norm of the released DiMR-XL/G configs,
    ``norm_type = "TDRMSN"``) is Zhang & Sennrich's RMSNorm with its gain (and optional offset, off by
    default) made time-dependent: ``eps`` is added **outside** the root, default 1e-8, as there (and as
    ``normact``'s ``rmsnorm_paper``), not inside as ``torch.nn.RMSNorm``. Its ``p`` (partial RMSNorm) option,
    disabled in DiMR, is not provided. The time input ``t``, the parameter shapes and initial values
    (:math:`\gamma_0 = \gamma_1 = 1`, :math:`\beta_0 = \beta_1 = 0`, :math:`w = 1`, :math:`b = 0`; :math:`w`
    stored directly, not as ``nodecay_weight + 1``) are as in :class:`TimeDependentLayerNorm`. float16/bfloat16
    inputs are computed in float32.

    Args:
        normalized_shape: size of the trailing dimension(s) to normalize.
        eps: added to the RMS (outside the root). Default: 1e-8.
        bias: learn a time-dependent offset beta(t). Default: False (as the official code).

    Shape:
        Input ``(*lead, *normalized_shape)``, ``t`` of shape ``(N,)`` with N = lead[0] (or broadcasting from the
        left against ``lead``); output the input's shape.
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-8,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, bias, device=device, dtype=dtype)

    def forward(self, x: Tensor, *, t: Tensor | float) -> Tensor:
        return NF.td_rms_norm(x, t, self.normalized_shape, *self._params(), eps=self.eps)
