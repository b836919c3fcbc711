"""EvoNorm normalization-activation layers (Liu, Brock, Simonyan & Le, 2020): EvoNorm-B0 and -S0 from the
paper, and the B1, B2, S0a, S1, S1a, S2, S2a variants that timm ships."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from normact import functional as NF
from normact._checks import check_int
from normact.functional._norm_stats import require_momentum
from normact.layers.norm._channel import (
    LAYOUT_2D,
    add_channel_affine,
    check_input,
    options_repr,
    reset_channel_affine,
    set_sync,
    sync_repr,
)
from normact.layers.norm._features import FeatureNorm
from normact.registry import Paper, Param, register

__all__ = [
    "EvoNorm2dB0",
    "EvoNorm2dB1",
    "EvoNorm2dB2",
    "EvoNorm2dS0",
    "EvoNorm2dS0a",
    "EvoNorm2dS1",
    "EvoNorm2dS1a",
    "EvoNorm2dS2",
    "EvoNorm2dS2a",
]

EVONORM = Paper("Evolving Normalization-Activation Layers", 2020, "2004.02967", "Liu, Brock, Simonyan, Le")

_AFFINE = (Param("weight", "(C,)", "1 (affine=True only)"), Param("bias", "(C,)", "0 (affine=True only)"))
_V = Param("v", "(C,)", "1 (apply_act=True only)")
_RUNNING_VAR = Param("running_var", "(C,)", "1", buffer=True)

_B_STATS = (
    "s_b^2 = biased variance over (N, H, W) per channel in training (running_var <- (1 - momentum) running_var "
    "+ momentum n/(n-1) s_b^2), running_var in eval"
)
_S_STATS = "per sample over each group of C/G channels and (H, W)"
_NO_ACT = "; apply_act=False: y = x * weight + bias (no normalization, as timm)"
_NO_ACT_A = "; apply_act=False drops only the gate"


class _EvoNorm(FeatureNorm):
    """Shared by every variant: the per-channel ``weight`` and ``bias``, the learned ``v`` of the variants that
    have one (``_has_v``; only with ``apply_act``) and the call of the variant's functional form."""

    _has_v = False
    _functional: Callable[..., Tensor]  # the variant's function in normact.functional

    def _add_parameters(self, affine: bool, apply_act: bool, factory_kwargs: dict[str, Any]) -> None:
        """Keep the ``affine`` and ``apply_act`` switches and register ``weight``, ``bias`` (``None`` without
        ``affine``) and ``v`` (``None`` without ``_has_v`` or ``apply_act``), uninitialized."""
        self._add_affine(affine, factory_kwargs)
        self.apply_act = bool(apply_act)
        if self._has_v:
            add_channel_affine(self, self.num_features, self.apply_act, factory_kwargs, ("v",))

    def reset_parameters(self) -> None:
        """weight = 1, bias = 0, v = 1."""
        reset_channel_affine(self)
        if getattr(self, "v", None) is not None:
            nn.init.ones_(self.v)

    def _evonorm(self, x: Tensor, stats_or_groups: Tensor | int, *options: Any) -> Tensor:
        """Check the (N, C, H, W) input and return the functional form of ``(x, stats_or_groups, weight, bias[, v],
        *options)``, ``stats_or_groups`` being ``running_var`` (B variants) or ``num_groups`` (S variants)."""
        check_input(self, x, (4,), LAYOUT_2D)
        v = (self.v,) if self._has_v else ()
        return self._functional(x, stats_or_groups, self.weight, self.bias, *v, *options)


# ------------------------------------------------------------------------------------------- B variants


