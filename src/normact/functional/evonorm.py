"""Stateless EvoNorm math (Liu, Brock, Simonyan & Le, 2020, arXiv:2004.02967), parameters and buffers as
arguments, as in ``torch.nn.functional``.

The B ("batch") variants divide by the larger of a batch standard deviation (the running one in evaluation)
and a per-sample term; the S ("sample") variants divide a gated input by a per-sample group statistic.
Inputs are ``(N, C, H, W)``; all statistics and the division run in float32 for float16/bfloat16 inputs
(squares of |x| ~ 1e4 overflow float16), and the result is returned in the input dtype.

``apply_act=False`` follows timm: B0, B1, B2, S0, S1 and S2 then skip the normalization as well and
return only the affine ``x * weight + bias``; the "a" variants (S0a, S1a, S2a) still divide by the group
statistic and only drop the gate.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from normact._checks import check_eps, check_int, check_tensor, shape_str, upcast
from normact.functional._affine import affine
from normact.functional._batch import batch_stats
from normact.functional._norm_stats import check_per_channel, require_momentum

__all__ = [
    "evonorm_b0",
    "evonorm_b1",
    "evonorm_b2",
    "evonorm_s0",
    "evonorm_s0a",
    "evonorm_s1",
    "evonorm_s1a",
    "evonorm_s2",
    "evonorm_s2a",
]


# ------------------------------------------------------------------------------------------- helpers


def _check_nchw(x: Tensor, name: str, per_channel: dict[str, Tensor | None]) -> None:
    """``x`` is a 4-D floating tensor; each given per-channel tensor has C elements."""
    check_tensor(x, name)
    if x.dim() != 4:
        raise ValueError(f"{name} expects a 4-D input of shape (N, C, H, W), got shape {shape_str(x.shape)}")
    check_per_channel(x, name, "(N, C, H, W) with C = {arg}.numel() = {numel}", per_channel)


def _per_channel(t: Tensor) -> Tensor:
    return t.reshape(1, -1, 1, 1)


def _finish(y: Tensor, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Affine in the computation dtype, then back to the input's dtype."""
    return affine(y, weight, bias, (1, -1, 1, 1)).to(x.dtype)


# ------------------------------------------------------------------------------------------- B variants