class _EvoNormB(_EvoNorm):
    """Shared body of the batch variants: ``running_var``, the momentum and the data-parallel sync."""

    __constants__ = ["num_features", "eps", "momentum", "affine", "apply_act"]

    def __init__(
        self,
        num_features: int,
        eps: float,
        momentum: float,
        affine: bool,
        apply_act: bool,
        sync: bool,
        process_group: Any,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        super().__init__(num_features, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        set_sync(self, sync, process_group)
        self.momentum = require_momentum(type(self).__name__, momentum)
        self._add_parameters(affine, apply_act, factory_kwargs)
        self.register_buffer("running_var", torch.empty(self.num_features, **factory_kwargs))
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """running_var = 1."""
        self.running_var.fill_(1)

    def reset_parameters(self) -> None:
        """running_var = 1; weight = 1, bias = 0, v = 1."""
        self.reset_running_stats()
        super().reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self._evonorm(
            x, self.running_var, self.training, self.momentum, self.eps, self.apply_act, self.sync, self.process_group
        )

    def extra_repr(self) -> str:
        return options_repr(self, "eps", "momentum", "affine", "apply_act") + sync_repr(self)


_B_ARGS = """
    Args:
        num_features: the channel count C.
        eps: added to the variances (and mean squares) inside the square roots. Default: {eps}.
        momentum: running-average factor in [0, 1] for ``running_var`` (``None``, a cumulative average, is
            not supported: it would need a batch counter timm's state dict does not have). Default: 0.1.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        apply_act: apply the normalization-activation; ``False`` leaves only ``x * weight + bias`` (timm's
            semantics, kept for state-dict and behaviour parity). Default: True.
        sync: in training, take the batch variance over ``process_group`` when torch.distributed is
            initialized (see ``normact.distributed``). Default: False.
        process_group: the group to sync over (None: the default group).

    Shape:
        Input ``(N, C, H, W)``; output the same shape. Training needs N * H * W > 1.
"""


@register(
    "evonorm_b0",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dB0",),
    paper=EVONORM,
    formula="y = x / max(sqrt(s_b^2 + eps), v * x + sqrt(s_w^2 + eps)) * weight + bias; s_w^2 = biased variance "
    "per sample and channel over (H, W); " + _B_STATS + _NO_ACT,
    functional=NF.evonorm_b0,
    params=(*_AFFINE, _V, _RUNNING_VAR),
    batch_dependent=True,
    stateful=True,
    smooth=False,
    aliases=("evonorm2d_b0",),
)
class EvoNorm2dB0(_EvoNormB):
    __doc__ = r"""EvoNorm-B0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967), batch-dependent norm-activation.

    .. math::
        y = \frac{x}{\max\left(\sqrt{s_b^2 + \epsilon},\ v \odot x + \sqrt{s_w^2 + \epsilon}\right)}
            \odot \gamma + \beta

    :math:`s_b^2` is the biased variance per channel over (N, H, W) in training; ``running_var`` is then
    updated as ``(1 - momentum) r + momentum * n/(n-1) * s_b^2`` (n = N·H·W, the unbiased variance, as
    torch's BatchNorm) and used in place of :math:`s_b^2` in evaluation. :math:`s_w^2` is the biased
    variance per sample and channel over (H, W). No mean is subtracted. Initial values γ = 1, β = 0, v = 1.
    Same formula, defaults (eps = 1e-3), parameter and buffer names as timm's ``EvoNorm2dB0``; statistics
    and the division run in float32 for float16/bfloat16 inputs (timm takes square roots in the input dtype).
    Differences from timm: an ``affine`` switch (timm always has γ and β), no ``momentum=None``.
""" + _B_ARGS.format(eps="1e-3")

    _has_v = True
    _functional = staticmethod(NF.evonorm_b0)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-3,
        momentum: float = 0.1,
        affine: bool = True,
        apply_act: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, apply_act, sync, process_group, device, dtype)


@register(
    "evonorm_b1",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dB1",),
    paper=EVONORM,
    formula="y = x / max(sqrt(s_b^2 + eps), (x + 1) * sqrt(E_hw[x^2] + eps)) * weight + bias; E_hw per sample "
    "and channel over (H, W); " + _B_STATS + _NO_ACT,
    functional=NF.evonorm_b1,
    params=(*_AFFINE, _RUNNING_VAR),
    batch_dependent=True,
    stateful=True,
    smooth=False,
    aliases=("evonorm2d_b1",),
)
class EvoNorm2dB1(_EvoNormB):
    __doc__ = r"""EvoNorm-B1, timm's variant of EvoNorm-B0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{x}{\max\left(\sqrt{s_b^2 + \epsilon},\ (x + 1)\sqrt{\mathrm{E}_{hw}[x^2] + \epsilon}\right)}
            \odot \gamma + \beta

    :math:`s_b^2` and ``running_var`` as in :class:`EvoNorm2dB0`; the per-sample term is the instance
    root mean square over (H, W) (no centering) times ``x + 1``, with no learnable v. Initial values γ = 1,
    β = 0. Defaults (eps = 1e-5), names and behaviour as timm's ``EvoNorm2dB1``, computed in float32 for
    float16/bfloat16 inputs; added: an ``affine`` switch.
""" + _B_ARGS.format(eps="1e-5")

    _functional = staticmethod(NF.evonorm_b1)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        apply_act: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, apply_act, sync, process_group, device, dtype)