def _batch_std(
    name: str,
    xf: Tensor,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    """sqrt(s_b^2 + eps) per channel, shaped (1, C, 1, 1): the biased batch variance over (N, H, W) in
    training (over the whole process group with ``sync``; the running variance updated in place with the
    unbiased one), the running variance in eval."""
    if training:
        need = "in training needs more than 1 value per channel (N * H * W > 1)"
        _, var, count = batch_stats(name, xf, sync, process_group, need)
        if running_var is not None:
            with torch.no_grad():
                unbiased = var.detach() * (count / (count - 1).clamp_min(1))
                running_var.copy_(torch.lerp(running_var.to(var.dtype), unbiased, momentum))
    else:
        if running_var is None:
            raise ValueError(f"{name} in evaluation needs running_var")
        var = running_var.to(xf.dtype)
    return torch.sqrt(_per_channel(var) + eps)


def _check_b(
    name: str,
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor | None,
    momentum: float,
    eps: float,
    *,
    v_required: bool = False,
) -> None:
    """The B variants' argument checks; ``v_required``: ``v`` must be given (B0 with ``apply_act``)."""
    _check_nchw(x, name, {"running_var": running_var, "weight": weight, "bias": bias, "v": v})
    check_eps(eps)
    require_momentum(name, momentum)
    if v_required and v is None:
        raise ValueError(f"{name} with apply_act=True needs v, a (C,) tensor")


def _evonorm_b(
    name: str,
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    apply_act: bool,
    sync: bool,
    process_group: Any,
    per_sample: Callable[[Tensor, float], Tensor],
) -> Tensor:
    """The B variants once their arguments are checked: ``x / max(sqrt(s_b^2 + eps), per_sample(x, eps)) * weight
    + bias`` in the computation dtype; ``x * weight + bias`` without ``apply_act``."""
    if not apply_act:
        return _finish(upcast(x), x, weight, bias)
    xf = upcast(x)
    left = _batch_std(name, xf, running_var, training, momentum, eps, sync, process_group)
    return _finish(xf / torch.maximum(left, per_sample(xf, eps)), x, weight, bias)


def _instance_rms(xf: Tensor, eps: float) -> Tensor:
    return torch.sqrt(torch.mean(xf * xf, dim=(2, 3), keepdim=True) + eps)


def _b0_term(xf: Tensor, eps: float, *, v: Tensor) -> Tensor:
    """B0's per-sample term: v x + sqrt(s_w^2 + eps), s_w^2 the biased variance per sample and channel."""
    instance_std = torch.sqrt(torch.var(xf, dim=(2, 3), correction=0, keepdim=True) + eps)
    return xf * _per_channel(v) + instance_std


def _b1_term(xf: Tensor, eps: float) -> Tensor:
    """B1's per-sample term: (x + 1) sqrt(E_hw[x^2] + eps)."""
    return (xf + 1) * _instance_rms(xf, eps)


def _b2_term(xf: Tensor, eps: float) -> Tensor:
    """B2's per-sample term: sqrt(E_hw[x^2] + eps) - x."""
    return _instance_rms(xf, eps) - xf


def evonorm_b0(
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    v: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-3,
    apply_act: bool = True,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""EvoNorm-B0: :math:`y = x / \max(\sqrt{s_b^2 + \epsilon},\ v x + \sqrt{s_w^2 + \epsilon})\,\gamma + \beta`.

    :math:`s_b^2`: biased batch variance per channel over (N, H, W) in training (``running_var`` is updated
    in place as ``(1 - momentum) r + momentum * n/(n-1) s_b^2``), ``running_var`` in evaluation;
    :math:`s_w^2`: biased variance per sample and channel over (H, W). ``apply_act=False``: ``x γ + β``.
    """
    _check_b("evonorm_b0", x, running_var, weight, bias, v, momentum, eps, v_required=apply_act)
    term = partial(_b0_term, v=v)
    return _evonorm_b(
        "evonorm_b0", x, running_var, weight, bias, training, momentum, eps, apply_act, sync, process_group, term
    )


def evonorm_b1(
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    apply_act: bool = True,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""EvoNorm-B1 (timm): :math:`y = x / \max(\sqrt{s_b^2 + \epsilon},\ (x + 1)\sqrt{\mathrm{E}_{hw}[x^2] + \epsilon})
    \,\gamma + \beta`; :math:`s_b^2` and ``running_var`` as in :func:`evonorm_b0`. ``apply_act=False``: ``x γ + β``."""
    _check_b("evonorm_b1", x, running_var, weight, bias, None, momentum, eps)
    return _evonorm_b(
        "evonorm_b1", x, running_var, weight, bias, training, momentum, eps, apply_act, sync, process_group, _b1_term
    )


def evonorm_b2(
    x: Tensor,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    apply_act: bool = True,
    sync: bool = False,
    process_group: Any = None,
) -> Tensor:
    r"""EvoNorm-B2 (timm): :math:`y = x / \max(\sqrt{s_b^2 + \epsilon},\ \sqrt{\mathrm{E}_{hw}[x^2] + \epsilon} - x)
    \,\gamma + \beta`; :math:`s_b^2` and ``running_var`` as in :func:`evonorm_b0`. ``apply_act=False``: ``x γ + β``."""
    _check_b("evonorm_b2", x, running_var, weight, bias, None, momentum, eps)
    return _evonorm_b(
        "evonorm_b2", x, running_var, weight, bias, training, momentum, eps, apply_act, sync, process_group, _b2_term
    )


# ------------------------------------------------------------------------------------------- S variants


def _group_divide(num: Tensor, xf: Tensor, num_groups: int, eps: float, centered: bool) -> Tensor:
    """``num`` divided by sqrt(Var_g[x] + eps) (``centered``) or sqrt(E_g[x^2] + eps), statistics per sample
    over each group of C/G consecutive channels and (H, W)."""
    n = xf.shape[0]
    xg = xf.reshape(n, num_groups, -1)
    stat = torch.var(xg, dim=-1, correction=0, keepdim=True) if centered else torch.mean(xg * xg, dim=-1, keepdim=True)
    return (num.reshape(n, num_groups, -1) / torch.sqrt(stat + eps)).reshape(xf.shape)


def _swish_v(xf: Tensor, *, v: Tensor | None, name: str) -> Tensor:
    if v is None:
        raise ValueError(f"{name} with apply_act=True needs v, a (C,) tensor")
    return xf * torch.sigmoid(xf * _per_channel(v))


def _evonorm_s(
    name: str,
    x: Tensor,
    num_groups: int,
    weight: Tensor | None,
    bias: Tensor | None,
    v: Tensor | None,
    eps: float,
    apply_act: bool,
    gate: Callable[[Tensor], Tensor],
    *,
    centered: bool,
    a_variant: bool,
) -> Tensor:
    """The S variants: ``gate(x) / sqrt(stat_g + eps) * weight + bias`` in the computation dtype, ``stat_g`` the
    group variance (``centered``) or mean square; without ``apply_act`` only ``x * weight + bias``, or for the
    "a" variants (``a_variant``) ``x / sqrt(stat_g + eps) * weight + bias``."""
    _check_nchw(x, name, {"weight": weight, "bias": bias, "v": v})
    groups = check_int("num_groups", num_groups)
    check_eps(eps)
    if x.shape[1] % groups:
        raise ValueError(f"{name} expects C divisible by num_groups={groups}, got input shape {shape_str(x.shape)}")
    if centered and x.shape[1] // groups * x.shape[2] * x.shape[3] <= 1:
        raise ValueError(
            f"{name} needs more than 1 value per group (C/G * H * W > 1) for a group variance, got "
            f"num_groups={groups} and input shape {shape_str(x.shape)}"
        )
    if not apply_act and not a_variant:
        return _finish(upcast(x), x, weight, bias)
    xf = upcast(x)
    num = gate(xf) if apply_act else xf
    return _finish(_group_divide(num, xf, num_groups, eps, centered=centered), x, weight, bias)


def evonorm_s0(
    x: Tensor,
    num_groups: int = 32,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    v: Tensor | None = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    r"""EvoNorm-S0: :math:`y = x\,\sigma(v x) / \sqrt{s_{w,g}^2 + \epsilon}\,\gamma + \beta`, :math:`s_{w,g}^2`
    the biased variance per sample over each group of C/G channels and (H, W). ``apply_act=False``: ``x γ + β``."""
    gate = partial(_swish_v, v=v, name="evonorm_s0")
    return _evonorm_s(
        "evonorm_s0", x, num_groups, weight, bias, v, eps, apply_act, gate, centered=True, a_variant=False
    )


def evonorm_s0a(
    x: Tensor,
    num_groups: int = 32,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    v: Tensor | None = None,
    eps: float = 1e-3,
    apply_act: bool = True,
) -> Tensor:
    r"""EvoNorm-S0a (timm): as :func:`evonorm_s0`, but ``apply_act=False`` keeps the normalization:
    :math:`y = x / \sqrt{s_{w,g}^2 + \epsilon}\,\gamma + \beta`."""
    gate = partial(_swish_v, v=v, name="evonorm_s0a")
    return _evonorm_s(
        "evonorm_s0a", x, num_groups, weight, bias, v, eps, apply_act, gate, centered=True, a_variant=True
    )


def evonorm_s1(
    x: Tensor,
    num_groups: int = 32,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    r"""EvoNorm-S1 (timm): :math:`y = \mathrm{SiLU}(x) / \sqrt{s_{w,g}^2 + \epsilon}\,\gamma + \beta`
    (S0 with v fixed to 1). ``apply_act=False``: ``x γ + β``."""
    return _evonorm_s(
        "evonorm_s1", x, num_groups, weight, bias, None, eps, apply_act, F.silu, centered=True, a_variant=False
    )


def evonorm_s1a(
    x: Tensor,
    num_groups: int = 32,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-3,
    apply_act: bool = True,
) -> Tensor:
    r"""EvoNorm-S1a (timm): as :func:`evonorm_s1`; ``apply_act=False`` gives :math:`x / \sqrt{s_{w,g}^2 + \epsilon}
    \,\gamma + \beta`."""
    return _evonorm_s(
        "evonorm_s1a", x, num_groups, weight, bias, None, eps, apply_act, F.silu, centered=True, a_variant=True
    )


def evonorm_s2(
    x: Tensor,
    num_groups: int = 32,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
    apply_act: bool = True,
) -> Tensor:
    r"""EvoNorm-S2 (timm): :math:`y = \mathrm{SiLU}(x) / \sqrt{\mathrm{E}_g[x^2] + \epsilon}\,\gamma + \beta`,
    the group mean square (no centering). ``apply_act=False``: ``x γ + β``."""
    return _evonorm_s(
        "evonorm_s2", x, num_groups, weight, bias, None, eps, apply_act, F.silu, centered=False, a_variant=False
    )


def evonorm_s2a(
    x: Tensor,
    num_groups: int = 32,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-3,
    apply_act: bool = True,
) -> Tensor:
    r"""EvoNorm-S2a (timm): as :func:`evonorm_s2`; ``apply_act=False`` gives :math:`x / \sqrt{\mathrm{E}_g[x^2] +
    \epsilon}\,\gamma + \beta`."""
    return _evonorm_s(
        "evonorm_s2a", x, num_groups, weight, bias, None, eps, apply_act, F.silu, centered=False, a_variant=True
    )