@register(
    "evonorm_b2",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dB2",),
    paper=EVONORM,
    formula="y = x / max(sqrt(s_b^2 + eps), sqrt(E_hw[x^2] + eps) - x) * weight + bias; E_hw per sample and "
    "channel over (H, W); " + _B_STATS + _NO_ACT,
    functional=NF.evonorm_b2,
    params=(*_AFFINE, _RUNNING_VAR),
    batch_dependent=True,
    stateful=True,
    smooth=False,
    aliases=("evonorm2d_b2",),
)
class EvoNorm2dB2(_EvoNormB):
    __doc__ = r"""EvoNorm-B2, timm's variant of EvoNorm-B0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{x}{\max\left(\sqrt{s_b^2 + \epsilon},\ \sqrt{\mathrm{E}_{hw}[x^2] + \epsilon} - x\right)}
            \odot \gamma + \beta

    :math:`s_b^2` and ``running_var`` as in :class:`EvoNorm2dB0`; the per-sample term is the instance
    root mean square over (H, W) minus x, with no learnable v. Initial values γ = 1, β = 0. Defaults
    (eps = 1e-5), names and behaviour as timm's ``EvoNorm2dB2``, computed in float32 for float16/bfloat16
    inputs; added: an ``affine`` switch.
""" + _B_ARGS.format(eps="1e-5")

    _functional = staticmethod(NF.evonorm_b2)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        apply_act: bool = True,
        sync: bool = False,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, apply_act, sync, process_group, device, dtype)


# ------------------------------------------------------------------------------------------- S variants


def _check_groups(num_features: int, num_groups: int, group_size: int | None) -> tuple[int, int | None]:
    """The checked ``(num_groups, group_size)`` of ``num_features`` channels; ``group_size``, when given,
    overrides ``num_groups`` with ``num_features // group_size`` (timm's convention)."""
    num_groups = check_int("num_groups", num_groups)  # validated even when group_size overrides it
    if group_size is not None:
        group_size = check_int("group_size", group_size)
        if num_features % group_size:
            raise ValueError(f"num_features={num_features} must be divisible by group_size={group_size}")
        num_groups = num_features // group_size
    num_groups = check_int("num_groups", num_groups)
    if num_features % num_groups:
        raise ValueError(f"num_features={num_features} must be divisible by num_groups={num_groups}")
    return num_groups, group_size


class _EvoNormS(_EvoNorm):
    """Shared body of the sample (group) variants: the groups."""

    __constants__ = ["num_features", "num_groups", "eps", "affine", "apply_act"]

    def __init__(
        self,
        num_features: int,
        num_groups: int,
        eps: float,
        affine: bool,
        apply_act: bool,
        group_size: int | None,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        channels = check_int("num_features", num_features)  # the groups are checked against it before eps
        groups, group_size = _check_groups(channels, num_groups, group_size)
        super().__init__(channels, eps)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_groups = groups
        self.group_size = group_size
        self._add_parameters(affine, apply_act, factory_kwargs)
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self._evonorm(x, self.num_groups, self.eps, self.apply_act)

    def extra_repr(self) -> str:
        return options_repr(self, "num_groups", "eps", "affine", "apply_act")


_S_ARGS = """
    Args:
        num_features: the channel count C.
        num_groups: number of groups G, dividing C (timm's ``groups``). Default: 32.
        eps: added to the group statistic inside the square root. Default: {eps}.
        affine: learn ``weight`` (init 1) and ``bias`` (init 0). Default: True.
        apply_act: {apply_act} Default: True.
        group_size: channels per group; when given, overrides ``num_groups`` with C / group_size (timm's
            convention). Default: None.

    Shape:
        Input ``(N, C, H, W)``; output the same shape.{shape_note}
"""
_APPLY_ACT_PLAIN = "apply the normalization-activation; ``False`` leaves only ``x * weight + bias`` (timm's semantics)."
_APPLY_ACT_A = "apply the gate; ``False`` still divides by the group statistic (timm's semantics)."
_VAR_NOTE = " A group needs C/G * H * W > 1 values (else ValueError)."


def _s_doc(body: str, eps: str, a_variant: bool, centered: bool = True) -> str:
    return body + _S_ARGS.format(
        eps=eps, apply_act=_APPLY_ACT_A if a_variant else _APPLY_ACT_PLAIN, shape_note=_VAR_NOTE if centered else ""
    )


class _S0Base(_EvoNormS):
    _has_v = True


@register(
    "evonorm_s0",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dS0",),
    paper=EVONORM,
    formula="y = x * sigmoid(v * x) / sqrt(Var_g[x] + eps) * weight + bias; Var_g biased, " + _S_STATS + _NO_ACT,
    functional=NF.evonorm_s0,
    params=(*_AFFINE, _V),
    aliases=("evonorm2d_s0",),
)
class EvoNorm2dS0(_S0Base):
    __doc__ = _s_doc(
        r"""EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967), per-sample norm-activation.

    .. math::
        y = \frac{x \odot \sigma(v \odot x)}{\sqrt{s_{w,g}^2 + \epsilon}} \odot \gamma + \beta

    :math:`s_{w,g}^2` is the biased variance per sample over each group of C/G consecutive channels and
    (H, W); no mean is subtracted from the numerator. Initial values γ = 1, β = 0, v = 1. Same formula,
    defaults (G = 32, eps = 1e-5) and parameter names as timm's ``EvoNorm2dS0``; statistics run in float32
    for float16/bfloat16 inputs. Differences from timm: ``num_groups`` (torch's name, timm's ``groups``),
    an ``affine`` switch, C must be divisible by G at construction.
""",
        "1e-5",
        a_variant=False,
    )

    _functional = staticmethod(NF.evonorm_s0)

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        apply_act: bool = True,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, num_groups, eps, affine, apply_act, group_size, device, dtype)


@register(
    "evonorm_s0a",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dS0a",),
    paper=EVONORM,
    formula="y = x * sigmoid(v * x) / sqrt(Var_g[x] + eps) * weight + bias; Var_g biased, " + _S_STATS + _NO_ACT_A,
    functional=NF.evonorm_s0a,
    params=(*_AFFINE, _V),
    aliases=("evonorm2d_s0a",),
)
class EvoNorm2dS0a(_S0Base):
    __doc__ = _s_doc(
        r"""EvoNorm-S0a, timm's variant of EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{x \odot \sigma(v \odot x)}{\sqrt{s_{w,g}^2 + \epsilon}} \odot \gamma + \beta

    The same formula as :class:`EvoNorm2dS0` with eps = 1e-3; ``apply_act=False`` drops only the gate,
    :math:`y = x / \sqrt{s_{w,g}^2 + \epsilon}\,\gamma + \beta` (the group statistic is taken from the
    input before gating). Initial values γ = 1, β = 0, v = 1. As timm's ``EvoNorm2dS0a``, with the
    differences listed for :class:`EvoNorm2dS0`.
""",
        "1e-3",
        a_variant=True,
    )

    _functional = staticmethod(NF.evonorm_s0a)

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-3,
        affine: bool = True,
        apply_act: bool = True,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, num_groups, eps, affine, apply_act, group_size, device, dtype)


@register(
    "evonorm_s1",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dS1",),
    paper=EVONORM,
    formula="y = silu(x) / sqrt(Var_g[x] + eps) * weight + bias; Var_g biased, " + _S_STATS + _NO_ACT,
    functional=NF.evonorm_s1,
    params=_AFFINE,
    aliases=("evonorm2d_s1",),
)
class EvoNorm2dS1(_EvoNormS):
    __doc__ = _s_doc(
        r"""EvoNorm-S1, timm's variant of EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{\mathrm{SiLU}(x)}{\sqrt{s_{w,g}^2 + \epsilon}} \odot \gamma + \beta

    EvoNorm-S0 with v fixed to 1 (not learned); :math:`s_{w,g}^2` the biased group variance as in
    :class:`EvoNorm2dS0`. Initial values γ = 1, β = 0; eps = 1e-5. As timm's ``EvoNorm2dS1`` except that the
    activation is always SiLU (timm's ``act_layer`` argument is not offered) and the differences listed for
    :class:`EvoNorm2dS0`.
""",
        "1e-5",
        a_variant=False,
    )

    _functional = staticmethod(NF.evonorm_s1)

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        apply_act: bool = True,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, num_groups, eps, affine, apply_act, group_size, device, dtype)


@register(
    "evonorm_s1a",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dS1a",),
    paper=EVONORM,
    formula="y = silu(x) / sqrt(Var_g[x] + eps) * weight + bias; Var_g biased, " + _S_STATS + _NO_ACT_A,
    functional=NF.evonorm_s1a,
    params=_AFFINE,
    aliases=("evonorm2d_s1a",),
)
class EvoNorm2dS1a(_EvoNormS):
    __doc__ = _s_doc(
        r"""EvoNorm-S1a, timm's variant of EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{\mathrm{SiLU}(x)}{\sqrt{s_{w,g}^2 + \epsilon}} \odot \gamma + \beta

    :class:`EvoNorm2dS1` with eps = 1e-3, and ``apply_act=False`` dropping only the SiLU:
    :math:`y = x / \sqrt{s_{w,g}^2 + \epsilon}\,\gamma + \beta`. Initial values γ = 1, β = 0. As timm's
    ``EvoNorm2dS1a`` (SiLU only, no ``act_layer``), with the differences listed for :class:`EvoNorm2dS0`.
""",
        "1e-3",
        a_variant=True,
    )

    _functional = staticmethod(NF.evonorm_s1a)

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-3,
        affine: bool = True,
        apply_act: bool = True,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, num_groups, eps, affine, apply_act, group_size, device, dtype)


@register(
    "evonorm_s2",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dS2",),
    paper=EVONORM,
    formula="y = silu(x) / sqrt(E_g[x^2] + eps) * weight + bias; E_g " + _S_STATS + _NO_ACT,
    functional=NF.evonorm_s2,
    params=_AFFINE,
    aliases=("evonorm2d_s2",),
)
class EvoNorm2dS2(_EvoNormS):
    __doc__ = _s_doc(
        r"""EvoNorm-S2, timm's variant of EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{\mathrm{SiLU}(x)}{\sqrt{\mathrm{E}_g[x^2] + \epsilon}} \odot \gamma + \beta

    The group root mean square (no centering) per sample over each group of C/G channels and (H, W)
    replaces the group standard deviation of :class:`EvoNorm2dS1`. Initial values γ = 1, β = 0;
    eps = 1e-5. As timm's ``EvoNorm2dS2`` (SiLU only, no ``act_layer``), with the differences listed for
    :class:`EvoNorm2dS0`.
""",
        "1e-5",
        a_variant=False,
        centered=False,
    )

    _functional = staticmethod(NF.evonorm_s2)

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
        apply_act: bool = True,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, num_groups, eps, affine, apply_act, group_size, device, dtype)


@register(
    "evonorm_s2a",
    kind="norm",
    verified_against=("timm.layers.evo_norm.EvoNorm2dS2a",),
    paper=EVONORM,
    formula="y = silu(x) / sqrt(E_g[x^2] + eps) * weight + bias; E_g " + _S_STATS + _NO_ACT_A,
    functional=NF.evonorm_s2a,
    params=_AFFINE,
    aliases=("evonorm2d_s2a",),
)
class EvoNorm2dS2a(_EvoNormS):
    __doc__ = _s_doc(
        r"""EvoNorm-S2a, timm's variant of EvoNorm-S0 (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967).

    .. math::
        y = \frac{\mathrm{SiLU}(x)}{\sqrt{\mathrm{E}_g[x^2] + \epsilon}} \odot \gamma + \beta

    :class:`EvoNorm2dS2` with eps = 1e-3, and ``apply_act=False`` dropping only the SiLU:
    :math:`y = x / \sqrt{\mathrm{E}_g[x^2] + \epsilon}\,\gamma + \beta`. Initial values γ = 1, β = 0. As
    timm's ``EvoNorm2dS2a`` (SiLU only, no ``act_layer``), with the differences listed for
    :class:`EvoNorm2dS0`.
""",
        "1e-3",
        a_variant=True,
        centered=False,
    )

    _functional = staticmethod(NF.evonorm_s2a)

    def __init__(
        self,
        num_features: int,
        num_groups: int = 32,
        eps: float = 1e-3,
        affine: bool = True,
        apply_act: bool = True,
        group_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, num_groups, eps, affine, apply_act, group_size, device, dtype)
